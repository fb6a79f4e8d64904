"""The store owner's ASGI app: one FastAPI app, the query API under ``/api/v1``, guarded on every request.

Routes (all behind the guard below; the OpenAPI schema at ``/api/v1/openapi.json``):

- ``POST /api/v1/compare``, ``/curves``, ``/runs``, ``/sql``, ``/entity_metrics``, ``/wait_ingested`` and
  ``GET /api/v1/health`` (:mod:`trackstream.api.routes`).

- ``GET /api/v1/events``: the live page's server push (Server-Sent Events, :mod:`trackstream.api.events`).
- ``/``: the live page (:mod:`trackstream.ui`), mounted after the API router so that ``/api`` keeps answering.

Everything sits behind the same guard.

The guard (:class:`Guard`, pure ASGI, before any routing, so unknown paths and the schema are covered too):

1. ``Host`` must be one of ``allowed_hosts`` (the bound ``host:port``; loopback aliases on loopback), else 403:
   a DNS-rebinding page reaches the port under a name of its own.
2. ``Origin``, when present, must be ``http://<an allowed host>``, else 403: no cross-origin caller, and CORS
   is never opened (no ``Access-Control-*`` header is ever sent, so preflights fail).
3. ``Authorization: Bearer <token>`` must carry the store's token (``hmac.compare_digest``), else 401. A browser
   (the live page) carries it in a cookie instead: ``GET <path>?token=<token>`` (the URL the owner prints, as
   notebook servers do) answers ``303`` to ``<path>`` with the cookie ``trackstream_token_<port>`` set
   (``HttpOnly; SameSite=Strict; Path=/``: no script reads it and no other site's request carries it), so the
   token leaves the address bar; later requests of that browser carry the cookie. A wrong token in the URL is
   401 like any other.
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
COOKIE_PREFIX: Final = "trackstream_token_"  # + the port: cookies are per host, not per port


_LOGIN: Final = (303, "login")


def _wants_html(scope: Scope) -> bool:
    """A browser navigating to a page (not an API call): ``GET`` outside ``/api`` accepting ``text/html``."""
    if scope.get("method") not in ("GET", "HEAD") or str(scope.get("path", "")).startswith(API_PREFIX):
        return False
    accept = next((bytes(v) for k, v in scope.get("headers", ()) if bytes(k).lower() == b"accept"), b"")
    return b"text/html" in accept


def _refusal_page(status: int, message: str) -> bytes:
    import html

    hint = ("Open the address that <code>trackstream ui</code> (or <code>trackstream local</code>) printed, with "
            "its <code>?token=</code>." if status == 401 else "")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>trackstream: {status}</title></head><body "
            f"style='font-family:system-ui,sans-serif;margin:3em;max-width:40em'><h1>Not authorised</h1><p>{hint}</p>"
            f"<p style='color:#666'>{html.escape(message)}</p></body></html>").encode()


class Guard:
    """ASGI middleware enforcing the rules of the module docstring on every HTTP and WebSocket request."""

    def __init__(self, app: ASGIApp, *, token: str, allowed_hosts: Iterable[str], port: int = 0) -> None:
        if not token:
            raise ValueError("the API needs a token")
        self.app = app
        self.cookie = f"{COOKIE_PREFIX}{port}".encode()
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
        if refusal == _LOGIN:
            await self._login(scope, send)
            return
        status, message = refusal
        if scope["type"] == "websocket":
            await receive()  # websocket.connect; closing before accepting answers 403
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
            return
        body = orjson.dumps({"error": {"type": "AuthenticationError", "message": message, "retriable": False,
                                       "code": None}})
        content_type = b"application/json"
        if _wants_html(scope):  # a browser opening the page: a readable page, same refusal
            body, content_type = _refusal_page(status, message), b"text/html; charset=utf-8"
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
                   (b"x-content-type-options", b"nosniff"), (b"content-security-policy", b"default-src 'none'")]
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
        in_url = self._url_token(scope) if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD") else None
        if in_url is not None:  # a URL with a token is judged by it, cookie or not (a wrong one never stays in view)
            return _LOGIN if in_url else (401, "wrong token in the URL: open the URL the store's owner printed")
        if not self._authorized(headers.get(b"authorization")) and not self._cookie(headers.get(b"cookie")):
            return 401, ("missing or wrong token: send Authorization: Bearer <token>, the token being in the "
                         "store's api.token file (readable only by the account that runs the store's owner)")
        if scope["type"] == "http" and scope.get("method", "GET") not in _SAFE_METHODS:
            content_type = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
            if content_type != b"application/json":
                return 403, "request bodies must be Content-Type: application/json"
        return None

    def _url_token(self, scope: Scope) -> bool | None:
        """None when the query string carries no ``token``, else whether it carries the right one (once)."""
        from urllib.parse import parse_qs

        values = parse_qs(bytes(scope.get("query_string", b"")).decode("latin-1")).get("token", [])
        if not values:
            return None
        return len(values) == 1 and hmac.compare_digest(values[0].encode("latin-1"), self._token)

    def _cookie(self, header: bytes | None) -> bool:
        """True when the ``Cookie`` header carries the right token under this server's cookie name."""
        if header is None:
            return False
        for part in header.split(b";"):
            name, _, value = part.strip().partition(b"=")
            if name == self.cookie and hmac.compare_digest(value, self._token):
                return True
        return False

    async def _login(self, scope: Scope, send: Send) -> None:
        """``303`` to the same path without the query string, setting the token cookie (module docstring)."""
        path = scope.get("path", "/")
        location = path if path.startswith("/") and not path.startswith("//") else "/"
        cookie = self.cookie + b"=" + self._token + b"; HttpOnly; SameSite=Strict; Path=/"
        headers = [(b"location", location.encode("latin-1", "replace")), (b"set-cookie", cookie),
                   (b"content-length", b"0"), (b"cache-control", b"no-store"), (b"referrer-policy", b"no-referrer")]
        await send({"type": "http.response.start", "status": 303, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    def _authorized(self, header: bytes | None) -> bool:
        if header is None:
            return False
        scheme, _, credentials = header.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(credentials.strip(), self._token)


def create_app(service: Any, *, token: str, allowed_hosts: list[str], port: int = 0) -> FastAPI:
    """The app serving ``service`` (a ``trackstream.sinks.query.QueryService``) to holders of ``token``: the query
    API, its server push (``/api/v1/events``) and the live page at ``/``.

    ``allowed_hosts``: the ``Host`` values accepted (``host:port``); ``port``: the bound port (names the page's
    cookie). Raises :class:`MissingDependencyError`
    naming the ``server`` extra when FastAPI is not installed.
    """
    require("fastapi", "server")
    require("pydantic", "server")
    from fastapi import APIRouter, FastAPI, Security
    from fastapi.security import HTTPBearer

    from trackstream import ui
    from trackstream.api import routes
    from trackstream.api.events import events_router

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
    api.include_router(events_router(service))
    app.include_router(api)
    ui.mount(app)  # after the API router, so that /api keeps answering
    routes.install_error_handlers(app)
    app.add_middleware(Guard, token=token, allowed_hosts=allowed_hosts, port=port)
    return app
