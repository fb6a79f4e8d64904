"""Sink and query benchmark (``make bench-sinks``): ingest rows/s, bytes per point, compare and curves latency.

Data: per run and metric a training curve computed in float32, as frameworks produce it: exponential loss
decay plus Gaussian noise (sd 0.05), accuracy rising to 1 with noise (sd 0.01), a warmup + cosine learning-rate
schedule, a noisy gradient norm (|N(1, 0.3)|) and a log-loss; step times 100 ms apart with 5 ms jitter, in ns.

    python bench/sinks.py                 # 1,000 runs x 10 metrics x 10,000 steps + 10 runs x 1,000,000 steps
    python bench/sinks.py --quick         # 100 runs x 10 x 1,000 + 10 x 100,000 (a minute)
    python bench/sinks.py --bootstrap HOST:PORT   # also rows/s through Kafka and the sink worker
    python bench/sinks.py --bootstrap HOST:PORT --worker-only [--worker-points N]   # only the sink worker
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trackstream.schemas.envelope import EntityRef, MetricBatch
from trackstream.schemas.processed import EntityState, PointBlock, decode_point_block, encode_point_block
from trackstream.schemas.settings import KafkaSettings
from trackstream.sinks.chdb_backend import ChdbBackend
from trackstream.sinks.query import QueryService
from trackstream.sinks.sink import Sink

METRICS = ("loss", "accuracy", "lr", "grad_norm", "log_loss")
T0_NS = 1_767_225_600_000_000_000  # 2026-01-01


def curves(rng: np.random.Generator, run: int, metrics: int, steps: int, first_step: int = 0) -> tuple[Any, Any]:
    """(times_ns, values[metric]) for one run: float32 arithmetic, widened to float64 like a framework's .item()."""
    s = np.arange(first_step, first_step + steps, dtype=np.float32)
    total = np.float32(max(steps, 1))
    out = []
    for m in range(metrics):
        noise = rng.normal(0, 1, steps).astype(np.float32)
        kind = m % len(METRICS)
        if kind == 0:
            decay = np.exp(-s / np.float32(total / 5 + 100 * m))
            v = np.float32(2.5) * decay + np.float32(0.3) + np.float32(0.05) * noise
        elif kind == 1:
            v = np.float32(1) - np.float32(0.9) * np.exp(-s / np.float32(total / 3)) + np.float32(0.01) * noise
        elif kind == 2:
            warm = np.minimum(np.float32(1), s / np.float32(500))
            v = np.float32(1e-3) * warm * np.float32(0.5) * (np.float32(1) + np.cos(np.float32(np.pi) * s / total))
        elif kind == 3:
            v = np.abs(np.float32(1) + np.float32(0.3) * noise) * np.float32(1 + run % 7 / 10)
        else:
            decay = np.exp(-s / np.float32(total / 5))
            v = np.log(np.float32(2.5) * decay + np.float32(1.3)) + np.float32(0.02) * noise
        out.append(v.astype(np.float32).astype(np.float64))
    jitter = rng.normal(100e6, 5e6, steps).astype(np.int64)
    times = T0_NS + run * 10**12 + np.cumsum(jitter)
    return times, out


def run_block(rng: np.random.Generator, project: str, run: int, metrics: int, steps: int, *, first_step: int = 0
              ) -> PointBlock:
    times, values = curves(rng, run, metrics, steps, first_step)
    step_list, time_list = list(range(first_step, first_step + steps)), times.tolist()
    batches = [MetricBatch(f"{METRICS[m % len(METRICS)]}{'' if m < len(METRICS) else m // len(METRICS)}", "series",
                           step_list, time_list, values[m].tolist()) for m in range(metrics)]
    return PointBlock(EntityRef(project, "run", f"run-{run:05d}"), 0, f"bench-{run}", first_step, batches,
                      [0] * metrics)


def states(project: str, runs: int) -> list[EntityState]:
    return [EntityState(EntityRef(project, "run", f"run-{r:05d}"), f"run {r}", "completed",
                        {"lr": [1e-3, 3e-4][r % 2], "seed": r % 5, "model": ["small", "large"][r % 3 % 2]},
                        {"bench": "yes"}, T0_NS + r * 10**12, T0_NS + r * 10**12 + 10**12, [], 0, 1)
            for r in range(runs)]


def fill(sink: Sink, project: str, runs: int, metrics: int, steps: int, *, runs_per_write: int,
         max_steps_per_block: int = 100_000) -> tuple[int, float]:
    """Write the whole store through Sink.write; returns (points, seconds spent inside write)."""
    rng = np.random.default_rng(0)
    points, spent = 0, 0.0
    pending: list[PointBlock] = []
    for run in range(runs):
        for first in range(0, steps, max_steps_per_block):
            count = min(max_steps_per_block, steps - first)
            pending.append(run_block(rng, project, run, metrics, count, first_step=first))
            if sum(b.point_count() for b in pending) >= runs_per_write * metrics * min(steps, max_steps_per_block):
                points, spent = _write(sink, pending, points, spent)
    if pending:
        points, spent = _write(sink, pending, points, spent)
    sink.write(entity_states=states(project, runs))
    return points, spent


def _write(sink: Sink, pending: list[PointBlock], points: int, spent: float) -> tuple[int, float]:
    started = time.perf_counter()
    points += sink.write(pending).points
    spent += time.perf_counter() - started
    pending.clear()
    return points, spent


def timed(fn: Callable[[], Any], reps: int) -> tuple[float, float]:
    fn()  # warm up
    samples = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))]


def ingest_rates(sink: Sink, project: str, points_target: int) -> dict[str, float]:
    """Rows/s of Sink.write from decoded blocks and of decode + write from processed-topic bytes."""
    rng = np.random.default_rng(1)
    blocks = [run_block(rng, project, 900_000 + i, 10, 100) for i in range(max(1, points_target // 1000))]
    raw = [encode_point_block(b) for b in blocks]
    n = sum(b.point_count() for b in blocks)
    started = time.perf_counter()
    for i in range(0, len(blocks), 500):
        sink.write(blocks[i:i + 500])
    write_only = n / (time.perf_counter() - started)
    started = time.perf_counter()
    for i in range(0, len(raw), 500):
        sink.write([decode_point_block(r) for r in raw[i:i + 500]])
    with_decode = n / (time.perf_counter() - started)
    return {"write (decoded blocks of 1,000 points)": write_only, "decode + write (topic bytes)": with_decode}


async def kafka_rate(bootstrap: str, data_dir: Path, points_target: int) -> float:
    """Pre-fill a processed topic, then time one SinkWorker draining it into a fresh chDB database: from
    ``run`` (consumer start and group join included) until the last chunk is written and its offset committed
    (the consumer's shutdown is not counted). All three processed topics exist, as they do behind ``streams``."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from trackstream.schemas.topics import Topics
    from trackstream.sinks.batch import BatchLimits
    from trackstream.sinks.worker import SinkWorker

    prefix = f"bench{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 3, 1) for name in Topics(prefix).processed()])
    finally:
        await admin.close()
    rng = np.random.default_rng(2)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20,
                                max_request_size=8 * 1024 * 1024)
    await producer.start()
    blocks = [run_block(rng, "kafka", i, 10, 100) for i in range(max(1, points_target // 1000))]
    for block in blocks:
        await producer.send(f"{prefix}.points", encode_point_block(block), key=block.entity.key())
    await producer.flush()
    await producer.stop()
    sink = Sink(ChdbBackend(data_dir, database="bench_kafka"))
    worker = SinkWorker(sink, kafka=KafkaSettings(bootstrap=bootstrap, topic_prefix=prefix), group_id=prefix,
                        limits=BatchLimits(max_rows=500_000, linger_ms=500),
                        consumer_options={"max_partition_fetch_bytes": 16 * 1024 * 1024,
                                          "fetch_max_bytes": 64 * 1024 * 1024})
    stop = asyncio.Event()
    total = sum(b.point_count() for b in blocks)
    started = time.perf_counter()

    async def watch() -> float:
        while worker.stats.points < total or worker.held_rows:  # noqa: ASYNC110 - polls the worker's counters
            await asyncio.sleep(0.01)
        drained = time.perf_counter()
        stop.set()
        return drained

    watcher = asyncio.create_task(watch())
    await worker.run(stop)
    return total / (await watcher - started)


def bytes_per_point(backend: ChdbBackend, project: str) -> tuple[float, float, dict[str, float]]:
    (rows,), = backend.query("SELECT count() FROM points WHERE project = {p:String}", {"p": project})[1]
    per_column = backend.query(
        "SELECT column, sum(column_data_compressed_bytes), sum(column_data_uncompressed_bytes)"
        " FROM system.parts_columns"
        " WHERE database = currentDatabase() AND table = 'points' AND active GROUP BY column ORDER BY column")[1]
    total_rows = backend.query("SELECT count() FROM points")[1][0][0]
    compressed = sum(c for _, c, _ in per_column) / total_rows
    raw = sum(u for _, _, u in per_column) / total_rows
    del rows
    return compressed, raw, {name: c / total_rows for name, c, _ in per_column}


def table(rows: Iterator[tuple[str, str]] | list[tuple[str, str]]) -> str:
    rows = list(rows)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def fill_and_ingest(args: argparse.Namespace, sink: Sink, backend: ChdbBackend, data_dir: Path,
                    results: list[tuple[str, str]]) -> tuple[int, int]:
    points, spent = fill(sink, "bench", args.runs, args.metrics, args.steps, runs_per_write=10)
    results.append((f"fill: {points:,} points via Sink.write", f"{points / spent:,.0f} rows/s"))
    long_points, long_spent = fill(sink, "long", args.long_runs, 1, args.long_steps, runs_per_write=1)
    results.append((f"fill: {args.long_runs} runs x {args.long_steps:,} steps",
                    f"{long_points / long_spent:,.0f} rows/s"))
    for name, rate in ingest_rates(sink, "ingest", 2_000_000).items():
        results.append((f"ingest {name}", f"{rate:,.0f} rows/s"))
    if args.bootstrap:
        rate = asyncio.run(kafka_rate(args.bootstrap, data_dir, args.worker_points))
        results.append(("ingest via Kafka + SinkWorker (1 process)", f"{rate:,.0f} rows/s"))
    compressed, raw, per_column = bytes_per_point(backend, "bench")
    results.append(("bytes/point on disk (compressed / raw)", f"{compressed:.2f} / {raw:.2f}"))
    backend.command("OPTIMIZE TABLE points FINAL")
    compressed, raw, per_column = bytes_per_point(backend, "bench")
    results.append(("bytes/point after OPTIMIZE FINAL", f"{compressed:.2f} / {raw:.2f}"))
    results.append(("  per column", ", ".join(f"{k} {v:.2f}" for k, v in per_column.items() if v >= 0.01)))
    return points, long_points


def worker_only(args: argparse.Namespace) -> int:
    """Just the Kafka sink-worker figure (fresh store unless --data-dir)."""
    if not args.bootstrap:
        raise SystemExit("--worker-only needs --bootstrap HOST:PORT")
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="trackstream-bench-"))
    rate = asyncio.run(kafka_rate(args.bootstrap, data_dir, args.worker_points))
    print(table([(f"ingest via Kafka + SinkWorker (1 process, {args.worker_points:,} points)", f"{rate:,.0f} rows/s")]))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--metrics", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--long-runs", type=int, default=10)
    parser.add_argument("--long-steps", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--buckets", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="100 runs x 1,000 steps, long runs of 100,000 steps")
    parser.add_argument("--data-dir", type=Path, default=None, help="chDB store (default: a temporary directory)")
    parser.add_argument("--bootstrap", default=None, help="Kafka bootstrap: also measure the sink worker")
    parser.add_argument("--queries-only", action="store_true", help="reuse the store in --data-dir: time queries")
    parser.add_argument("--worker-only", action="store_true", help="only rows/s through Kafka + SinkWorker")
    parser.add_argument("--worker-points", type=int, default=2_000_000, help="points pre-filled for the worker")
    args = parser.parse_args(argv)
    if args.worker_only:
        return worker_only(args)
    if args.quick:
        args.runs, args.steps, args.long_steps = 100, 1000, 100_000
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="trackstream-bench-"))
    backend = ChdbBackend(data_dir, database="bench")
    sink = Sink(backend)
    service = QueryService(backend=backend)
    results: list[tuple[str, str]] = []

    if args.queries_only:
        points, long_points = backend.query("SELECT countIf(project = 'bench'), countIf(project = 'long') FROM points"
                                            )[1][0]
    else:
        points, long_points = fill_and_ingest(args, sink, backend, data_dir, results)

    runs = [f"run-{r:05d}" for r in range(0, args.runs, max(1, args.runs // 10))][:10]
    long_runs = [f"run-{r:05d}" for r in range(args.long_runs)]
    for agg in ("last", "mean"):
        p50, p95 = timed(functools.partial(service.compare, "bench", "loss", agg=agg), args.reps)
        results.append((f"compare {agg} over {args.runs} runs", f"p50 {p50:.1f} ms  p95 {p95:.1f} ms"))
    p50, p95 = timed(lambda: service.compare("bench", "loss", by=["lr", "model"]), args.reps)
    results.append((f"compare by=[lr, model] over {args.runs} runs", f"p50 {p50:.1f} ms  p95 {p95:.1f} ms"))
    p50, p95 = timed(lambda: service.curves("bench", runs, "loss", points=args.buckets), args.reps)
    results.append((f"curves {len(runs)} runs x {args.steps:,} steps, {args.buckets} buckets",
                    f"p50 {p50:.1f} ms  p95 {p95:.1f} ms"))
    p50, p95 = timed(lambda: service.curves("long", long_runs, "loss", points=args.buckets), args.reps)
    results.append((f"curves {len(long_runs)} runs x {args.long_steps:,} steps, {args.buckets} buckets",
                    f"p50 {p50:.1f} ms  p95 {p95:.1f} ms"))
    print(f"store: {data_dir} ({points + long_points:,} points)")
    print(table(results))
    backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
