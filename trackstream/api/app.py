"""The store owner's ASGI app: one FastAPI app, the query API under ``/api/v1``, guarded on every request.

Routes (all behind the guard below; the OpenAPI schema at ``/api/v1/openapi.json``):

- ``POST /api/v1/compare``, ``/curves``, ``/runs``, ``/sql``, ``/entity_metrics``, ``/wait_ingested`` and
  ``GET /api/v1/health`` (:mod:`trackstream.api.routes`).

Room is left for what the live page adds: a server-push channel is one more router included into ``api`` (e.g.
``/api/v1/events``, SSE), and the page itself one mount at ``/``, added after the API router so that ``/api``
keeps answering. Both sit behind the same guard.

The guard (:class:`Guard`, pure ASGI, before any routing, so unknown paths and the schema are covered too):

1. ``Host`` must be one of ``allowed_hosts`` (the bound ``host:port``; loopback aliases on loopback), else 403:
   a DNS-rebinding page reaches the port under a name of its own.
2. ``Origin``, when present, must be ``http://<an allowed host>``, else 403: no cross-origin caller, and CORS
   is never opened (no ``Access-Control-*`` header is ever sent, so preflights fail).
3. ``Authorization: Bearer <token>`` must carry the store's token (``hmac.compare_digest``), else 401.
4. A request with a body (any method but GET, HEAD, OPTIONS) must be ``Content-Type: application/json``, else
   403: ``text/plain`` is what a web page may POST cross-origin without a preflight.

The token never appears in logs, reprs or error messages.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any, Final

import orjson

from trackstream.schemas.errors import require

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger(__name__)

API_PREFIX: Final = "/api/v1"
OPENAPI_URL: Final = f"{API_PREFIX}/openapi.json"
API_VERSION: Final = "1"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_SINGLE: Final = (b"host", b"origin", b"authorization", b"content-type")


class Guard:
    """ASGI middleware enforcing the rules of the module docstring on every HTTP and WebSocket request."""

    def __init__(self, app: ASGIApp, *, token: str, allowed_hosts: Iterable[str]) -> None:
        if not token:
            raise ValueError("the API needs a token")
        self.app = app
        self.allowed_hosts = frozenset(host.lower() for host in allowed_hosts)
        if not self.allowed_hosts:
            raise ValueError("the API needs at least one allowed Host")
        self._origins = frozenset(f"http://{host}" for host in self.allowed_hosts)
        self._token = token.encode()

    def __repr__(self) -> str:
        return f"Guard(allowed_hosts={sorted(self.allowed_hosts)!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message = refusal
        if scope["type"] == "websocket":
            await receive()  # websocket.connect; closing before accepting answers 403
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
            return
        body = orjson.dumps({"error": {"type": "AuthenticationError", "message": message, "retriable": False,
                                       "code": None}})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"x-content-type-options", b"nosniff")]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="trackstream"'))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body if scope.get("method") != "HEAD" else b""})

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """``(status, message)`` when the request must be refused, else None."""
        headers: dict[bytes, bytes] = {}
        for raw_name, value in scope.get("headers", ()):
            name = bytes(raw_name).lower()
            if name in _SINGLE and name in headers:
                return 403, f"the {name.decode()} header appears more than once"
            headers[name] = bytes(value)
        host = headers.get(b"host", b"").decode("latin-1").lower()
        if host not in self.allowed_hosts:
            return 403, (f"Host {host!r} is not this server's address (allowed: {', '.join(sorted(self.allowed_hosts))}"
                         "); requests through other names are refused (DNS rebinding)")
        origin = headers.get(b"origin")
        if origin is not None and origin.decode("latin-1").lower() not in self._origins:
            return 403, "cross-origin requests are refused"
        if not self._authorized(headers.get(b"authorization")):
            return 401, ("missing or wrong token: send Authorization: Bearer <token>, the token being in the "
                         "store's api.token file (readable only by the account that runs the store's owner)")
        if scope["type"] == "http" and scope.get("method", "GET") not in _SAFE_METHODS:
            content_type = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
            if content_type != b"application/json":
                return 403, "request bodies must be Content-Type: application/json"
        return None

    def _authorized(self, header: bytes | None) -> bool:
        if header is None:
            return False
        scheme, _, credentials = header.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(credentials.strip(), self._token)


def create_app(service: Any, *, token: str, allowed_hosts: list[str]) -> FastAPI:
    """The app serving ``service`` (a ``trackstream.sinks.query.QueryService``) to holders of ``token``.

    ``allowed_hosts``: the ``Host`` values accepted (``host:port``). Raises :class:`MissingDependencyError`
    naming the ``server`` extra when FastAPI is not installed.
    """
    require("fastapi", "server")
    require("pydantic", "server")
    from fastapi import APIRouter, FastAPI, Security
    from fastapi.security import HTTPBearer

    from trackstream.api import routes

    app = FastAPI(
        title="trackstream query API", version=API_VERSION, openapi_url=OPENAPI_URL, docs_url=None,
        redoc_url=None, swagger_ui_oauth2_redirect_url=None,
        description="Reads of one trackstream store, served by the process that owns it. Every request needs "
                    "`Authorization: Bearer <token>` (the token is in the store's api.token file).",
    )
    # Declares the bearer scheme in the OpenAPI schema; the Guard enforces it on every request.
    bearer = HTTPBearer(auto_error=False, description="the token in <data_dir>/api.token")
    api = APIRouter(prefix=API_PREFIX, dependencies=[Security(bearer)])
    api.include_router(routes.query_router(service))
    api.include_router(routes.health_router())
    # The live page's server push goes here: api.include_router(events_router(...)) for /api/v1/events.
    app.include_router(api)
    # The live page itself: app.mount("/", ui) after the API router.
    routes.install_error_handlers(app)
    app.add_middleware(Guard, token=token, allowed_hosts=allowed_hosts)
    return app
