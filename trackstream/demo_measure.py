"""What ``trackstream demo`` measures by querying the store: the points of a sweep a query sees, when the first
was logged, and emit-to-queryable latency under load (:class:`LatencyProbe`)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from trackstream import _query
from trackstream.schemas.errors import TrackstreamError
from trackstream.schemas.limits import WORLD_SIZE_MAX

# the demo's logger: its log lines name the demo, whichever of its modules writes them
log = logging.getLogger("trackstream.demo")

# The points the ranks of a sweep's runs logged (not the cross-rank rows the stream adds).
_SWEEP_POINTS = ("project = {project:String} AND entity_type = 'run' AND startsWith(entity_id, {sweep:String}) "
                 "AND rank < {ranks:UInt32}")


def _sweep_params(project: str, sweep: str) -> dict[str, Any]:
    return {"project": project, "sweep": f"{sweep}-", "ranks": WORLD_SIZE_MAX}


def first_logged_s(project: str, sweep: str, started_wall_s: float) -> float | None:
    """Seconds from ``started_wall_s`` (Unix time) until the sweep's first point was logged (its point time)."""
    rows = _query.sql(f"SELECT toUnixTimestamp64Milli(min(time)) FROM points WHERE {_SWEEP_POINTS}",
                      _sweep_params(project, sweep))
    first_ms = rows[0][0] if rows else None
    return None if not first_ms else max(0.0, first_ms / 1000 - started_wall_s)


def count_points(project: str, sweep: str) -> int:
    """Points the ranks of the sweep's runs logged that a query can see (not the cross-rank rows the stream adds)."""
    rows = _query.sql(f"SELECT count() FROM points FINAL WHERE {_SWEEP_POINTS}", _sweep_params(project, sweep))
    return int(rows[0][0])


class LatencyProbe:
    """Emit-to-queryable latency under load: a thread logs a probe point every ``interval_s`` through the SDK (as
    a training process does, flusher linger included) and another times until a query sees each one, querying
    every ``query_interval_s`` (so a latency is measured up to that much late).

    Every sample is kept with the time its point was emitted; :meth:`samples` picks those of one phase.
    """

    def __init__(self, project: str, *, interval_s: float = 0.05, query_interval_s: float = 0.05) -> None:
        self.project = project
        self.interval_s = interval_s
        self.query_interval_s = query_interval_s
        self._stop = threading.Event()
        self._samples: list[tuple[float, float]] = []  # (emitted, monotonic; latency, ms)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Open the probe run and start emitting and querying."""
        import trackstream as ts

        self._run = ts.start_run(self.project, name="latency-probe", run_id=f"probe-{uuid.uuid4().hex[:8]}",
                                 rank=0, world_size=1, tags={"probe": "true"})
        self._emitted: dict[int, float] = {}
        for target, name in ((self._emit, "latency-probe"), (self._query, "latency-probe-query")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _emit(self) -> None:
        step = 0
        while not self._stop.wait(self.interval_s):
            self._emitted[step] = time.monotonic()
            self._run.log_metric("probe", float(step), step=step)
            step += 1

    def _query(self) -> None:
        seen_up_to = -1
        query = ("SELECT step FROM points WHERE project = {p:String} AND entity_id = {id:String} "
                 "AND step > {after:Int64}")
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                rows = _query.sql(query, {"p": self.project, "id": self._run.id, "after": seen_up_to})
            except TrackstreamError as exc:  # e.g. the owner busy at start-up: the probe only measures
                log.debug("latency probe query failed: %s", exc)
                rows = []
            seen_at = time.monotonic()
            for (step,) in rows:
                emitted = self._emitted.pop(step, None)
                if emitted is not None:
                    self._samples.append((emitted, (seen_at - emitted) * 1000))
                seen_up_to = max(seen_up_to, step)
            # a query at most every query_interval_s: a closer watch would load the store it measures
            self._stop.wait(max(0.0, began + self.query_interval_s - time.monotonic()))

    def samples(self, start: float, end: float) -> list[float]:
        """Latencies (ms) of the probe points emitted between the monotonic times ``start`` and ``end``."""
        return [latency for emitted, latency in list(self._samples) if start <= emitted < end]

    def stop(self) -> None:
        """Stop both threads and finish the probe run."""
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        if self._threads:
            self._run.finish()
