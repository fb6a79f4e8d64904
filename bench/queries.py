"""Read-path benchmark (``make bench-queries``): what a read costs on top of the query it runs (issue 12, item 4).

Data: ``--runs`` runs x ``--steps`` steps of ``loss`` and ``acc`` (plus an ``lr`` param per run), logged through
the SDK into a spool, then read through the facade (``ts.compare(agg="min")``, ``ts.runs()``) three ways:

- ``query only``: the same call on a ``QueryService`` already open on the store (the engine's own time);
- ``facade, no owner``: ``ts.compare`` / ``ts.runs`` with nobody owning the store (the reader opens it, checks
  the spool for new data, queries, and keeps it open until it has been idle for ``idle_release_s``), timed
  alternately with ``query only`` on the same open store;
- ``facade, owner``: the same with ``trackstream local`` owning the store (through its authenticated HTTP API).

Each figure is the median of ``--repeat`` calls after one warm-up; ``overhead`` is facade minus query only. The
owner runs the query in its own process, so its overhead is best read on ``sql('SELECT 1')``, whose query costs
next to nothing: what is left is the HTTP round trip, authentication and the JSON encoding.
Target: overhead <= 10 ms with and without an owner.

    python bench/queries.py                  # 100 runs x 2,000 steps
    python bench/queries.py --runs 20 --steps 500 --repeat 10   # quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROJECT = "bench-queries"


def _median_ms(call: Callable[[], Any], repeat: int) -> float:
    call()  # warm-up: first open, first catch-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _timed(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def _log(runs: int, steps: int) -> None:
    import trackstream as ts

    for index in range(runs):
        with ts.start_run(PROJECT, name=f"run-{index}", params={"lr": 10 ** -(index % 5 + 2)}) as run:
            for step in range(steps):
                run.log_metrics({"loss": 1.0 / (step + 1 + index), "acc": step / steps}, step=step)
    ts.flush()


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="trackstream-bench-queries-"))
    spool, data = root / "spool", root / "data"
    os.environ.update(TRACKSTREAM_SPOOL_DIR=str(spool), TRACKSTREAM_DATA_DIR=str(data))
    os.environ.pop("TRACKSTREAM_CLICKHOUSE_URL", None)
    os.environ.pop("TRACKSTREAM_KAFKA_BOOTSTRAP", None)
    import trackstream as ts
    from trackstream import _query
    from trackstream.api.owner import read_owner

    start = time.perf_counter()
    _log(args.runs, args.steps)
    logged_s = time.perf_counter() - start
    start = time.perf_counter()
    ts.runs(PROJECT)  # the first read ingests the spool
    first_s = time.perf_counter() - start
    print(f"data: {args.runs} runs x {args.steps} steps x 2 metrics, logged in {logged_s:.1f} s; "
          f"first read (catches up with the spool) {first_s:.2f} s")

    calls: dict[str, Callable[[Any], Any]] = {
        'compare(agg="min")': lambda api: api.compare(PROJECT, "loss", agg="min"),
        "runs()": lambda api: api.runs(PROJECT),
        "sql('SELECT 1')": lambda api: api.sql("SELECT 1"),
    }
    facade: dict[str, Callable[[], Any]] = {
        'compare(agg="min")': lambda: ts.compare(PROJECT, "loss", agg="min"),
        "runs()": lambda: ts.runs(PROJECT),
        "sql('SELECT 1')": lambda: ts.sql("SELECT 1"),
    }
    # Facade and query-only calls alternate on the same open store, so background merges after the catch-up
    # weigh on both alike.
    no_owner: dict[str, float] = {}
    query_only: dict[str, float] = {}
    reader = _query.backend()
    for name, call in calls.items():
        facade[name]()
        session = reader._session
        assert session is not None, "the reader let the store go between two calls"
        facade_times, direct_times = [], []
        for _ in range(args.repeat):
            facade_times.append(_timed(facade[name]))
            direct_times.append(_timed(lambda c=call, s=session: c(s.service)))
        no_owner[name] = statistics.median(facade_times)
        query_only[name] = statistics.median(direct_times)
    _query.release()  # let go of the store, as the reader does after its idle time, so the runner can take it

    local = subprocess.Popen([sys.executable, "-m", "trackstream.cli", "local"], env=dict(os.environ),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: read_owner(data) is not None, 120, "trackstream local to serve the store")
        owner = {name: _median_ms(call, args.repeat) for name, call in facade.items()}
    finally:
        local.terminate()
        local.wait(timeout=60)

    print(f"{'call':<22}{'query only':>12}{'no owner':>12}{'overhead':>10}{'owner':>10}{'overhead':>10}   (ms, "
          f"median of {args.repeat})")
    for name in calls:
        base = query_only[name]
        print(f"{name:<22}{base:>12.1f}{no_owner[name]:>12.1f}{no_owner[name] - base:>10.1f}"
              f"{owner[name]:>10.1f}{owner[name] - base:>10.1f}")
    print("target: overhead <= 10 ms; anchor (issue 12): before this change compare 121 ms, runs() 154 ms "
          "with no owner; MLflow search_runs 7 ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
