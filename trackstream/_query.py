"""Where reads go: a ClickHouse server, the process owning the chDB store, or the store itself (docs/architecture.md).

- ``TRACKSTREAM_CLICKHOUSE_URL`` set: a ``trackstream.sinks.query.QueryService`` on the server.
- Embedded, and a process owns the store (``trackstream local``, a chDB sink worker): its HTTP query API.
- Embedded, and nobody owns it: take the store lock, bring the store up to date with the spool (read your
  writes after ``flush``), query, and release the store so that a runner can take it later.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from trackstream.http_api import ReadApi
from trackstream.schemas import EntityRef
from trackstream.schemas.errors import MissingDependencyError
from trackstream.schemas.settings import StoreSettings
from trackstream.store import StoreBusyError, spool_dir_from, store_lock

log = logging.getLogger(__name__)


class EmbeddedReader(ReadApi):
    """Reads a chDB store nobody owns: catch up with the spool under the store lock, query, release."""

    def __init__(self, data_dir: Path, spool_dir: Path, *, wait_owner_s: float = 30.0) -> None:
        self.data_dir = data_dir
        self.spool_dir = spool_dir
        self.wait_owner_s = wait_owner_s

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        from trackstream.http_api import HttpQueryClient, owner_address

        deadline = time.monotonic() + self.wait_owner_s
        while True:
            owner = owner_address(self.data_dir)
            if owner is not None:
                return getattr(HttpQueryClient(owner), method)(*args, **kwargs)
            with store_lock(self.data_dir, blocking=False) as acquired:
                if acquired:
                    return self._direct(method, *args, **kwargs)
            if time.monotonic() > deadline:
                raise StoreBusyError(f"the store {self.data_dir} is locked by another process that serves no "
                                     "query API; stop it or wait for it to finish")
            time.sleep(0.05)

    def _direct(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            from trackstream.local import catch_up
            from trackstream.sinks.query import QueryService

            catch_up(spool_dir=self.spool_dir, data_dir=self.data_dir)
            service = QueryService(data_dir=str(self.data_dir))
        except ImportError as exc:
            raise MissingDependencyError(f"{exc}; {_QUERY_EXTRA_HINT}", extra="query") from exc
        try:
            if method == "wait_ingested":
                return None  # catch_up just ingested everything this process flushed to the spool
            return getattr(service, method)(*args, **kwargs)
        finally:
            service.close()


_QUERY_EXTRA_HINT = "reading metrics needs the query extra: pip install 'trackstream[query]'"


def reader(store: StoreSettings | None = None, spool_dir: str | os.PathLike[str] | None = None) -> Any:
    """A reader for ``store`` (resolved: keyword > environment > default) with the read methods of the query API.

    A ClickHouse server URL reads the server; otherwise the chDB store ``data_dir`` is read through its owner
    process, or directly when nobody owns it. Raises :class:`MissingDependencyError` naming the ``query``
    extra on an SDK-only install.
    """
    settings = StoreSettings.resolve(store)
    if settings.url:
        try:
            from trackstream.sinks.query import QueryService

            return QueryService(settings)
        except ImportError as exc:
            raise MissingDependencyError(f"{exc}; {_QUERY_EXTRA_HINT}", extra="query") from exc
    return EmbeddedReader(settings.data_path, spool_dir_from(spool_dir))


_backend: Any = None
_backend_key: tuple[str | None, ...] | None = None
_ENV_KEYS = ("TRACKSTREAM_CLICKHOUSE_URL", "TRACKSTREAM_CLICKHOUSE_USER", "TRACKSTREAM_CLICKHOUSE_PASSWORD",
             "TRACKSTREAM_CLICKHOUSE_DATABASE", "TRACKSTREAM_DATA_DIR", "TRACKSTREAM_SPOOL_DIR")


def backend() -> Any:
    """The process-wide reader for the environment's configuration (made again when the environment changes)."""
    global _backend, _backend_key
    key = tuple(os.environ.get(name) for name in _ENV_KEYS)
    if _backend is None or key != _backend_key:
        _backend = reader()
        _backend_key = key
    return _backend


_RAISES = """
    ``store`` reads another store than the environment's (a :class:`StoreSettings`). Raises ``QueryError``
    for bad arguments or SQL, ``StoreUnavailable`` (retriable) when the store or its owner cannot be reached,
    ``StoreBusyError`` (retriable) when another process holds the store without serving it, and
    ``MissingDependencyError`` on an SDK-only install (``pip install 'trackstream[query]'``)."""


def _for(store: StoreSettings | None) -> Any:
    return backend() if store is None else reader(store)


def compare(project: str, metric: str, *, agg: str = "last", by: list[str] | None = None,
            runs: list[str] | None = None, entity_type: str = "run",
            store: StoreSettings | None = None) -> list[dict[str, Any]]:
    """One row per run, or per group of runs sharing the values of the params in ``by`` (docs/queries.md)."""
    result: list[dict[str, Any]] = _for(store).compare(project, metric, agg=agg, by=by, runs=runs,
                                                       entity_type=entity_type)
    return result


def curves(project: str, runs: list[str], metric: str, *, points: int = 1000,
           store: StoreSettings | None = None) -> dict[str, list[dict[str, Any]]]:
    """Per run at most ``points`` buckets over step with min/max/avg/last; extremes are never lost."""
    result: dict[str, list[dict[str, Any]]] = _for(store).curves(project, runs, metric, points=points)
    return result


def runs(project: str, *, store: StoreSettings | None = None) -> list[dict[str, Any]]:
    """Runs with status, params, tags, times and lost points."""
    result: list[dict[str, Any]] = _for(store).runs(project)
    return result


def sql(query: str, parameters: dict[str, Any] | None = None, *,
        store: StoreSettings | None = None) -> list[tuple[Any, ...]]:
    """Read-only SQL; values only as bound ``{name:Type}`` parameters."""
    return [tuple(row) for row in _for(store).sql(query, parameters)]


for _function in (compare, curves, runs, sql):
    _function.__doc__ = f"{_function.__doc__}\n{_RAISES}"


class _ReadBack:
    """The SDK's read-back protocol (``run.metrics``, ``run.wait_ingested``) over :func:`backend`."""

    def entity_metrics(self, entity: EntityRef) -> dict[str, float | list[float]]:
        result: dict[str, float | list[float]] = backend().entity_metrics(entity)
        return result

    def wait_ingested(self, entity: EntityRef, producer_id: str, seq: int, *, timeout_s: float) -> None:
        backend().wait_ingested(entity, producer_id, seq, timeout_s=timeout_s)
