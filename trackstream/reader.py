"""Reading an embedded (chDB) store that no process owns, cheaply and without writing on the query path.

A read takes the store's owner lock, opens the store once and keeps it open between reads; it lets the store go
after ``idle_release_s`` without a read, or at once when a runner asks for it (``trackstream.store.owning_store``),
so that ``trackstream local`` or a chDB sink worker can still start. Before a read, the store is brought up to
date with the spool (read your writes after ``flush``, no daemon needed), but only when the spool holds data the
store has not ingested; that step is the ingest path's code (:class:`trackstream.local.LocalIngest`, which also
creates the tables of a new store), and whatever it meets, the read goes on with what is stored.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import orjson

from trackstream.api.client import ReadApi
from trackstream.producers.spool import SpoolReader, list_spools
from trackstream.producers.spool_scan import segment_name
from trackstream.store import StoreLock, store_wanted

log = logging.getLogger(__name__)


def _saved_positions(data_dir: Path) -> dict[str, tuple[int, int]]:
    from trackstream.local import STATE_FILE

    try:
        state = orjson.loads((data_dir / STATE_FILE).read_bytes())
        return {pid: (int(pos[0]), int(pos[1])) for pid, pos in state["positions"].items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, IndexError, orjson.JSONDecodeError):
        return {"": (-1, -1)}  # unreadable state: let the ingest path decide (it reports what is wrong)


def spool_has_news(spool_dir: Path, data_dir: Path) -> bool:
    """True when the spool holds something the store has not ingested: frames past a producer's saved position,
    a producer never seen, or a dead producer's directory (to recover and remove). A few ``stat`` calls per producer.
    """
    spools = list_spools(spool_dir)
    if not spools:
        return False
    positions = _saved_positions(data_dir)
    for spool in spools:
        saved = positions.get(spool.producer_id)
        if not spool.alive or saved is None:
            return True
        segments = SpoolReader(spool.path).segments()
        if not segments:
            continue
        last = segments[-1]
        if last > saved[0]:
            return True
        if last == saved[0] and os.stat(spool.path / segment_name(last)).st_size > saved[1]:
            return True
    return False


_NOTHING_STORED: dict[str, Any] = {"compare": list, "runs": list, "curves": dict, "entity_metrics": dict}


class _Session:
    """The store opened by a reader: a query service and, once needed, the ingest that catches up with the spool."""

    def __init__(self, lock: StoreLock, data_dir: Path, spool_dir: Path, database: str) -> None:
        from trackstream.sinks.chdb_backend import ChdbBackend
        from trackstream.sinks.query import QueryService

        self.lock, self.data_dir, self.spool_dir = lock, data_dir, spool_dir
        self.service = QueryService(backend=ChdbBackend(data_dir, database=database))
        self._ingest: Any = None
        self._has_tables = False

    def has_tables(self) -> bool:
        """Whether a writer created the tables yet (checked until they exist; a read never creates them)."""
        if not self._has_tables:
            self._has_tables = bool(self.service.backend.query("EXISTS TABLE points")[1][0][0])
        return self._has_tables

    def catch_up(self) -> None:
        """Ingest the spool's new data, if any; a failure is logged and the read goes on with what is stored."""
        if not spool_has_news(self.spool_dir, self.data_dir):
            return
        try:
            if self._ingest is None:
                from trackstream.local import LocalIngest

                self._ingest = LocalIngest(spool_dir=self.spool_dir, data_dir=self.data_dir, restored_grace=False)
            stats = self._ingest.ingest_pass()
        except Exception:
            log.warning("could not bring the store %s up to date with the spool %s; reading what is stored "
                        "(`trackstream local` reports the cause as it ingests)", self.data_dir, self.spool_dir,
                        exc_info=True)
            self._close_ingest()
            return
        if stats.envelopes:
            log.info("caught up with the spool: %d envelopes, %d points", stats.envelopes, stats.points)

    def _close_ingest(self) -> None:
        ingest, self._ingest = self._ingest, None
        if ingest is not None:
            try:
                ingest.close()
            except Exception:
                log.debug("closing the ingest failed", exc_info=True)

    def close(self) -> None:
        self._close_ingest()
        try:
            self.service.close()
        finally:
            self.lock.release()


class EmbeddedReader(ReadApi):
    """The read methods of the query API on a chDB store: through its owner's HTTP API when a process owns it,
    else directly (see the module docstring). Thread-safe; one per process is enough (``trackstream._query``).

    ``wait_owner_s``: how long a read waits while another process holds the store without serving it, before
    raising :class:`~trackstream.store.StoreBusyError` (retriable). ``idle_release_s``: how long the store stays
    open after the last read.
    """

    def __init__(self, data_dir: Path, spool_dir: Path, *, database: str = "default", wait_owner_s: float = 30.0,
                 idle_release_s: float = 2.0) -> None:
        self.data_dir = data_dir
        self.spool_dir = spool_dir
        self.database = database
        self.wait_owner_s = wait_owner_s
        self.idle_release_s = idle_release_s
        self._lock = threading.RLock()
        self._session: _Session | None = None
        self._last_use = 0.0
        self._reaper: threading.Thread | None = None
        self._wake = threading.Condition(self._lock)
        from trackstream.sinks.chdb_backend import on_other_store

        own = weakref.WeakMethod(self.release)

        def release() -> None:
            method = own()
            if method is not None:
                method()

        on_other_store(release)
        atexit.register(release)  # chDB must be closed before the interpreter tears down

    def __repr__(self) -> str:
        return f"EmbeddedReader({str(self.data_dir)!r}, open={self._session is not None})"

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        from trackstream.api.client import owner_client
        from trackstream.store import StoreBusyError

        deadline = time.monotonic() + self.wait_owner_s
        while True:
            with self._lock:
                if self._session is not None and store_wanted(self.data_dir):
                    self.release()
                if self._session is None:
                    client = owner_client(self.data_dir)
                    if client is not None:
                        return getattr(client, method)(*args, **kwargs)
                    self._session = self._open()
                if self._session is not None:
                    try:
                        return self._direct(self._session, method, *args, **kwargs)
                    finally:
                        self._touch()
            if time.monotonic() > deadline:
                raise StoreBusyError(f"the store {self.data_dir} is locked by another process that serves no "
                                     "query API; stop it or wait for it to finish")
            time.sleep(0.05)  # the owner publishes owner.json once it serves; no notification to wait on

    def _open(self) -> _Session | None:
        if store_wanted(self.data_dir):
            return None  # a runner is about to own it: read through its API once it serves
        lock = StoreLock(self.data_dir)
        if not lock.acquire():
            return None
        try:
            return _Session(lock, self.data_dir, self.spool_dir, self.database)
        except ImportError as exc:
            lock.release()
            from trackstream.schemas.errors import MissingDependencyError

            raise MissingDependencyError(f"{exc}; reading metrics needs the query extra: "
                                         "pip install 'trackstream[query]'", extra="query") from exc
        except BaseException:
            lock.release()
            raise

    @staticmethod
    def _direct(session: _Session, method: str, *args: Any, **kwargs: Any) -> Any:
        session.catch_up()
        if method == "wait_ingested":
            return None  # catch_up just ingested everything this process flushed to the spool
        if method in _NOTHING_STORED and not session.has_tables():
            return _NOTHING_STORED[method]()  # nothing was ever written here: no runs, rather than an error
        return getattr(session.service, method)(*args, **kwargs)

    def _touch(self) -> None:
        self._last_use = time.monotonic()
        if self._reaper is None or not self._reaper.is_alive():
            self._reaper = threading.Thread(target=self._reap, name="trackstream-reader-idle", daemon=True)
            self._reaper.start()
        self._wake.notify_all()

    def _reap(self) -> None:
        with self._lock:
            while self._session is not None:
                idle = time.monotonic() - self._last_use
                if idle >= self.idle_release_s or store_wanted(self.data_dir):
                    self.release()
                    return
                self._wake.wait(min(self.idle_release_s - idle, 0.25))

    def release(self) -> None:
        """Close the store and give up its lock now (the next read opens it again)."""
        with self._lock:
            session, self._session = self._session, None
            if session is not None:
                session.close()
                log.debug("released the store %s", self.data_dir)
