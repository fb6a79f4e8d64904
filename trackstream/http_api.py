"""The query API over HTTP on localhost, for the process that owns a chDB store (docs/architecture.md).

A chDB store can be opened by one process at a time. The owner (``trackstream local``, a sink worker writing
to chDB) serves the read API with :class:`QueryServer` and records its address in ``<data_dir>/owner.json``;
other processes find it there and read through :class:`HttpQueryClient`, which offers the same methods as
``trackstream.sinks.query.QueryService``. Floats cross the wire exactly: non-finite values travel as their bit patterns.
"""

from __future__ import annotations

import logging
import os
import threading
import urllib.error
import urllib.request
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

import orjson

from trackstream.schemas import EntityRef
from trackstream.schemas.errors import error_from_payload, error_payload
from trackstream.schemas.floats import F64_MARKER, exact_float, inexact_float

log = logging.getLogger(__name__)

OWNER_FILE: Final = "owner.json"
METHODS: Final = frozenset({"compare", "curves", "runs", "sql", "entity_metrics", "wait_ingested"})
_ENTITY: Final = "$entity"


def to_wire(value: Any) -> Any:
    """JSON-ready copy of ``value`` with exact floats and entity references."""
    if isinstance(value, float):
        return exact_float(value)
    if isinstance(value, EntityRef):
        return {_ENTITY: [value.project, value.type, value.id]}
    if isinstance(value, dict):
        return {key: to_wire(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_wire(item) for item in value]
    return value


def from_wire(value: Any) -> Any:
    """Inverse of :func:`to_wire` (tuples come back as lists)."""
    if isinstance(value, dict):
        if len(value) == 1 and F64_MARKER in value:
            return inexact_float(value)
        if len(value) == 1 and _ENTITY in value:
            project, entity_type, entity_id = value[_ENTITY]
            return EntityRef(project=project, type=entity_type, id=entity_id)
        return {key: from_wire(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_wire(item) for item in value]
    return value


def owner_address(data_dir: Path) -> str | None:
    """URL of the process serving this store, if one recorded itself there and is still alive."""
    try:
        owner = orjson.loads((data_dir / OWNER_FILE).read_bytes())
        os.kill(int(owner["pid"]), 0)
    except PermissionError:
        pass  # alive, and another account's: its API still answers
    except (OSError, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        return None  # no owner file, a dead owner, or a data dir that is not a directory
    return str(owner["url"])


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        method = self.path.strip("/")
        if method not in METHODS:
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"unknown method {method!r}"})
            return
        try:
            body = from_wire(orjson.loads(self.rfile.read(int(self.headers.get("Content-Length", "0")))))
            result = getattr(self.server.service, method)(*body.get("args", []), **body.get("kwargs", {}))
        except Exception as exc:
            log.debug("query %s failed", method, exc_info=True)
            error = error_payload(exc)
            status = HTTPStatus.SERVICE_UNAVAILABLE if error["retriable"] else HTTPStatus.BAD_REQUEST
            self._reply(status, {"error": error})
            return
        self._reply(HTTPStatus.OK, {"result": to_wire(result)})

    def _reply(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        body = orjson.dumps(payload)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    service: Any


class QueryServer:
    """Serves ``service``'s read methods on 127.0.0.1 and advertises the address in ``data_dir``."""

    def __init__(self, service: Any, data_dir: Path, *, port: int = 0) -> None:
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.service = service
        self._data_dir = data_dir
        self._thread = threading.Thread(target=self._server.serve_forever, name="trackstream-query", daemon=True)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, the address clients use."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> str:
        """Serve in a daemon thread and record the address in ``<data_dir>/owner.json``; returns the URL."""
        self._thread.start()
        owner = self._data_dir / OWNER_FILE
        owner.with_suffix(".tmp").write_bytes(orjson.dumps({"url": self.url, "pid": os.getpid()}))
        owner.with_suffix(".tmp").replace(owner)
        log.info("serving the query API for %s at %s", self._data_dir, self.url)
        return self.url

    def stop(self) -> None:
        """Withdraw ``owner.json``, stop serving and close the socket."""
        (self._data_dir / OWNER_FILE).unlink(missing_ok=True)
        self._server.shutdown()
        self._server.server_close()


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

    def sql(self, *args: Any, **kwargs: Any) -> Any:
        """``QueryService.sql`` in the store's process: read-only SQL, rows as lists."""
        return self._call("sql", *args, **kwargs)

    def entity_metrics(self, *args: Any, **kwargs: Any) -> Any:
        """``QueryService.entity_metrics`` in the store's process: ``{metric: number | [values]}``."""
        return self._call("entity_metrics", *args, **kwargs)

    def wait_ingested(self, *args: Any, **kwargs: Any) -> Any:
        """``QueryService.wait_ingested`` in the store's process; raises ``IngestTimeout`` (retriable)."""
        return self._call("wait_ingested", *args, **kwargs)


class HttpQueryClient(ReadApi):
    """Reads through the owner process; same methods, results and errors as ``trackstream.sinks.query.QueryService``.

    An error raised in the owner comes back as the same :class:`TrackstreamError` class with the same
    ``retriable``; an owner that cannot be reached raises ``StoreUnavailable`` (retriable).
    """

    def __init__(self, url: str, *, timeout_s: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        request = urllib.request.Request(
            f"{self.url}/{method}", data=orjson.dumps(to_wire({"args": list(args), "kwargs": kwargs})),
            headers={"Content-Type": "application/json"}, method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return from_wire(orjson.loads(response.read())["result"])
        except urllib.error.HTTPError as exc:
            import trackstream.sinks.errors  # noqa: F401 - loads the classes the owner may name (rebuilt by name)

            try:
                error = orjson.loads(exc.read())["error"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                error = error_payload(exc)
            raise error_from_payload(error if isinstance(error, dict) else {"message": str(error)}) from None
        except urllib.error.URLError as exc:
            from trackstream.sinks.errors import StoreUnavailable

            raise StoreUnavailable(f"the store's owner at {self.url} is unreachable: {exc.reason}") from None
