"""A training process for bench/faults.py: logs through the public SDK at a steady pace, counting what it logged.

    python bench/faults_producer.py '<json spec>'

Spec keys: ``project``, ``run_id``, ``points``, ``metrics`` (points per log call), ``seconds`` (pacing: the calls
are spread over this long), ``durability``, ``kafka_bootstrap`` ("" = spool only), ``topic_prefix``, ``spool_dir``,
``counter`` (a 16-byte file), optional ``spool_segment_bytes``, ``flush_timeout_s`` and ``mode`` ("series", or
"step-2**63": 19 points of ``reward``, then ``reward`` at step 2**63 on that existing series, then good points).

The counter file holds two little-endian u64, rewritten around every log call through a shared mapping: points
``attempted`` (before the call) and ``accepted`` (after it returned), so a process killed at any moment leaves
how many points the SDK had accepted, to within the one call in flight. The last stdout line is a JSON summary.
"""

from __future__ import annotations

import mmap
import struct
import sys
import time
from typing import Any

import orjson

COUNTER = struct.Struct("<QQ")


class Counter:
    """attempted / accepted points, in a file another process reads while this one runs (or after it died)."""

    def __init__(self, path: str) -> None:
        with open(path, "wb") as handle:
            handle.write(bytes(COUNTER.size))
        self._file = open(path, "r+b")  # noqa: SIM115 - lives as long as the process
        self._map = mmap.mmap(self._file.fileno(), COUNTER.size)
        self.attempted = self.accepted = 0

    def before(self, points: int) -> None:
        self.attempted += points
        COUNTER.pack_into(self._map, 0, self.attempted, self.accepted)

    def after(self, points: int) -> None:
        self.accepted += points
        COUNTER.pack_into(self._map, 0, self.attempted, self.accepted)


def main(spec: dict[str, Any]) -> dict[str, Any]:
    import trackstream as ts

    counter = Counter(spec["counter"])
    options: dict[str, Any] = {
        "durability": spec.get("durability", "memory"), "spool_dir": spec["spool_dir"],
        "kafka_bootstrap": spec.get("kafka_bootstrap", ""), "topic_prefix": spec.get("topic_prefix", "trackstream"),
    }
    if spec.get("spool_segment_bytes"):
        options["spool_segment_bytes"] = int(spec["spool_segment_bytes"])
    run = ts.start_run(spec["project"], name=spec["run_id"], run_id=spec["run_id"], rank=0, world_size=1, **options)
    summary: dict[str, Any] = {"run_id": spec["run_id"], "producer_id": run.producer_id}
    started = time.monotonic()
    if spec.get("mode") == "step-2**63":
        summary.update(_step_overflow(run, counter))
    else:
        _series(run, counter, spec, started)
    summary["log_seconds"] = round(time.monotonic() - started, 3)
    run.finish()
    if options["kafka_bootstrap"]:
        try:
            ts.flush(float(spec.get("flush_timeout_s", 120)), acknowledged=True)
            summary["acknowledged"] = True
        except ts.TrackstreamError as exc:
            summary["acknowledged"] = False
            summary["flush_error"] = f"{type(exc).__name__}: {exc}"
    summary.update(attempted=counter.attempted, accepted=counter.accepted)
    return summary


def _series(run: Any, counter: Counter, spec: dict[str, Any], started: float) -> None:
    width = int(spec.get("metrics", 10))
    calls = int(spec["points"]) // width
    names = [f"m{j}" for j in range(width)]
    per_call = float(spec.get("seconds", 10)) / max(calls, 1)
    for step in range(calls):
        values = {name: step + j / 100 for j, name in enumerate(names)}
        counter.before(width)
        run.log_metrics(values, step=step)
        counter.after(width)
        due = started + (step + 1) * per_call  # pacing: the load's shape, not a synchronization
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def _step_overflow(run: Any, counter: Counter) -> dict[str, Any]:
    """19 good points, one at step 2**63 on the same (now existing) series, a flush, then 100 good points."""
    for step in range(19):
        counter.before(1)
        run.log_metrics({"reward": 1.0 + step}, step=step)
        counter.after(1)
    outcome: dict[str, Any] = {}
    counter.before(1)
    try:
        run.log_metrics({"reward": 2.0}, step=2**63)
    except ValueError as exc:
        counter.attempted -= 1
        outcome["step_2_63"] = f"ValueError: {exc}"
    else:
        counter.after(1)
        outcome["step_2_63"] = "accepted"
    run.flush()
    for step in range(100):
        counter.before(1)
        run.log_metrics({"good": float(step)}, step=step)
        counter.after(1)
    return outcome


if __name__ == "__main__":
    result = main(orjson.loads(sys.argv[1]))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()
