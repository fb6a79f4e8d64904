"""Reading through the process that owns a chDB store: :class:`HttpQueryClient` and :func:`owner_client`.

The client offers the read methods of ``trackstream.sinks.query.QueryService`` (:class:`ReadApi`) and sends
each call as ``POST <url>/api/v1/<method>`` with a JSON body of named arguments and ``Authorization: Bearer
<token>``. Results and errors come back as the service returns and raises them (floats exact, see
:mod:`trackstream.api.wire`). Light: the standard library and orjson.
"""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Final

import orjson

from trackstream.api.owner import read_owner, token_path
from trackstream.api.wire import from_wire, to_wire
from trackstream.schemas import EntityRef
from trackstream.schemas.errors import TrackstreamError, error_from_payload, error_payload

API_PREFIX: Final = "/api/v1"
# The service's parameters a caller may pass by position, per method (the rest are keyword-only).
POSITIONAL: Final[dict[str, tuple[str, ...]]] = {
    "compare": ("project", "metric"),
    "curves": ("project", "runs", "metric"),
    "runs": ("project",),
    "runs_table": ("project",),
    "alerts": ("project",),
    "sql": ("query", "parameters"),
    "sql_table": ("query", "parameters"),
    "entity_metrics": ("entity",),
    "entity": ("project", "entity_id"),
    "history": ("project", "entity_id", "metric"),
    "wait_ingested": ("entity", "producer_id", "seq"),
    "projects": (),
}


class AuthenticationError(TrackstreamError):
    """The store owner's query API refused this process (HTTP 401 or 403): no token, a wrong one, or a request
    it forbids. Not retriable: the token is in ``<data_dir>/api.token``, readable only by the owner's account.
    """


class ReadApi:
    """The read methods of ``trackstream.sinks.query.QueryService``, each forwarded to ``_call(method, ...)``."""

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def compare(self, *args: Any, **kwargs: Any) -> Any:
        """``QueryService.compare`` in the store's process: one row per run or group (docs/queries.md)."""
        return self._call("compare", *args, **kwargs)

    def curves(self, *args: Any, **kwargs: Any) -> Any:
        """``QueryService.curves`` in the store's process: ``{run_id: [bucket rows]}``."""
        return self._call("curves", *args, **kwargs)

    def runs(self, *args: Any, **kwargs: Any) -> Any:
        """``QueryService.runs`` in the store's process: one dict per run."""
        return self._call("runs", *args, **kwargs)

    def runs_table(self, *args: Any, **kwargs: Any) -> Any:
        """``QueryService.runs_table`` in the store's process: one page of the runs table."""
        return self._call("runs_table", *args, **kwargs)

    def alerts(self, *args: Any, **kwargs: Any) -> Any:
        """``QueryService.alerts`` in the store's process: alert transitions, newest first."""
        return self._call("alerts", *args, **kwargs)

    def sql(self, *args: Any, **kwargs: Any) -> Any:
        """``QueryService.sql`` in the store's process: read-only SQL, rows as lists."""
        return self._call("sql", *args, **kwargs)

    def sql_table(self, *args: Any, **kwargs: Any) -> Any:
        """``QueryService.sql_table`` in the store's process: ``{"columns": [...], "rows": [...]}``."""
        return self._call("sql_table", *args, **kwargs)

    def entity_metrics(self, *args: Any, **kwargs: Any) -> Any:
        """``QueryService.entity_metrics`` in the store's process: ``{metric: number | [values]}``."""
        return self._call("entity_metrics", *args, **kwargs)

    def entity(self, *args: Any, **kwargs: Any) -> Any:
        """``QueryService.entity`` in the store's process: one run or model, without metric summaries."""
        return self._call("entity", *args, **kwargs)

    def history(self, *args: Any, **kwargs: Any) -> Any:
        """``QueryService.history`` in the store's process: every point of one series in step order."""
        return self._call("history", *args, **kwargs)

    def projects(self, *args: Any, **kwargs: Any) -> Any:
        """``QueryService.projects`` in the store's process: the project names, sorted."""
        return self._call("projects", *args, **kwargs)

    def wait_ingested(self, *args: Any, **kwargs: Any) -> Any:
        """``QueryService.wait_ingested`` in the store's process; raises ``IngestTimeout`` (retriable)."""
        return self._call("wait_ingested", *args, **kwargs)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """The API never redirects: a 3xx is an error, and the token is never sent on to another address."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


# No proxies (the API is the owner's, reached directly; a proxy would see the token) and no redirects.
_OPENER: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def _arguments(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of a call: positional arguments named as the service names them, values in wire form."""
    names = POSITIONAL.get(method)
    if names is None:
        raise TypeError(f"the query API has no method {method!r}")
    if len(args) > len(names):
        raise TypeError(f"{method}() takes {len(names)} positional argument(s) but {len(args)} were given")
    named = dict(zip(names, args, strict=False))
    for name, value in kwargs.items():
        if name in named:
            raise TypeError(f"{method}() got multiple values for argument {name!r}")
        named[name] = value
    return {name: _encode(value) for name, value in named.items()}


def _encode(value: Any) -> Any:
    if isinstance(value, EntityRef):
        return {"project": value.project, "type": value.type, "id": value.id}
    return to_wire(value)


class HttpQueryClient(ReadApi):
    """Reads through the owner process; same methods, results and errors as ``trackstream.sinks.query.QueryService``.

    ``token`` is the store's API token (``<data_dir>/api.token``; :func:`owner_client` reads it). An error raised
    in the owner comes back as the same :class:`TrackstreamError` class with the same ``retriable``; an owner
    that cannot be reached raises ``StoreUnavailable`` (retriable); a refused token or request raises
    :class:`AuthenticationError`. ``token_file`` only names the token file in those messages.
    """

    def __init__(self, url: str, *, token: str | None, timeout_s: float = 120.0,
                 token_file: Path | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.token_file = token_file
        self.__token = token

    def __repr__(self) -> str:
        return f"HttpQueryClient({self.url!r}, token={'set' if self.__token else 'missing'})"

    def _where(self) -> str:
        return str(self.token_file) if self.token_file is not None else "<data_dir>/api.token"

    def _refused(self, status: int, detail: str) -> AuthenticationError:
        return AuthenticationError(
            f"the store owner's query API at {self.url} refused the request (HTTP {status}: {detail}). Its token is "
            f"in {self._where()}, readable only by the account that runs the store's owner: read as that "
            "account, or ask it to run the query")

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        body = _arguments(method, args, kwargs)
        if not self.__token:
            raise AuthenticationError(
                f"the store's owner serves queries at {self.url}, but this account cannot read its token file "
                f"{self._where()}: it is readable only by the account that runs the store's owner (read as that "
                "account, or ask it to run the query)")
        timeout = self.timeout_s
        if method == "wait_ingested" and isinstance(body.get("timeout_s"), int | float):
            timeout = max(timeout, float(body["timeout_s"]) + 30.0)  # the owner answers once its own wait ends
        request = urllib.request.Request(
            f"{self.url}{API_PREFIX}/{method}", data=orjson.dumps(body), method="POST",
            headers={"Content-Type": "application/json", "Accept": "application/json",
                     "Authorization": f"Bearer {self.__token}"},
        )
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                return from_wire(orjson.loads(response.read())["result"])
        except urllib.error.HTTPError as exc:
            raise self._error(exc) from None
        except urllib.error.URLError as exc:
            from trackstream.sinks.errors import StoreUnavailable

            raise StoreUnavailable(f"the store's owner at {self.url} is unreachable: {exc.reason}") from None
        except (OSError, http.client.HTTPException) as exc:
            from trackstream.sinks.errors import StoreUnavailable

            raise StoreUnavailable(f"the store's owner at {self.url} did not answer: {exc}") from None

    def _error(self, exc: urllib.error.HTTPError) -> Exception:
        from trackstream.sinks.errors import StoreUnavailable  # also loads the classes the owner may name

        try:
            error = orjson.loads(exc.read())["error"]
        except (orjson.JSONDecodeError, KeyError, TypeError, OSError, http.client.HTTPException):
            error = None
        if exc.code in (401, 403):
            message = error.get("message") if isinstance(error, dict) else None
            return self._refused(exc.code, str(message or exc.reason))
        if not isinstance(error, dict):
            if exc.code >= 500:  # no answer of the API's own: e.g. a request cut short as the owner stops
                return StoreUnavailable(f"the store's owner at {self.url} failed to answer (HTTP {exc.code})")
            error = error_payload(exc)
        return error_from_payload(error)


def owner_client(data_dir: str | os.PathLike[str], *, timeout_s: float = 120.0) -> HttpQueryClient | None:
    """A client for the live process that owns the chDB store in ``data_dir``, or None when there is none.

    No configuration: the address comes from ``<data_dir>/owner.json`` and the token from ``<data_dir>/api.token``.
    When this account cannot read the token (the owner runs as another account) the client raises
    :class:`AuthenticationError` on its first call, saying so.
    """
    owner = read_owner(Path(data_dir))
    if owner is None:
        return None
    return HttpQueryClient(owner.url, token=owner.token, timeout_s=timeout_s, token_file=token_path(Path(data_dir)))
