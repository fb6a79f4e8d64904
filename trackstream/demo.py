"""``trackstream demo``: a simulated hyperparameter sweep through the whole pipeline, on this machine.

Every (configuration, rank) is a separate process logging through the public SDK, exactly as under torchrun.
Embedded by default: producers write to the spool and ``trackstream local`` (run here, in a thread) ingests it
into a chDB store with the same processing and sink code as the Kafka deployment. With Kafka configured, the
demo starts a stream worker and a sink worker instead. At the end it prints the comparison grouped by
hyperparameters, writes a PNG of the loss curves and reports throughput and emit-to-queryable latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import statistics
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
class DemoReport:
    """The figures the demo prints (and writes as JSON with ``--json``)."""

    points: int = 0
    processes: int = 0
    log_seconds: float = 0.0
    ingest_seconds: float = 0.0
    first_seen_seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready figures: times in s (3 decimals), ``ingest_points_per_s``, latency p50/p99 in ms.

        Throughput is points / (s until all were queryable - s until the first was); percentiles are nearest-rank.
        Figures that cannot be computed (no latency samples, no ingest interval) are None.
        """
        latencies = sorted(self.latencies_ms)
        return {
            "points": self.points,
            "processes": self.processes,
            "log_seconds": round(self.log_seconds, 3),
            "end_to_end_seconds": round(self.ingest_seconds, 3),
            "ingest_points_per_s": (round(self.points / (self.ingest_seconds - self.first_seen_seconds))
                                    if self.ingest_seconds > self.first_seen_seconds else None),
            "latency_p50_ms": round(_percentile(latencies, 50), 1) if latencies else None,
            "latency_p99_ms": round(_percentile(latencies, 99), 1) if latencies else None,
            "latency_samples": len(latencies),
        }


def _percentile(ordered: list[float], q: float) -> float:
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _count_points(project: str, sweep: str) -> int:
    """Points of the sweep's runs that a query can see."""
    rows = _query.sql("SELECT count() FROM points FINAL WHERE project = {project:String} AND entity_type = 'run' "
                      "AND startsWith(entity_id, {sweep:String})", {"project": project, "sweep": f"{sweep}-"})
    return int(rows[0][0])


@contextlib.contextmanager
def _embedded_pipeline(spool_dir: Path, data_dir: Path) -> Iterator[None]:
    """``trackstream local`` in a thread of this process: owns the store and serves queries."""
    from trackstream.local import run_local

    stop, ready = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def target() -> None:
        try:
            run_local(spool_dir=spool_dir, data_dir=data_dir, stop=stop, on_ready=lambda _: ready.set(),
                      poll_interval_ms=50, step_timeout_ms=2_000)
        except BaseException as exc:
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=target, name="trackstream-local", daemon=True)
    thread.start()
    ready.wait(120)
    if failure:
        raise failure[0]
    try:
        yield
    finally:
        stop.set()
        thread.join(60)


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


def _probe_latency(project: str, stop: threading.Event, report: DemoReport, *, interval_s: float = 0.05) -> None:
    """Emit-to-queryable latency under load: a thread logs a probe point every ``interval_s`` through the SDK
    (as a training process does, flusher linger included); this loop times until a query sees each one."""
    import trackstream as ts

    probe = ts.start_run(project, name="latency-probe", run_id=f"probe-{uuid.uuid4().hex[:8]}",
                         rank=0, world_size=1, tags={"probe": "true"})
    emitted: dict[int, float] = {}

    def emit() -> None:
        step = 0
        while not stop.wait(interval_s):
            emitted[step] = time.monotonic()
            probe.log_metric("probe", float(step), step=step)
            step += 1

    emitter = threading.Thread(target=emit, name="latency-probe", daemon=True)
    emitter.start()
    seen_up_to = -1
    query = ("SELECT step FROM points WHERE project = {p:String} AND entity_id = {id:String} "
             "AND step > {after:Int64}")
    try:
        while not stop.is_set():
            rows = _query.sql(query, {"p": project, "id": probe.id, "after": seen_up_to})
            seen_at = time.monotonic()
            for (step,) in rows:
                if step in emitted:
                    report.latencies_ms.append((seen_at - emitted.pop(step)) * 1000)
                seen_up_to = max(seen_up_to, step)
            time.sleep(0.01)
    finally:
        emitter.join(5)
        probe.finish()


def _launch_workers(args: argparse.Namespace, configs: list[dict[str, Any]], sweep: str,
                    env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    processes = []
    for index, params in enumerate(configs):
        for rank in range(args.ranks):
            spec = {"project": args.project, "name": f"lr={params['lr']:g} bs={params['batch_size']}",
                    "params": params, "steps": args.steps, "metrics": args.metrics, "sweep": sweep,
                    "seed": args.seed + index}
            worker_env = {**env, "RANK": str(rank), "WORLD_SIZE": str(args.ranks),
                          "TRACKSTREAM_RUN_ID": f"{sweep}-c{index}"}
            processes.append(subprocess.Popen([sys.executable, "-m", "trackstream.demo_worker",
                                               orjson.dumps(spec).decode()], env=worker_env))
    return processes


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
                else _embedded_pipeline(spool_dir, data_dir))
    with pipeline:
        stop_probe = threading.Event()
        probe = threading.Thread(target=_probe_latency, args=(args.project, stop_probe, report), daemon=True)
        probe.start()
        started = time.monotonic()
        processes = _launch_workers(args, configs, sweep, env)
        try:
            _watch(processes, project=args.project, sweep=sweep, expected=expected, runs=len(configs), report=report,
                   started=started,
                   timeout_s=max(600.0, expected / 2000))
        finally:
            stop_probe.set()
            probe.join(30)
            for process in processes:
                if process.poll() is None:
                    process.kill()
        results = _results(args, sweep, configs)
        results["model"] = _register_best(args.project, results["best_run"], sweep)
    figures = report.as_dict()
    _print_figures(figures, results, args.plot)
    if args.json:
        args.json.write_bytes(orjson.dumps({"figures": figures, **results, "sweep": sweep, "data_dir": str(data_dir)},
                                           option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return 0


def _print_figures(figures: dict[str, Any], results: dict[str, Any], plot: Path) -> None:
    from trackstream import render

    rows = [{"figure": key, "value": value} for key, value in figures.items()]
    rows.append({"figure": "best run (min loss)", "value": f"{results['best_run']} ({results['best_min_loss']:.4f})"})
    rows.append({"figure": "registered model", "value": results["model"]["model"]})
    rows.append({"figure": "loss curves", "value": str(plot.resolve())})
    render.print_table(rows, title="demo figures")
    if figures.get("latency_samples"):
        log.info("emit-to-queryable latency: p50 %.1f ms, p99 %.1f ms over %d probes (stdev %.1f ms)",
                 figures["latency_p50_ms"], figures["latency_p99_ms"], figures["latency_samples"],
                 statistics.pstdev([figures["latency_p50_ms"], figures["latency_p99_ms"]]))
