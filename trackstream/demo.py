"""``trackstream demo``: a simulated hyperparameter sweep through the whole pipeline, on this machine.

Every (configuration, rank) is a separate process logging through the public SDK, exactly as under torchrun.
Embedded by default: producers write to the spool and ``trackstream local`` (run here, in a thread) ingests it
into a chDB store with the same processing and sink code as the Kafka deployment. With Kafka configured, the
demo starts a stream worker and a sink worker instead. At the end it prints the comparison grouped by
hyperparameters, writes a PNG of the loss curves and reports throughput and emit-to-queryable latency.

Latency is measured twice, by a probe run that logs a point every 50 ms and times until a query sees it:

- saturated: while the sweep logs as fast as it can (the ingest throughput is measured in this phase);
- paced: then a second sweep of as many processes logs at a fixed rate, by default half the saturated ingest
  rate, for ``--paced-seconds``: the latency of a pipeline that keeps up with its load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import select
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from trackstream import _query
from trackstream.demo_worker import metric_names
from trackstream.schemas.errors import TrackstreamError
from trackstream.schemas.limits import WORLD_SIZE_MAX
from trackstream.schemas.settings import KafkaSettings, StoreSettings
from trackstream.schemas.topics import Topics
from trackstream.sinks.errors import IngestTimeout

log = logging.getLogger("trackstream.demo")

LEARNING_RATES = (1e-3, 3e-4, 1e-4, 3e-3, 3e-5, 1e-2)
BATCH_SIZES = (32, 128)


def sweep_configs(count: int) -> list[dict[str, Any]]:
    """``count`` distinct hyperparameter sets: each learning rate with every batch size (so that grouping by
    learning rate compares several runs), then the next learning rate."""
    grid = itertools.product(LEARNING_RATES, BATCH_SIZES)
    configs = [{"lr": lr, "batch_size": batch} for lr, batch in itertools.islice(grid, count)]
    configs.sort(key=lambda c: (c["lr"], c["batch_size"]))
    return configs


@dataclass
class PacedReport:
    """The paced phase: ``target_points_per_s`` asked for, ``points`` logged in ``seconds``, latency samples (ms)
    of the probes emitted meanwhile, and ``drain_seconds`` from the end of logging until every point was
    queryable."""

    sweep: str = ""
    target_points_per_s: float = 0.0
    points: int = 0
    seconds: float = 0.0
    drain_seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures: ``target_points_per_s``, ``points_per_s`` achieved, latency p50/p99 in ms."""
        return {
            "target_points_per_s": round(self.target_points_per_s),
            "points": self.points,
            "seconds": round(self.seconds, 3),
            "points_per_s": round(self.points / self.seconds) if self.seconds > 0 else None,
            "drain_seconds": round(self.drain_seconds, 3),
            **_latency_figures(self.latencies_ms),
        }


@dataclass
class DemoReport:
    """The figures the demo prints (and writes as JSON with ``--json``)."""

    points: int = 0
    processes: int = 0
    log_seconds: float = 0.0
    ingest_seconds: float = 0.0
    first_seen_seconds: float = 0.0
    first_logged_seconds: float | None = None
    latencies_ms: list[float] = field(default_factory=list)
    paced: PacedReport | None = None

    def ingest_points_per_s(self) -> float | None:
        """The maximum ingest rate: points / (s until all were queryable - s until the first was logged), the rate
        the machine sustains with the training processes logging flat out; None before both are known."""
        if self.first_logged_seconds is not None and self.ingest_seconds > self.first_logged_seconds:
            return self.points / (self.ingest_seconds - self.first_logged_seconds)
        return None

    def drain_points_per_s(self) -> float | None:
        """Points / (s until all were queryable - s until the first was): the pipeline working off what the
        processes logged, mostly after they stopped (an upper bound no sustained load reaches)."""
        if self.ingest_seconds > self.first_seen_seconds:
            return self.points / (self.ingest_seconds - self.first_seen_seconds)
        return None

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready figures: times in s (3 decimals), ``ingest_points_per_s``, latency p50/p99 in ms
        of the saturated phase, and ``paced`` (see :meth:`PacedReport.as_dict`) when that phase ran.

        ``ingest_points_per_s`` is :meth:`ingest_points_per_s` (what the paced phase takes half of),
        ``drain_points_per_s`` :meth:`drain_points_per_s`; percentiles are nearest-rank. Figures that cannot be
        computed (no latency samples, no ingest interval) are None.
        """
        rate, drain = self.ingest_points_per_s(), self.drain_points_per_s()
        figures = {
            "points": self.points,
            "processes": self.processes,
            "log_seconds": round(self.log_seconds, 3),
            "end_to_end_seconds": round(self.ingest_seconds, 3),
            "ingest_points_per_s": round(rate) if rate is not None else None,
            "drain_points_per_s": round(drain) if drain is not None else None,
            **_latency_figures(self.latencies_ms),
        }
        if self.paced is not None:
            figures["paced"] = self.paced.as_dict()
        return figures


def _latency_figures(samples: list[float]) -> dict[str, Any]:
    latencies = sorted(samples)
    return {
        "latency_p50_ms": round(_percentile(latencies, 50), 1) if latencies else None,
        "latency_p99_ms": round(_percentile(latencies, 99), 1) if latencies else None,
        "latency_samples": len(latencies),
    }


def _percentile(ordered: list[float], q: float) -> float:
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# The points the ranks of a sweep's runs logged (not the cross-rank rows the stream adds).
_SWEEP_POINTS = ("project = {project:String} AND entity_type = 'run' AND startsWith(entity_id, {sweep:String}) "
                 "AND rank < {ranks:UInt32}")


def _sweep_params(project: str, sweep: str) -> dict[str, Any]:
    return {"project": project, "sweep": f"{sweep}-", "ranks": WORLD_SIZE_MAX}


def _first_logged_s(project: str, sweep: str, started_wall_s: float) -> float | None:
    """Seconds from ``started_wall_s`` (Unix time) until the sweep's first point was logged (its point time)."""
    rows = _query.sql(f"SELECT toUnixTimestamp64Milli(min(time)) FROM points WHERE {_SWEEP_POINTS}",
                      _sweep_params(project, sweep))
    first_ms = rows[0][0] if rows else None
    return None if not first_ms else max(0.0, first_ms / 1000 - started_wall_s)


def _count_points(project: str, sweep: str) -> int:
    """Points the ranks of the sweep's runs logged that a query can see (not the cross-rank rows the stream adds)."""
    rows = _query.sql(f"SELECT count() FROM points FINAL WHERE {_SWEEP_POINTS}", _sweep_params(project, sweep))
    return int(rows[0][0])


def _runner_main() -> None:
    """The embedded runner process of the demo: ``trackstream local`` with the demo's settings.

    Run as ``python -c "from trackstream.demo import _runner_main; _runner_main()" SPOOL DATA POLL_MS``; stops on
    SIGTERM. Its log goes to stderr (the demo sends it to ``local.log``).
    """
    from trackstream.local import run_local

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spool_dir, data_dir, poll_ms = sys.argv[1:4]
    run_local(spool_dir=Path(spool_dir), data_dir=Path(data_dir), poll_interval_ms=int(poll_ms),
              step_timeout_ms=2_000)


@contextlib.contextmanager
def _embedded_pipeline(spool_dir: Path, data_dir: Path, logs: Path, *, poll_interval_ms: int = 50,
                       timeout_s: float = 120.0) -> Iterator[None]:
    """``trackstream local`` as a process of its own, as a user runs it: it owns the store and serves queries,
    and the demo's own threads (the latency probe, the progress bar) do not share its interpreter.

    Its output goes to ``logs/local.log``. Raises :class:`TrackstreamError` naming that log when it exits, or does
    not serve the store within ``timeout_s``.
    """
    from trackstream.api.owner import read_owner

    command = [sys.executable, "-c", "from trackstream.demo import _runner_main; _runner_main()", str(spool_dir),
               str(data_dir), str(poll_interval_ms)]
    with open(logs / "local.log", "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while read_owner(data_dir) is None:
            if time.monotonic() > deadline or process.poll() is not None:
                raise TrackstreamError(f"the embedded runner did not come up; see {logs}/local.log")
            time.sleep(0.1)
        yield
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


@contextlib.contextmanager
def kafka_workers(kafka: KafkaSettings, data_dir: Path, logs: Path, *, store: StoreSettings | None = None,
                  step_timeout_ms: int = 2000, timeout_s: float = 120.0) -> Iterator[list[subprocess.Popen[bytes]]]:
    """A stream worker and a sink worker as subprocesses, both stopped on exit.

    The sink worker writes to ``store`` when it names a ClickHouse server, else to the chDB store ``data_dir``,
    which it owns and serves. The workers get ``kafka`` and the store's credentials through their environment,
    so a password never shows in a process list. Their output goes to ``logs/streams.log`` and ``logs/sink.log``.
    Raises :class:`TrackstreamError` naming the logs when a worker exits, or the workers are not ready (the
    embedded store served, or on a server the processed topics created) within ``timeout_s``.
    """
    command = [sys.executable, "-m", "trackstream.cli"]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TRACKSTREAM_KAFKA_")}, **kafka.to_environment()}
    server = store.url if store is not None else None
    sink_store = ["--data-dir", str(data_dir)]
    if store is not None and server:
        env.update({"TRACKSTREAM_CLICKHOUSE_USER": store.user or "", "TRACKSTREAM_CLICKHOUSE_PASSWORD":
                    store.password.reveal() if store.password else ""})
        sink_store = ["--clickhouse-url", server]
    workers = [
        (["streams", "worker", "--data-dir", str(data_dir / "streams"), "--step-timeout-ms", str(step_timeout_ms)],
         "streams.log"),
        (["sink", "worker", *sink_store], "sink.log"),
    ]
    processes = []
    for args, log_name in workers:
        with open(logs / log_name, "ab") as out:
            processes.append(subprocess.Popen([*command, *args], stdout=out, stderr=subprocess.STDOUT, env=env))
    try:
        from trackstream.api.owner import read_owner

        deadline = time.monotonic() + timeout_s
        while not (_topics_exist(kafka) if server else read_owner(data_dir) is not None):
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise TrackstreamError(f"the workers did not come up; see {logs}/streams.log and {logs}/sink.log")
            time.sleep(0.1)
        yield processes
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


def _topics_exist(kafka: KafkaSettings) -> bool:
    """Whether the stream worker created the processed topics the sink worker consumes."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def check() -> bool:
        admin = AIOKafkaAdminClient(**kafka.client_options())
        try:
            await admin.start()
            return Topics(kafka.topic_prefix).points in set(await admin.list_topics())
        except Exception:
            return False
        finally:
            await admin.close()

    return asyncio.run(check())


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


def _launch_workers(args: argparse.Namespace, configs: list[dict[str, Any]], sweep: str, env: dict[str, str], *,
                    steps: int | None = None, rate: float | None = None) -> list[subprocess.Popen[bytes]]:
    """One process per (configuration, rank); with ``rate`` (points/s per process) paced, talking over pipes."""
    processes = []
    pipe = subprocess.PIPE if rate else None
    for index, params in enumerate(configs):
        for rank in range(args.ranks):
            spec = {"project": args.project, "name": f"lr={params['lr']:g} bs={params['batch_size']}",
                    "params": params, "steps": steps or args.steps, "metrics": args.metrics, "sweep": sweep,
                    "seed": args.seed + index, **({"rate": rate} if rate else {})}
            worker_env = {**env, "RANK": str(rank), "WORLD_SIZE": str(args.ranks),
                          "TRACKSTREAM_RUN_ID": f"{sweep}-c{index}"}
            processes.append(subprocess.Popen([sys.executable, "-m", "trackstream.demo_worker",
                                               orjson.dumps(spec).decode()], env=worker_env, stdin=pipe,
                                              stdout=pipe))
    return processes


def _read_line(process: subprocess.Popen[bytes], deadline: float) -> str:
    """The next line a paced worker prints, waiting until the monotonic ``deadline``; TrackstreamError if it exits
    first or says nothing by then."""
    assert process.stdout is not None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TrackstreamError(f"a paced training process ({process.pid}) did not answer in time")
        readable, _, _ = select.select([process.stdout], [], [], min(remaining, 1.0))
        if readable:
            line = process.stdout.readline()
            if not line:
                raise TrackstreamError(f"a paced training process ({process.pid}) exited with "
                                       f"{process.wait(30)}; see its output above")
            return line.decode().strip()


def _paced_phase(args: argparse.Namespace, configs: list[dict[str, Any]], env: dict[str, str], *, rate: float,
                 probe: LatencyProbe) -> PacedReport:
    """A second sweep, as many processes as the first, logging ``rate`` points/s in all for ``--paced-seconds``;
    the probe's latency is kept for the points it emitted meanwhile. Returns once every point is queryable."""
    count = len(configs) * args.ranks
    metrics = len(metric_names(max(1, args.metrics)))
    paced = PacedReport(sweep=f"paced-{uuid.uuid4().hex[:6]}", target_points_per_s=rate)
    steps = max(1, round(rate / count / metrics * args.paced_seconds))  # shapes the curves only
    log.info("paced phase: %d processes logging %.0f points/s in all for %.0f s (sweep %s)", count, rate,
             args.paced_seconds, paced.sweep)
    processes = _launch_workers(args, configs, paced.sweep, env, steps=steps, rate=rate / count)
    try:
        deadline = time.monotonic() + 120
        for process in processes:  # every run open: start all at once, not while interpreters still start up
            if (line := _read_line(process, deadline)) != "ready":
                raise TrackstreamError(f"a paced training process said {line!r} instead of ready")
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(b"go\n")
            process.stdin.flush()
        started = time.monotonic()
        end = started + args.paced_seconds
        while (now := time.monotonic()) < end:
            if any(process.poll() is not None for process in processes):
                raise TrackstreamError("a paced training process exited early; see its output above")
            time.sleep(min(0.1, end - now))
        for process in processes:
            assert process.stdin is not None
            process.stdin.close()
        stopped = time.monotonic()
        paced.seconds = stopped - started
        deadline = stopped + 120
        for process in processes:
            if not (line := _read_line(process, deadline)).startswith("logged "):
                raise TrackstreamError(f"a paced training process said {line!r} instead of its count")
            paced.points += int(line.split()[1])
            if process.wait(max(1.0, deadline - time.monotonic())) != 0:
                raise TrackstreamError("a paced training process failed; see its output above")
        timeout_s = max(120.0, paced.points / 2000)
        while (seen := _count_points(args.project, paced.sweep)) < paced.points:
            if time.monotonic() > stopped + timeout_s:
                raise IngestTimeout(f"only {seen} of {paced.points} paced points queryable after {timeout_s:.0f} s")
            time.sleep(0.1)
        paced.drain_seconds = time.monotonic() - stopped
        paced.latencies_ms = probe.samples(started, stopped)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    pipe.close()
    return paced


def _all_finished(project: str, sweep: str, runs: int) -> bool:
    """Every run of the sweep is queryable as completed (entities travel apart from points)."""
    done = [row for row in _query.runs(project)
            if str(row["id"]).startswith(f"{sweep}-") and row.get("status") == "completed"]
    return len(done) == runs


def _watch(processes: list[subprocess.Popen[bytes]], *, project: str, sweep: str, expected: int, runs: int,
           report: DemoReport, started: float, timeout_s: float) -> None:
    """Progress bar over points queryable; fails loudly if a worker fails or ingest stalls."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("[bold]ingesting"), BarColumn(), MofNCompleteColumn(), TextColumn("points"),
               TimeElapsedColumn())
    deadline = time.monotonic() + timeout_s
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("points", total=expected)
        while True:
            if report.log_seconds == 0 and all(p.poll() is not None for p in processes):
                report.log_seconds = time.monotonic() - started
                failed = [p.args for p in processes if p.returncode != 0]
                if failed:
                    raise TrackstreamError(f"{len(failed)} training processes failed; see their output above")
            seen = _count_points(project, sweep)
            if seen and not report.first_seen_seconds:
                report.first_seen_seconds = time.monotonic() - started
            progress.update(task, completed=seen)
            if seen >= expected and report.log_seconds and _all_finished(project, sweep, runs):
                report.ingest_seconds = time.monotonic() - started
                return
            if time.monotonic() > deadline:
                raise IngestTimeout(f"only {seen} of {expected} points queryable after {timeout_s:.0f} s; see the "
                                    "worker logs")
            time.sleep(0.25)


def _results(args: argparse.Namespace, sweep: str, configs: list[dict[str, Any]]) -> dict[str, Any]:
    from trackstream import render

    runs = [f"{sweep}-c{index}" for index in range(len(configs))]
    by_run = _query.compare(args.project, "loss", agg="min", runs=runs)
    render.print_table(by_run, title="min loss per run (mean over ranks per step)")
    grouped = _query.compare(args.project, "loss", agg="min", by=["lr"], runs=runs)
    render.print_table(grouped, title="min loss grouped by learning rate (across batch sizes)")
    curves = _query.curves(args.project, runs, "loss", points=500)
    names = {row["id"]: row.get("name") or row["id"] for row in by_run}
    render.plot_curves({names.get(run, run): buckets for run, buckets in curves.items()}, metric="loss",
                       path=args.plot, title=f"loss, sweep {sweep}: mean over {args.ranks} ranks, min/max band")
    best = min(by_run, key=lambda row: row["value"])
    return {"best_run": best["id"], "best_min_loss": best["value"], "by_run": by_run, "grouped": grouped}


def _register_best(project: str, best_run: str, sweep: str) -> dict[str, Any]:
    """Register the best run's checkpoint as a model and log its evaluation metrics on it."""
    import trackstream as ts

    evaluation: dict[str, float] = {}
    for metric, agg in (("accuracy", "last"), ("loss", "min")):
        rows = _query.compare(project, metric, agg=agg, runs=[best_run])
        if rows:
            evaluation[f"eval_{metric}"] = rows[0]["value"]
    model = ts.model(project, "demo-classifier", version=sweep)
    model.log_metrics(evaluation)
    model.log_metric("source_run_is_best", 1.0, single_value=True)
    model.close()
    return {"model": model.id, **evaluation}


def run_demo(args: argparse.Namespace) -> int:
    """Run the sweep; returns a process exit code."""
    base = Path(".cache") / "demo" / time.strftime("%Y%m%d-%H%M%S")
    data_dir = (args.data_dir or base / "data").resolve()
    spool_dir = (args.spool_dir or base / "spool").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    spool_dir.mkdir(parents=True, exist_ok=True)
    bootstrap = args.bootstrap or os.environ.get("TRACKSTREAM_KAFKA_BOOTSTRAP")
    clickhouse_url = args.clickhouse_url or os.environ.get("TRACKSTREAM_CLICKHOUSE_URL")
    prefix = f"demo-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "TRACKSTREAM_SPOOL_DIR": str(spool_dir), "TRACKSTREAM_DATA_DIR": str(data_dir)}
    env["TRACKSTREAM_KAFKA_BOOTSTRAP"] = bootstrap or ""
    env["TRACKSTREAM_TOPIC_PREFIX"] = prefix
    if clickhouse_url:
        env["TRACKSTREAM_CLICKHOUSE_URL"] = clickhouse_url
    os.environ.update(env)
    configs = sweep_configs(args.configs)
    sweep = f"sweep-{uuid.uuid4().hex[:6]}"
    metrics = metric_names(max(1, args.metrics))
    expected = len(configs) * args.ranks * (args.steps * len(metrics) + 1)
    mode = f"Kafka at {bootstrap}" if bootstrap else "embedded (spool -> chDB)"
    log.info("demo: %d configs x %d ranks x %d steps x %d metrics = %d points, %s; store %s", len(configs),
             args.ranks, args.steps, len(metrics), expected, mode, data_dir)
    report = DemoReport(points=expected, processes=len(configs) * args.ranks)
    logs = base if args.data_dir is None else data_dir
    logs.mkdir(parents=True, exist_ok=True)
    pipeline = (kafka_workers(KafkaSettings.resolve(bootstrap=bootstrap, topic_prefix=prefix), data_dir, logs,
                              store=StoreSettings.resolve(url=clickhouse_url or ""))
                if bootstrap
                else _embedded_pipeline(spool_dir, data_dir, logs))
    with pipeline:
        if args.ui:
            _announce_page(data_dir, clickhouse_url)
        probe = LatencyProbe(args.project)
        probe.start()
        started, started_wall_s = time.monotonic(), time.time()
        processes = _launch_workers(args, configs, sweep, env)
        try:
            _watch(processes, project=args.project, sweep=sweep, expected=expected, runs=len(configs), report=report,
                   started=started,
                   timeout_s=max(600.0, expected / 2000))
            report.latencies_ms = probe.samples(started, started + report.ingest_seconds)
            report.first_logged_seconds = _first_logged_s(args.project, sweep, started_wall_s)
            results = _results(args, sweep, configs)
            results["model"] = _register_best(args.project, results["best_run"], sweep)
            if args.paced_seconds > 0:
                rate = args.paced_rate or (report.ingest_points_per_s() or expected / report.ingest_seconds) / 2
                report.paced = _paced_phase(args, configs, env, rate=rate, probe=probe)
                results["paced_sweep"] = report.paced.sweep
        finally:
            probe.stop()
            for process in processes:
                if process.poll() is None:
                    process.kill()
        if args.ui:
            from trackstream.local import stop_on_signals

            log.info("the live page stays up; Ctrl-C stops the demo")
            stop_on_signals().wait()
    figures = report.as_dict()
    _print_figures(figures, results, args.plot)
    store = f"--clickhouse-url {_public(clickhouse_url)}" if clickhouse_url else f"--data-dir {data_dir}"
    sys.stdout.write(f"Browse the runs on the live page: trackstream ui {store}\n")
    if args.json:
        args.json.write_bytes(orjson.dumps({"figures": figures, **results, "sweep": sweep, "data_dir": str(data_dir)},
                                           option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return 0


def _public(url: str) -> str:
    """``url`` without credentials (user:password@ or ?password=): the settings' own split, never a printed secret."""
    return StoreSettings.resolve(url=url, environ={}).url or ""


def _announce_page(data_dir: Path, clickhouse_url: str | None) -> None:
    """Print the live page's URL: the embedded runner or the chDB sink worker serves it (they own ``data_dir``)."""
    from trackstream.api.owner import read_owner
    from trackstream.ui.serve import announce

    owner = read_owner(data_dir)
    if owner is None:  # a ClickHouse server: no process owns a store here; `trackstream ui` serves its page
        log.warning("no process serves %s: run `trackstream ui --clickhouse-url %s` to watch the sweep", data_dir,
                    _public(clickhouse_url or ""))
        return
    announce(owner.url, data_dir)


def _print_figures(figures: dict[str, Any], results: dict[str, Any], plot: Path) -> None:
    from trackstream import render

    rows = [{"figure": key, "value": value} for key, value in figures.items() if key != "paced"]
    rows.append({"figure": "best run (min loss)", "value": f"{results['best_run']} ({results['best_min_loss']:.4f})"})
    rows.append({"figure": "registered model", "value": results["model"]["model"]})
    rows.append({"figure": "loss curves", "value": str(plot.resolve())})
    render.print_table(rows, title="demo figures")
    phases = [("saturated", figures.get("ingest_points_per_s"), figures)]
    if "paced" in figures:
        paced = figures["paced"]
        phases.append((f"paced ({paced['target_points_per_s']} points/s asked)", paced["points_per_s"], paced))
    render.print_table([{"phase": name, "points/s": rate, "p50 ms": found["latency_p50_ms"],
                         "p99 ms": found["latency_p99_ms"], "probes": found["latency_samples"]}
                        for name, rate, found in phases], title="emit-to-queryable latency")
    for name, rate, found in phases:
        if found.get("latency_samples"):
            log.info("emit-to-queryable latency, %s at %s points/s: p50 %.1f ms, p99 %.1f ms over %d probes", name,
                     rate, found["latency_p50_ms"], found["latency_p99_ms"], found["latency_samples"])
