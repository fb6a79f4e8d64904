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
import itertools
import logging
import os
import select
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from trackstream import _query
from trackstream.demo_measure import LatencyProbe, count_points, first_logged_s
from trackstream.demo_pipeline import embedded_pipeline, kafka_workers
from trackstream.demo_report import DemoReport, PacedReport, print_figures, print_results
from trackstream.demo_worker import metric_names
from trackstream.schemas.errors import TrackstreamError
from trackstream.schemas.settings import KafkaSettings, StoreSettings
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
        while (seen := count_points(args.project, paced.sweep)) < paced.points:
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
            seen = count_points(project, sweep)
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
                else embedded_pipeline(spool_dir, data_dir, logs))
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
            report.first_logged_seconds = first_logged_s(args.project, sweep, started_wall_s)
            results = print_results(args, sweep, configs)
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
            from trackstream.local_serve import stop_on_signals

            log.info("the live page stays up; Ctrl-C stops the demo")
            stop_on_signals().wait()
    figures = report.as_dict()
    print_figures(figures, results, args.plot)
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
