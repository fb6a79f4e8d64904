"""Where reads go: a ClickHouse server, the process owning the chDB store, or the store itself (DESIGN §1).

- ``TRACKSTREAM_CLICKHOUSE_URL`` set: a ``sinks.query.QueryService`` on the server.
- Embedded, and a process owns the store (``trackstream local``, a chDB sink worker): its HTTP query API.
- Embedded, and nobody owns it: take the store lock, bring the store up to date with the spool (read your
  writes after ``flush``), query, and release the store so that a runner can take it later.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from schemas import EntityRef
from schemas.topics import setting
from trackstream.http_api import ReadApi

log = logging.getLogger(__name__)

STORE_LOCK: Final = "store.lock"
DEFAULT_DATA_DIR: Final = "~/.trackstream/data"
DEFAULT_SPOOL_DIR: Final = "~/.trackstream/spool"


def _path_setting(value: Path | str | None, env_var: str, default: str) -> Path:
    return Path(setting(None if value is None else str(value), env_var, default) or default).expanduser()


def data_dir_from(value: Path | str | None = None) -> Path:
    """The chDB store directory: keyword, else $TRACKSTREAM_DATA_DIR, else ~/.trackstream/data."""
    return _path_setting(value, "TRACKSTREAM_DATA_DIR", DEFAULT_DATA_DIR)


def spool_dir_from(value: Path | str | None = None) -> Path:
    """The spool directory: keyword, else $TRACKSTREAM_SPOOL_DIR, else ~/.trackstream/spool."""
    return _path_setting(value, "TRACKSTREAM_SPOOL_DIR", DEFAULT_SPOOL_DIR)


@contextlib.contextmanager
def store_lock(data_dir: Path, *, blocking: bool) -> Iterator[bool]:
    """Hold the store's owner lock (an flock on ``<data_dir>/store.lock``); yields whether it was acquired."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / STORE_LOCK, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
                raise TimeoutError(f"the store {self.data_dir} is locked by another process that serves no query "
                                   f"API; stop it or wait for it to finish")
            time.sleep(0.05)

    def _direct(self, method: str, *args: Any, **kwargs: Any) -> Any:
        from sinks.query import QueryService
        from trackstream.local import catch_up

        catch_up(spool_dir=self.spool_dir, data_dir=self.data_dir)
        service = QueryService(data_dir=self.data_dir)
        try:
            if method == "wait_ingested":
                return None  # catch_up just ingested everything this process flushed to the spool
            return getattr(service, method)(*args, **kwargs)
        finally:
            service.close()


_backend: Any = None
_backend_key: tuple[str | None, str | None, str | None] | None = None


def backend() -> Any:
    """The read backend for the current configuration (re-resolved when the environment changes)."""
    global _backend, _backend_key
    key = (os.environ.get("TRACKSTREAM_CLICKHOUSE_URL"), os.environ.get("TRACKSTREAM_DATA_DIR"),
           os.environ.get("TRACKSTREAM_SPOOL_DIR"))
    if _backend is None or key != _backend_key:
        url = setting(None, "TRACKSTREAM_CLICKHOUSE_URL")
        if url:
            from sinks.query import QueryService

            _backend = QueryService(clickhouse_url=url)
        else:
            _backend = EmbeddedReader(data_dir_from(), spool_dir_from())
        _backend_key = key
    return _backend


def compare(project: str, metric: str, *, agg: str = "last", by: list[str] | None = None,
            runs: list[str] | None = None, entity_type: str = "run") -> list[dict[str, Any]]:
    """One row per run, or per group of runs sharing the values of the params in ``by`` (DESIGN §6)."""
    result: list[dict[str, Any]] = backend().compare(project, metric, agg=agg, by=by, runs=runs,
                                                     entity_type=entity_type)
    return result


def curves(project: str, runs: list[str], metric: str, *, points: int = 1000) -> dict[str, list[dict[str, Any]]]:
    """Per run at most ``points`` buckets over step with min/max/avg/last; extremes are never lost."""
    result: dict[str, list[dict[str, Any]]] = backend().curves(project, runs, metric, points=points)
    return result


def runs(project: str) -> list[dict[str, Any]]:
    """Runs with status, params, tags, times and lost points."""
    result: list[dict[str, Any]] = backend().runs(project)
    return result


def sql(query: str, parameters: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """Read-only SQL; values only as bound ``{name:Type}`` parameters."""
    return [tuple(row) for row in backend().sql(query, parameters)]


class _ReadBack:
    """The SDK's read-back protocol (``run.metrics``, ``run.wait_ingested``) over :func:`backend`."""

    def entity_metrics(self, entity: EntityRef) -> dict[str, float | list[float]]:
        result: dict[str, float | list[float]] = backend().entity_metrics(entity)
        return result

    def wait_ingested(self, entity: EntityRef, producer_id: str, seq: int, *, timeout_s: float) -> None:
        backend().wait_ingested(entity, producer_id, seq, timeout_s=timeout_s)


def register_read_back() -> None:
    from producers.readback import set_read_backend

    set_read_backend(_ReadBack)
