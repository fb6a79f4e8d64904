"""Streams worker benchmark: points/s per worker process and added latency, on a real broker.

    .venv/bin/python bench/streams.py [--bootstrap host:port] [--points 2000000] [--steps-per-envelope 1000]

1. Throughput: pre-fill ``<prefix>.metrics`` with batched envelopes, start one worker process, and time
   the points topic from its first to its last message (broker timestamps: worker start-up is excluded).
2. Latency: a fresh topic family, the worker running, envelopes produced in real time at half the measured
   rate; added latency = time the point block is read from ``<prefix>.points`` minus time its envelope
   was produced (p50/p99 ms), and ("out") its broker timestamp, i.e. when the worker produced it.
3. The pure processor alone (no Kafka) on the same envelopes, with its output encoding and state snapshots,
   in a process whose garbage collector is tuned like the worker's (:func:`trackstream.streams.tune_gc`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402

from trackstream.schemas import encode  # noqa: E402
from trackstream.schemas.processed import decode_point_block  # noqa: E402
from trackstream.schemas.topics import Topics  # noqa: E402
from trackstream.streams import Processor, SourcePosition, output_messages, tune_gc  # noqa: E402
from trackstream.streams.synthetic import RunSpec, run_envelopes  # noqa: E402

SUFFIXES = ("metrics", "metrics.dlq", "points", "steps", "entities")


def envelopes_for(points: int, steps_per_envelope: int, world_size: int, runs: int) -> list[tuple[bytes, bytes]]:
    metrics = ("loss", "accuracy", "lr", "grad_norm")
    steps = max(points // (len(metrics) * world_size * runs), steps_per_envelope)
    messages = []
    for run in range(runs):
        spec = RunSpec(project="bench", run_id=f"run-{run}-{uuid.uuid4().hex[:6]}", world_size=world_size,
                       metrics=metrics, steps=steps, steps_per_envelope=steps_per_envelope, seed=run)
        messages += [(e.entity.key(), encode(e)) for e in run_envelopes(spec)]
    return messages


async def create_topics(bootstrap: str, prefix: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"{prefix}.{s}", partitions, 1) for s in SUFFIXES])
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]], *,
                  points_per_s: float = 0.0, points_each: int = 0) -> dict[int, float]:
    """Send messages (paced when ``points_per_s``); returns produce wall time per message index."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=16 * 1024 * 1024,
                                max_batch_size=1024 * 1024)
    await producer.start()
    sent: dict[int, float] = {}
    try:
        start = time.monotonic()
        for index, (key, value) in enumerate(messages):
            if points_per_s:
                due = start + index * points_each / points_per_s
                if due > time.monotonic():
                    await asyncio.sleep(due - time.monotonic())
            sent[index] = time.time()
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def read_points(bootstrap: str, topic: str, expected_points: int, timeout_s: float,
                      ) -> list[tuple[float, int, int, str, int]]:
    """(read wall time, broker timestamp ms, points, producer_id, seq) per point block until all arrived."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None,
                                fetch_max_wait_ms=5, fetch_max_bytes=64 * 1024 * 1024,
                                max_partition_fetch_bytes=64 * 1024 * 1024)
    await consumer.start()
    rows: list[tuple[float, int, int, str, int]] = []
    total = 0
    deadline = time.monotonic() + timeout_s
    try:
        while total < expected_points and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            now = time.time()
            for records in batches.values():
                for record in records:
                    block = decode_point_block(record.value)
                    rows.append((now, record.timestamp, block.point_count(), block.producer_id, block.seq))
                    total += block.point_count()
    finally:
        await consumer.stop()
    if total < expected_points:
        raise SystemExit(f"only {total} of {expected_points} points arrived within {timeout_s}s")
    return rows


def start_worker(bootstrap: str, prefix: str, data_dir: str, extra: list[str]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "trackstream.streams", "worker", "--bootstrap", bootstrap,
               "--topic-prefix", prefix,
               "--app-id", f"bench-{prefix}", "--data-dir", data_dir, "--loglevel", "warning", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def throughput(args: argparse.Namespace, messages: list[tuple[bytes, bytes]], points: int) -> float:
    prefix = f"bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(create_topics(args.bootstrap, prefix, args.partitions))
    asyncio.run(produce(args.bootstrap, f"{prefix}.metrics", messages))
    with tempfile.TemporaryDirectory() as data_dir:
        worker = start_worker(args.bootstrap, prefix, data_dir, args.worker_args)
        try:
            rows = asyncio.run(read_points(args.bootstrap, f"{prefix}.points", points, args.timeout_s))
        finally:
            worker.terminate()
            worker.wait(timeout=60)
    stamps = sorted(row[1] for row in rows)
    first_block = min(rows, key=lambda row: row[1])[2]
    seconds = max((stamps[-1] - stamps[0]) / 1000, 1e-3)
    return (points - first_block) / seconds


def latency(args: argparse.Namespace, messages: list[tuple[bytes, bytes]], points: int,
            points_per_s: float) -> tuple[list[float], list[float]]:
    prefix = f"bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(create_topics(args.bootstrap, prefix, args.partitions))
    points_each = points // len(messages)

    async def scenario() -> tuple[dict[int, float], list[tuple[float, int, int, str, int]]]:
        reading = asyncio.create_task(read_points(args.bootstrap, f"{prefix}.points", points, args.timeout_s))
        await asyncio.sleep(3)  # the worker and the reader are up before the clock starts
        sent = await produce(args.bootstrap, f"{prefix}.metrics", messages, points_per_s=points_per_s,
                             points_each=points_each)
        return sent, await reading

    with tempfile.TemporaryDirectory() as data_dir:
        worker = start_worker(args.bootstrap, prefix, data_dir, args.worker_args)
        try:
            time.sleep(5)
            sent, rows = asyncio.run(scenario())
        finally:
            worker.terminate()
            worker.wait(timeout=60)
    index_of = {}
    from trackstream.schemas.validation import validate

    for index, (_key, raw) in enumerate(messages):
        envelope = validate(raw).envelope
        index_of[(envelope.producer_id, envelope.seq)] = index
    by_read = sorted((read - sent[index_of[(pid, seq)]]) * 1000 for read, _ts, _n, pid, seq in rows)
    by_stamp = sorted(ts - sent[index_of[(pid, seq)]] * 1000 for _read, ts, _n, pid, seq in rows)
    return by_read, by_stamp


def pure(messages: list[tuple[bytes, bytes]], points: int) -> float:
    """Processor alone, flushing like a worker under load: messages and dirty state after every envelope."""
    processor = Processor()
    topics = Topics("bench")
    start = time.perf_counter()
    for offset, (key, raw) in enumerate(messages):
        output_messages(processor.process(raw, source=SourcePosition("bench", 0, offset), key=key), topics)
        processor.take_dirty()
    return points / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default=os.environ.get("TRACKSTREAM_KAFKA_BOOTSTRAP"))
    parser.add_argument("--points", type=int, default=2_000_000)
    parser.add_argument("--steps-per-envelope", type=int, default=1000)
    parser.add_argument("--world-size", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--timeout-s", type=float, default=300.0)
    parser.add_argument("--worker-args", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args()
    tune_gc()
    if not args.bootstrap:
        raise SystemExit("--bootstrap or TRACKSTREAM_KAFKA_BOOTSTRAP is required (make kafka-up starts one)")
    header = (f"{'world size':>10} {'pts/env':>8} {'points':>10} {'pure pts/s':>12} {'worker pts/s':>13} "
              f"{'@ pts/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'p50 out':>8} {'p99 out':>8}")
    lines = [header, "-" * len(header)]
    for world_size in args.world_size:
        messages = envelopes_for(args.points, args.steps_per_envelope, world_size, args.runs)
        points = sum(len(orjson_points(raw)) for _key, raw in messages)
        pure_rate = pure(messages, points)
        rate = throughput(args, messages, points)
        read, stamped = latency(args, messages, points, rate / 2)
        lines.append(f"{world_size:>10} {points // len(messages):>8} {points:>10,} {pure_rate:>12,.0f} "
                     f"{rate:>13,.0f} {rate / 2:>10,.0f} {pct(read, 50):>8.1f} {pct(read, 99):>8.1f} "
                     f"{pct(stamped, 50):>8.1f} {pct(stamped, 99):>8.1f}")
        print("\n".join(lines[-1:]), flush=True)
    print("\n".join(lines))


def pct(values: list[float], q: int) -> float:
    """The q-th percentile of sorted values."""
    return values[min(len(values) - 1, len(values) * q // 100)] if q != 50 else statistics.median(values)


def orjson_points(raw: bytes) -> list[int]:
    from trackstream.schemas.validation import validate

    envelope = validate(raw).envelope
    return [0] * envelope.point_count()


if __name__ == "__main__":
    main()
