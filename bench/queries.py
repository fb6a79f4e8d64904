"""Read-path benchmarks (``make bench-queries``): multi-rank against single-rank reads (issue 13, the default) and
what the facade adds on top of a query (issue 12, ``--overhead``).

**Multi-rank vs single-rank** (default). Two chDB stores with the same logical points, each built and timed in
its own subprocess of this script (chDB opens one store directory per process), in the same run:

- ``single``: ``--runs`` runs x 1 rank x ``--steps`` steps of ``loss`` and ``acc``;
- ``multi``: the same runs and steps logged by ``--ranks`` ranks each (``--ranks`` times the stored points).

Each store is built through the real write path without Kafka: envelopes of
:func:`trackstream.streams.synthetic.run_envelopes` (an ``lr`` param per run; ranks interleaved per flush, and
``--concurrent-runs`` runs interleaved envelope by envelope, as they meet on a partition), encoded to wire bytes,
through a :class:`~trackstream.streams.Processor` (a final ``tick`` far in the future emits what is pending), and
written by a :class:`~trackstream.sinks.sink.Sink` on a :class:`~trackstream.sinks.chdb_backend.ChdbBackend` in
writes of about ``--batch-points`` points. Generating values is the slow part of the build, so only the first
``--seeds`` runs are generated; later runs re-label the envelopes of run ``index % seeds`` with their own id,
producers and params, which is exactly what ``run_envelopes`` gives for ``RunSpec(seed=index % seeds)``.

After the build the store is left to finish its background merges (at most ``--settle-timeout-s``), then a
:class:`~trackstream.sinks.query.QueryService` in the same process (the engine's own time) runs each query once to
warm up and ``--repeat`` times: ``compare("loss", agg="min")``, ``compare("loss", agg="last")``, ``runs()``, a
search (``runs(params={"lr": 0.001}, order_by="loss.min", limit=10)``) and
``curves`` of 10 runs at 1,000 buckets (a query that has spent ``--budget-s`` stops repeating after 5 calls, so a
read path that takes seconds per call cannot stretch the run for hours). The parent prints build figures and one
table of p50 / p95 per store with the ratio multi / single. Targets (issue 13): compare p95 <= 50 ms, runs() and
curves p95 <= 100 ms, and multi / single p95 <= 1.5 for each.

**Facade overhead** (``--overhead``). ``--runs`` runs x ``--steps`` steps of ``loss`` and ``acc`` (plus an ``lr``
param per run), logged through the SDK into a spool, then read through the facade (``ts.compare(agg="min")``,
``ts.runs()``) three ways:

- ``query only``: the same call on a ``QueryService`` already open on the store (the engine's own time);
- ``facade, no owner``: ``ts.compare`` / ``ts.runs`` with nobody owning the store (the reader opens it, checks
  the spool for new data, queries, and keeps it open until it has been idle for ``idle_release_s``), timed
  alternately with ``query only`` on the same open store;
- ``facade, owner``: the same with ``trackstream local`` owning the store (through its authenticated HTTP API).

Each figure is the median of ``--repeat`` calls after one warm-up; ``overhead`` is facade minus query only. The
owner runs the query in its own process, so its overhead is best read on ``sql('SELECT 1')``, whose query costs
next to nothing: what is left is the HTTP round trip, authentication and the JSON encoding.
Target: overhead <= 10 ms with and without an owner.

    python bench/queries.py                  # 1,000 runs x 8 ranks x 10,000 steps (160M points) vs 1 rank
    python bench/queries.py --quick          # 20 runs x 4 ranks x 500 steps, 5 calls (tests)
    python bench/queries.py --overhead       # 100 runs x 2,000 steps
    python bench/queries.py --overhead --runs 20 --steps 500 --repeat 10   # quick
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if TYPE_CHECKING:
    from trackstream.schemas.envelope import Envelope
    from trackstream.sinks.backend import Backend
    from trackstream.sinks.sink import Sink
    from trackstream.streams import Output
    from trackstream.streams.synthetic import RunSpec

PROJECT = "bench-queries"

# --- multi-rank vs single-rank (issue 13) ---------------------------------------------------------------------

RANKS_PROJECT = "bench-ranks"
METRICS = ("loss", "acc")
TOPIC = "bench.metrics"
CURVE_RUNS = 10
CURVE_POINTS = 1000
# Options of the multi-rank benchmark: full size, and --quick (for the tests).
FULL = {"runs": 1000, "ranks": 8, "steps": 10_000, "repeat": 30, "steps_per_envelope": 1000,
        "batch_points": 2_000_000, "concurrent_runs": 50, "seeds": 8, "settle_timeout_s": 600.0,
        "budget_s": 120.0}
QUICK = {"runs": 20, "ranks": 4, "steps": 500, "repeat": 5, "steps_per_envelope": 100,
         "batch_points": 20_000, "concurrent_runs": 5, "seeds": 4, "settle_timeout_s": 30.0, "budget_s": 30.0}
# Options of the overhead benchmark (issue 12): full size, and --quick.
OVERHEAD_FULL = {"runs": 100, "steps": 2000, "repeat": 30}
OVERHEAD_QUICK = {"runs": 20, "steps": 500, "repeat": 10}
# runs() searched (issue 14): one lr of five, best 10 by a metric summary.
SEARCH = 'runs(params={"lr": 0.001}, order_by="loss.min", limit=10)'
# (query, p95 target in ms); the ratio target is the same for all of them.
TARGETS = {
    'compare(loss, agg="min")': 50.0,
    'compare(loss, agg="last")': 50.0,
    "runs()": 100.0,
    SEARCH: 100.0,
    f"curves({CURVE_RUNS} runs, loss, points={CURVE_POINTS})": 100.0,
}
RATIO_TARGET = 1.5
MIN_CALLS = 5  # timed calls of a query even past its --budget-s


def run_id(index: int) -> str:
    """The id of run ``index`` (the same in both stores)."""
    return f"run-{index:05d}"


def run_params(index: int) -> dict[str, object]:
    """The params of run ``index``: an ``lr`` out of five, so ``runs()`` and ``compare`` carry params."""
    return {"lr": 10 ** -(index % 5 + 2)}


class RunSource:
    """Envelopes of each run: ``run_envelopes(spec(index), params=run_params(index))``.

    Only the first ``seeds`` runs are generated (values cost ~5 us each); run ``index`` re-labels the envelopes of
    run ``index % seeds``, which have the same seed and so the same values, with its own id, producers and params.
    """

    def __init__(self, *, ranks: int, steps: int, steps_per_envelope: int, seeds: int) -> None:
        self.ranks, self.steps, self.seeds = ranks, steps, seeds
        self.steps_per_envelope = min(steps_per_envelope, steps)
        self._templates: dict[int, list[Envelope]] = {}

    def spec(self, index: int) -> RunSpec:
        from trackstream.streams.synthetic import RunSpec

        return RunSpec(project=RANKS_PROJECT, run_id=run_id(index), world_size=self.ranks, metrics=METRICS,
                       steps=self.steps, steps_per_envelope=self.steps_per_envelope, seed=index % self.seeds)

    def envelopes(self, index: int) -> Iterator[Envelope]:
        from trackstream.streams.synthetic import run_envelopes

        seed = index % self.seeds
        template = self._templates.get(seed)
        if template is None:
            template = self._templates[seed] = list(run_envelopes(self.spec(index), params=run_params(index)))
        return relabel(template, run_id(index), run_params(index))


def relabel(template: list[Envelope], new_id: str, params: dict[str, object]) -> Iterator[Envelope]:
    """``template`` (envelopes of one synthetic run) as run ``new_id`` with ``params``: entity, producer ids, and
    the ``run_started`` event's name and params. Metric batches are shared with the template, not copied."""
    old_id = template[0].entity.id
    entity = dataclasses.replace(template[0].entity, id=new_id)
    for envelope in template:
        events = [
            dataclasses.replace(event, data={**event.data, "name": new_id, "params": dict(params)})
            if event.type == "run_started" else event
            for event in envelope.events
        ]
        yield dataclasses.replace(envelope, entity=entity, events=events,
                                  producer_id=new_id + envelope.producer_id.removeprefix(old_id))


def _progress(label: str, text: str) -> None:
    print(f"[{label}] {text}", file=sys.stderr, flush=True)


class _Batch:
    """Processor outputs waiting for the next sink write, and what the writes did so far."""

    def __init__(self, sink: Sink, batch_points: int) -> None:
        self.sink, self.batch_points = sink, batch_points
        self.blocks: list[Any] = []
        self.steps: list[Any] = []
        self.states: list[Any] = []
        self.pending = 0
        self.points = self.step_rows = self.writes = 0
        self.sink_s = 0.0

    def add(self, out: Output) -> None:
        if out.dlq or out.duplicates or out.conflicts:
            reasons = sorted({record.reason for record in out.dlq})
            raise SystemExit(f"the processor refused synthetic input: dlq {reasons}, duplicates {out.duplicates}, "
                             f"conflicts {out.conflicts}")
        self.blocks.extend(out.point_blocks)
        self.steps.extend(out.step_aggregates)
        self.states.extend(out.entity_states)
        self.pending += out.point_count()
        if self.pending >= self.batch_points:
            self.write()

    def write(self) -> None:
        if not (self.blocks or self.steps or self.states):
            return
        start = time.perf_counter()
        stats = self.sink.write(point_blocks=self.blocks, steps=self.steps, entity_states=self.states)
        self.sink_s += time.perf_counter() - start
        self.points += stats.points
        self.step_rows += stats.steps
        self.writes += 1
        self.blocks, self.steps, self.states, self.pending = [], [], [], 0


def build(backend: Backend, source: RunSource, *, label: str, runs: int, concurrent_runs: int,
          batch_points: int) -> dict[str, Any]:
    """Write ``runs`` runs through Processor and Sink; returns the build figures."""
    from trackstream.schemas import encode
    from trackstream.sinks.sink import Sink
    from trackstream.streams import Processor, SourcePosition, tune_gc

    tune_gc()
    sink = Sink(backend)
    processor = Processor()
    batch = _Batch(sink, batch_points)
    total = runs * source.ranks * source.steps * len(METRICS)
    offset = 0
    start = last_report = time.perf_counter()
    for first in range(0, runs, concurrent_runs):
        streams = [source.envelopes(index) for index in range(first, min(first + concurrent_runs, runs))]
        while streams:  # one envelope of each live run in turn, as the runs' producers meet on one partition
            live = []
            for stream in streams:
                envelope = next(stream, None)
                if envelope is None:
                    continue
                live.append(stream)
                batch.add(processor.process(encode(envelope), source=SourcePosition(TOPIC, 0, offset),
                                            key=envelope.entity.key()))
                offset += 1
            streams = live
            now = time.perf_counter()
            if now - last_report >= 10:
                last_report = now
                done = batch.points + batch.pending
                _progress(label, f"{done:,} / {total:,} points ({done / total:.0%}), {now - start:.0f} s, "
                                 f"{done / (now - start):,.0f} points/s")
    # Far in the future: every cross-rank step still pending is emitted with the ranks it has (there should be none).
    batch.add(processor.tick(now_ns=time.time_ns() + 10**18))
    batch.write()
    build_s = time.perf_counter() - start
    sink.close()
    _progress(label, f"built {batch.points:,} points in {build_s:.1f} s "
                     f"({batch.writes} writes, sink {batch.sink_s:.1f} s)")
    return {"points": batch.points, "expected_points": total, "step_rows": batch.step_rows, "envelopes": offset,
            "writes": batch.writes, "build_s": build_s, "sink_s": batch.sink_s}


def _scalar(backend: Backend, sql: str, params: dict[str, Any]) -> Any:
    return backend.query(sql, params)[1][0][0]


def settle(backend: Backend, *, label: str, timeout_s: float, quiet_s: float = 2.0) -> float:
    """Wait until the store has had no background merge for ``quiet_s`` (at most ``timeout_s``); returns seconds."""
    params = {"db": backend.database}
    start = time.monotonic()
    quiet_since: float | None = None
    while True:
        now = time.monotonic()
        if _scalar(backend, "SELECT count() FROM system.merges WHERE database = {db:String}", params):
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since >= quiet_s:
            return now - start
        if now - start > timeout_s:
            _progress(label, f"merges still running after {timeout_s:.0f} s; timing anyway")
            return now - start
        time.sleep(0.1)  # polling the merge list, not waiting blindly


def check(name: str, result: Any, *, runs: int, curve_ids: list[str]) -> None:
    """A wrong answer makes a timing meaningless: check the shape of each result once."""
    if name.startswith("curves"):
        if sorted(result) != sorted(curve_ids) or not all(result[i] for i in curve_ids):
            raise SystemExit(f"{name}: expected non-empty curves of {curve_ids}, got {list(result)}")
        longest = max(len(buckets) for buckets in result.values())
        if longest > CURVE_POINTS:
            raise SystemExit(f"{name}: {longest} buckets, more than {CURVE_POINTS}")
    elif name == SEARCH:
        lrs = {row["params"]["lr"] for row in result}
        mins = [row["metrics"]["loss"]["min"] for row in result]
        if len(result) != min(10, -(-runs // 5)) or lrs != {0.001} or mins != sorted(mins):
            raise SystemExit(f"{name}: expected the best {min(10, -(-runs // 5))} runs of lr 0.001, got {result}")
    elif len(result) != runs:
        raise SystemExit(f"{name}: {len(result)} rows, expected one per run ({runs})")


def time_queries(backend: Backend, *, label: str, runs: int, repeat: int, budget_s: float) -> dict[str, list[float]]:
    """Milliseconds of each call, ``repeat`` times after one warm-up, on a QueryService in this process.

    A query that has spent ``budget_s`` seconds stops after ``MIN_CALLS`` calls at least: a read path that takes
    seconds per call misses its target either way, and the run stays bounded.
    """
    from trackstream.sinks.query import QueryService

    service = QueryService(backend=backend)
    curve_ids = [run_id(i * runs // CURVE_RUNS) for i in range(min(CURVE_RUNS, runs))]
    curves_name = f"curves({CURVE_RUNS} runs, loss, points={CURVE_POINTS})"
    calls: dict[str, Callable[[], Any]] = {
        'compare(loss, agg="min")': lambda: service.compare(RANKS_PROJECT, "loss", agg="min"),
        'compare(loss, agg="last")': lambda: service.compare(RANKS_PROJECT, "loss", agg="last"),
        "runs()": lambda: service.runs(RANKS_PROJECT),
        SEARCH: lambda: service.runs(RANKS_PROJECT, params={"lr": 0.001}, order_by="loss.min", limit=10),
        curves_name: lambda: service.curves(RANKS_PROJECT, curve_ids, "loss", points=CURVE_POINTS),
    }
    times: dict[str, list[float]] = {}
    for name, call in calls.items():
        check(name, call(), runs=runs, curve_ids=curve_ids)  # warm-up
        samples: list[float] = []
        while len(samples) < repeat and (len(samples) < MIN_CALLS or sum(samples) < budget_s * 1000):
            start = time.perf_counter()
            call()
            samples.append((time.perf_counter() - start) * 1000)
        times[name] = samples
        _progress(label, f"{name}: p50 {percentile(samples, 50):.1f} ms, p95 {percentile(samples, 95):.1f} ms "
                         f"({len(samples)} calls)")
    return times


def store_child(args: argparse.Namespace) -> int:
    """One store: build, settle, time; prints its figures as one JSON line on stdout."""
    from trackstream.sinks.chdb_backend import ChdbBackend

    label = args.store_child
    source = RunSource(ranks=args.ranks, steps=args.steps, steps_per_envelope=args.steps_per_envelope,
                       seeds=args.seeds)
    database = f"bench_{label}"
    figures = build(ChdbBackend(args.store_dir, database=database), source, label=label, runs=args.runs,
                    concurrent_runs=args.concurrent_runs, batch_points=args.batch_points)
    backend = ChdbBackend(args.store_dir, database=database)
    # Rows of ``points``: the ranks' points, plus whatever the sink derives from the step aggregates.
    figures["rows"] = _scalar(backend, "SELECT count() FROM points", {})
    if figures["points"] != figures["expected_points"] or figures["rows"] < figures["points"]:
        raise SystemExit(f"{label}: the sink wrote {figures['points']:,} points ({figures['rows']:,} rows of "
                         f"points), expected {figures['expected_points']:,}")
    figures["settle_s"] = settle(backend, label=label, timeout_s=args.settle_timeout_s)
    figures["parts"] = _scalar(backend, "SELECT count() FROM system.parts WHERE database = {db:String} AND active "
                               "AND table = 'points'", {"db": database})
    _progress(label, f"settled in {figures['settle_s']:.1f} s ({figures['parts']} active parts of points); timing")
    figures["times_ms"] = time_queries(backend, label=label, runs=args.runs, repeat=args.repeat,
                                       budget_s=args.budget_s)
    backend.close()
    print(json.dumps({"store": label, "ranks": args.ranks, **figures}), flush=True)
    return 0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``q`` percent of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * q / 100) - 1)]


def ranks_report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> str:
    """The build figures and the comparison table."""
    logical = args.runs * args.steps * len(METRICS)
    lines = [f"multi-rank vs single-rank reads (issue 13): {args.runs:,} runs x {args.steps:,} steps x "
             f"{len(METRICS)} metrics = {logical:,} logical points per store",
             "",
             f"{'store':<8}{'ranks':>6}{'points':>15}{'point rows':>15}{'build s':>10}{'points/s':>12}{'sink s':>9}"
             f"{'writes':>8}{'settle s':>10}{'parts':>7}"]
    for label in ("single", "multi"):
        r = results[label]
        lines.append(f"{label:<8}{r['ranks']:>6}{r['points']:>15,}{r['rows']:>15,}{r['build_s']:>10.1f}"
                     f"{r['points'] / r['build_s']:>12,.0f}{r['sink_s']:>9.1f}{r['writes']:>8}"
                     f"{r['settle_s']:>10.1f}{r['parts']:>7}")
    width = max(map(len, TARGETS)) + 2
    header = (f"{'query':<{width}}{'single p50':>11}{'single p95':>11}{'multi p50':>11}{'multi p95':>11}"
              f"{'ratio p50':>10}{'ratio p95':>10}{'calls':>8}  {'target':<30}met")
    lines += ["", f"ms, QueryService in-process, p50 / p95 of {args.repeat} calls after one warm-up (fewer, "
                  f"{MIN_CALLS} at least, once a query has spent {args.budget_s:.0f} s: calls single/multi)", header]
    for name, target in TARGETS.items():
        single, multi = results["single"]["times_ms"][name], results["multi"]["times_ms"][name]
        s50, s95, m50, m95 = (percentile(v, q) for v in (single, multi) for q in (50, 95))
        ratio50, ratio95 = m50 / s50, m95 / s95
        misses = [what for what, ok in (("p95", max(s95, m95) <= target), ("ratio", ratio95 <= RATIO_TARGET))
                  if not ok]
        met = "yes" if not misses else "no: " + ", ".join(misses)
        calls = f"{len(single)}/{len(multi)}"
        lines.append(f"{name:<{width}}{s50:>11.1f}{s95:>11.1f}{m50:>11.1f}{m95:>11.1f}{ratio50:>10.2f}"
                     f"{ratio95:>10.2f}{calls:>8}  {f'p95 <= {target:.0f} ms, ratio <= {RATIO_TARGET}':<30}{met}")
    return "\n".join(lines)


def ranks_benchmark(args: argparse.Namespace) -> int:
    """Build and time the single-rank store, then the multi-rank one, each in a subprocess; print the table."""
    root = Path(tempfile.mkdtemp(prefix="trackstream-bench-ranks-"))
    options = ["--runs", str(args.runs), "--steps", str(args.steps), "--repeat", str(args.repeat),
               "--steps-per-envelope", str(args.steps_per_envelope), "--batch-points", str(args.batch_points),
               "--concurrent-runs", str(args.concurrent_runs), "--seeds", str(args.seeds),
               "--settle-timeout-s", str(args.settle_timeout_s), "--budget-s", str(args.budget_s)]
    results: dict[str, dict[str, Any]] = {}
    try:
        for label, ranks in (("single", 1), ("multi", args.ranks)):
            command = [sys.executable, str(Path(__file__).resolve()), "--store-child", label,
                       "--store-dir", str(root / label), "--ranks", str(ranks), *options]
            done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=args.timeout_s, check=False)
            lines = done.stdout.strip().splitlines()
            if done.returncode or not lines:
                raise SystemExit(f"the {label} store's process failed (exit {done.returncode}): {done.stdout}")
            results[label] = json.loads(lines[-1])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(ranks_report(args, results))
    return 0


# --- facade overhead (issue 12) -------------------------------------------------------------------------------


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


def overhead(args: argparse.Namespace) -> int:
    """The facade's overhead on top of the query, without and with an owner (issue 12, item 4)."""
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




def _resolve(args: argparse.Namespace, defaults: dict[str, Any]) -> argparse.Namespace:
    """Options left unset take ``defaults`` (the full size or ``--quick``)."""
    for name, value in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--overhead", action="store_true",
                        help="the facade's overhead on top of the query (issue 12) instead of multi vs single rank")
    parser.add_argument("--quick", action="store_true", help="small sizes for the tests: "
                        f"{QUICK['runs']} runs x {QUICK['ranks']} ranks x {QUICK['steps']} steps, "
                        f"{QUICK['repeat']} calls (--overhead: {OVERHEAD_QUICK['runs']} runs x "
                        f"{OVERHEAD_QUICK['steps']} steps, {OVERHEAD_QUICK['repeat']} calls)")
    parser.add_argument("--runs", type=int, help=f"runs per store (default {FULL['runs']:,}; "
                        f"--overhead {OVERHEAD_FULL['runs']})")
    parser.add_argument("--ranks", type=int, help=f"ranks per run of the multi-rank store (default {FULL['ranks']})")
    parser.add_argument("--steps", type=int, help=f"steps per run and metric (default {FULL['steps']:,}; "
                        f"--overhead {OVERHEAD_FULL['steps']:,})")
    parser.add_argument("--repeat", type=int,
                        help=f"timed calls per query after one warm-up (default {FULL['repeat']})")
    parser.add_argument("--steps-per-envelope", type=int,
                        help=f"steps per producer flush (default {FULL['steps_per_envelope']:,})")
    parser.add_argument("--batch-points", type=int,
                        help=f"points per sink write, about (default {FULL['batch_points']:,})")
    parser.add_argument("--concurrent-runs", type=int,
                        help=f"runs whose envelopes interleave (default {FULL['concurrent_runs']})")
    parser.add_argument("--seeds", type=int, help=f"runs with values of their own; the others reuse them "
                        f"(default {FULL['seeds']})")
    parser.add_argument("--settle-timeout-s", type=float,
                        help="longest wait for background merges before timing, in seconds "
                             f"(default {FULL['settle_timeout_s']:.0f})")
    parser.add_argument("--budget-s", type=float,
                        help=f"seconds of timed calls per query and store after which a query stops repeating, "
                             f"{MIN_CALLS} calls at least (default {FULL['budget_s']:.0f})")
    parser.add_argument("--timeout-s", type=float, default=7200.0, help="limit per store process (default 7200)")
    parser.add_argument("--store-child", choices=("single", "multi"), help=argparse.SUPPRESS)
    parser.add_argument("--store-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.overhead:
        return overhead(_resolve(args, OVERHEAD_QUICK if args.quick else OVERHEAD_FULL))
    args = _resolve(args, QUICK if args.quick else FULL)
    if args.store_child:
        return store_child(args)
    return ranks_benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
