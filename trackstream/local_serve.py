"""``trackstream local``: own the embedded store, run :class:`~trackstream.local.LocalIngest` continuously and serve
the query API beside it until stopped.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from trackstream.local import LocalIngest, PassStats, data_path
from trackstream.store import owning_store, spool_dir_from

__all__ = ["run_local", "stop_on_signals"]

log = logging.getLogger(__name__)


def run_local(*, spool_dir: Path | None = None, data_dir: Path | None = None, poll_interval_ms: int = 100,
              step_timeout_ms: int | None = None, stop: threading.Event | None = None,
              on_ready: Callable[[str], object] | None = None, heartbeat_timeout_ms: int | None = None,
              host: str = "127.0.0.1", port: int = 0) -> PassStats:
    """Own the store, ingest the spool continuously and serve the query API until stopped (SIGINT/SIGTERM).

    The API listens on ``host:port`` (loopback and a free port by default; see ``trackstream.api.server``).
    """
    from trackstream.api.server import QueryServer
    from trackstream.sinks.query import QueryService
    from trackstream.streams import tune_gc

    tune_gc()  # a long-lived ingest loop: collections of its many small objects cost ~25% of its CPU
    spool, data = spool_dir_from(spool_dir), data_path(data_dir)
    stop = stop or stop_on_signals()
    totals = PassStats()
    with owning_store(data):  # a reader holding the store between reads lets it go
        # Queries run in the server's threads beside the ingest loop: the chDB backend serializes its calls.
        ingest = LocalIngest(spool_dir=spool, data_dir=data, step_timeout_ms=step_timeout_ms,
                             heartbeat_timeout_ms=heartbeat_timeout_ms)
        service = QueryService(data_dir=str(data))
        server = QueryServer(service, data, host=host, port=port)
        url = server.start()
        log.info("trackstream local: ingesting %s into %s; queries at %s", spool, data, url)
        if on_ready is not None:
            on_ready(url)
        try:
            while not stop.is_set():
                began = time.perf_counter()
                stats = ingest.ingest_pass()
                totals.add(stats)
                if stats.envelopes:
                    log.info("ingested %d envelopes, %d points (%d duplicates dropped, %d dead letters) in %.0f ms "
                             "(insert %.0f ms, state %.0f ms)", stats.envelopes, stats.points, stats.duplicates,
                             stats.dead_letters, (time.perf_counter() - began) * 1000, stats.insert_s * 1000,
                             stats.state_s * 1000)
                if not stats.envelopes:  # a pass that found work is followed at once: the next has arrived
                    stop.wait(poll_interval_ms / 1000)
        finally:
            server.stop()
            service.close()
            ingest.close()
    return totals


def stop_on_signals() -> threading.Event:
    """An event set on SIGINT or SIGTERM (handlers installed only from the main thread)."""
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
    return stop
