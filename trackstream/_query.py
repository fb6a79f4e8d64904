"""Where reads go: a ClickHouse server, the process owning the chDB store, or the store itself (docs/architecture.md).

- ``TRACKSTREAM_CLICKHOUSE_URL`` set: a ``trackstream.sinks.query.QueryService`` on the server.
- Embedded, and a process owns the store (``trackstream local``, a chDB sink worker): its HTTP query API.
- Embedded, and nobody owns it: :class:`trackstream.reader.EmbeddedReader` opens the store, brings it up to date
  with the spool when the spool has new data (read your writes after ``flush``), queries, and keeps it open
  until it has been idle a moment or a runner asks for it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from typing import Any

from trackstream.schemas import EntityRef
from trackstream.schemas.errors import MissingDependencyError
from trackstream.schemas.settings import StoreSettings
from trackstream.store import spool_dir_from

log = logging.getLogger(__name__)


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
    from trackstream.reader import EmbeddedReader

    return EmbeddedReader(settings.data_path, spool_dir_from(spool_dir), database=settings.database or "default")


_readers: dict[tuple[Any, ...], Any] = {}
_readers_lock = threading.Lock()


def _for(store: StoreSettings | None) -> Any:
    """The process's reader for ``store`` resolved now (keyword > environment > default), made once per store."""
    settings = StoreSettings.resolve(store)
    spool = spool_dir_from(None)
    secret = settings.password.reveal() if settings.password else ""
    key = (settings.url or None, settings.user, hashlib.sha256(secret.encode()).hexdigest(), settings.database,
           None if settings.url else str(settings.data_path), None if settings.url else str(spool))
    with _readers_lock:
        found = _readers.get(key)
        if found is None:
            if not settings.url:
                release()  # chDB opens one store directory per process: let go of the one read before
            found = _readers[key] = reader(settings, spool)
        return found


def backend() -> Any:
    """The process-wide reader for the environment's configuration (another one when the environment changes)."""
    return _for(None)


def release() -> None:
    """Let go of the stores this process's readers hold open (they also do so by themselves when idle)."""
    for found in list(_readers.values()):
        closing = getattr(found, "release", None)
        if closing is not None:
            closing()


_RAISES = """
    ``store`` reads another store than the environment's (a :class:`StoreSettings`). Raises ``QueryError``
    for bad arguments or SQL, ``StoreUnavailable`` (retriable) when the store or its owner cannot be reached,
    ``StoreBusyError`` (retriable) when another process holds the store without serving it, and
    ``MissingDependencyError`` on an SDK-only install (``pip install 'trackstream[query]'``)."""


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


def runs(project: str, *, runs: list[str] | None = None, status: str | list[str] | None = None,
         params: dict[str, Any] | None = None, tags: dict[str, str] | None = None, order_by: str | None = None,
         limit: int | None = None, store: StoreSettings | None = None) -> list[dict[str, Any]]:
    """Runs with status, params, tags, times, lost points, ranks and metric summaries; ``runs`` (ids: only those,
    ids not stored left out), ``status`` (one or a list), ``params`` and ``tags`` (equality on each key given),
    ``order_by`` (``"loss.min"``, ``"-loss.last"`` descending; runs without the metric last) and ``limit`` search
    them."""
    filters: dict[str, Any] = {"runs": runs, "status": status, "params": params, "tags": tags,
                               "order_by": order_by, "limit": limit}
    result: list[dict[str, Any]] = _for(store).runs(project, **{k: v for k, v in filters.items() if v is not None})
    return result


def sql(query: str, parameters: dict[str, Any] | None = None, *,
        store: StoreSettings | None = None) -> list[tuple[Any, ...]]:
    """Read-only SQL; values only as bound ``{name:Type}`` parameters."""
    return [tuple(row) for row in _for(store).sql(query, parameters)]


def get_run(project: str, run_id: str, *, store: StoreSettings | None = None) -> Any:
    """A read-only handle on run ``run_id`` (:class:`trackstream.readonly.EntityView`): ``.metrics``, ``.params``,
    ``.tags``, ``.status``, ``.history(metric)``; no producer, no status change. Raises ``NotFoundError``."""
    from trackstream.readonly import EntityView

    return EntityView(project, "run", run_id, store=store)


def get_model(project: str, name: str, version: str | int | None = None, *,
              store: StoreSettings | None = None) -> Any:
    """A read-only handle on model ``name`` (``name:version`` with ``version``), as :func:`get_run`."""
    from trackstream.readonly import EntityView
    from trackstream.schemas.names import model_entity_id

    return EntityView(project, "model", model_entity_id(name, version), store=store)


for _function in (compare, curves, runs, sql, get_run, get_model):
    _function.__doc__ = f"{_function.__doc__}\n{_RAISES}"


class _ReadBack:
    """The SDK's read-back protocol (``run.metrics``, ``run.wait_ingested``) over :func:`backend`."""

    def entity_metrics(self, entity: EntityRef) -> dict[str, float | list[float]]:
        result: dict[str, float | list[float]] = backend().entity_metrics(entity)
        return result

    def wait_ingested(self, entity: EntityRef, producer_id: str, seq: int, *, timeout_s: float) -> None:
        backend().wait_ingested(entity, producer_id, seq, timeout_s=timeout_s)
