"""Producers against a real broker: every point exactly once, in order, through threads, ranks, forks and outages."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import trackstream as ts
from trackstream.producers.spool import list_spools
from trackstream.producers.sync import sync_spool
from trackstream.schemas import Envelope, decode, float_to_bits
from trackstream.schemas.topics import Topics

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]


async def _consume(bootstrap: str, topic: str, done: Callable[[list[Envelope]], bool],
                   timeout_s: float) -> list[Envelope]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    found: list[Envelope] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not done(found):
            assert time.monotonic() < deadline, f"timed out with {len(found)} envelopes"
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                found.extend(decode(r.value) for r in records)
    finally:
        await consumer.stop()
    return found


def consume(bootstrap: str, prefix: str, done: Callable[[list[Envelope]], bool],
            timeout_s: float = 90.0) -> list[Envelope]:
    return asyncio.run(_consume(bootstrap, Topics(prefix).metrics, done, timeout_s))


def finished_runs(count: int) -> Callable[[list[Envelope]], bool]:
    def done(found: list[Envelope]) -> bool:
        return sum(1 for e in found for ev in e.events if ev.type == "run_finished") >= count
    return done


def unique_per_producer(found: list[Envelope]) -> dict[str, list[Envelope]]:
    """Envelopes per producer in seq order, duplicates dropped; asserts the seqs are contiguous from 0.

    Also per (producer, entity): entity_seq contiguous from 0, entity_offset = the points sent before.
    """
    by_producer: dict[str, dict[int, Envelope]] = {}
    for envelope in found:
        by_producer.setdefault(envelope.producer_id, {}).setdefault(envelope.seq, envelope)
    ordered = {}
    for producer_id, by_seq in by_producer.items():
        assert sorted(by_seq) == list(range(len(by_seq))), f"gap in the seqs of producer {producer_id}"
        ordered[producer_id] = [by_seq[s] for s in sorted(by_seq)]
        counters: dict[str, tuple[int, int]] = {}
        for envelope in ordered[producer_id]:
            count, points = counters.get(envelope.entity.key().decode(), (0, 0))
            assert (envelope.entity_seq, envelope.entity_offset) == (count, points), f"seq {envelope.seq}"
            counters[envelope.entity.key().decode()] = (count + 1, points + envelope.point_count())
    return ordered


def replay(envelopes: list[Envelope]) -> dict[tuple[str, str], dict[int, float]]:
    """(metric, kind) -> {step: value} after overwrites; asserts no (metric, step) point arrives twice."""
    state: dict[tuple[str, str], dict[int, float]] = {}
    for envelope in envelopes:
        for event in envelope.events:
            if event.type == "overwrite":
                for kind in ("series", "single"):
                    state.pop((event.data["metric"], kind), None)
        for batch in envelope.metrics:
            points = state.setdefault((batch.name, batch.kind), {})
            if batch.kind == "single":
                points.clear()
            for step, value in zip(batch.steps, batch.values, strict=True):
                assert step not in points, f"{batch.name} step {step} delivered twice"
                points[step] = value
    return state


def bits(points: dict[int, float]) -> dict[int, int]:
    return {step: float_to_bits(value) for step, value in points.items()}


WORKER = """
import math, os, threading, trackstream as ts
N = int(os.environ["POINTS"])
rank = int(os.environ["RANK"])
run = ts.start_run("proj", "two-ranks", params={"lr": 0.1})
def work(t):
    special = [math.nan, math.inf, -math.inf, -0.0]
    for i in range(N):
        run.log_metrics({f"t{t}/loss": rank * 1000 + t + i / N, f"t{t}/special": special[i % 4]}, step=i)
        run.log_metric("shared", float(t * N + i))
    run.log_metric(f"t{t}/list", [float(i) for i in range(500)])
    run.log_metric(f"t{t}/best", 0.5, single_value=True)
    run.log_metric(f"t{t}/best", 0.75 + rank, single_value=True)
    run.log_metric(f"t{t}/redo", [9.0] * 100)
    run.flush()
    run.log_metric(f"t{t}/redo", [1.0, 2.0], overwrite=True)
threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
pid = os.fork()
if pid == 0:
    run.log_metric("child", [float(rank), 7.0])
    ts.flush(timeout_s=60)
    os._exit(0)
assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
run.finish()
"""


def expected_rank(rank: int, n: int) -> dict[tuple[str, str], dict[int, float]]:
    special = [math.nan, math.inf, -math.inf, -0.0]
    out: dict[tuple[str, str], dict[int, float]] = {}
    for t in range(4):
        out[f"t{t}/loss", "series"] = {i: rank * 1000 + t + i / n for i in range(n)}
        out[f"t{t}/special", "series"] = {i: special[i % 4] for i in range(n)}
        out[f"t{t}/list", "series"] = {i: float(i) for i in range(500)}
        out[f"t{t}/best", "single"] = {0: 0.75 + rank}
        out[f"t{t}/redo", "series"] = {0: 1.0, 1: 2.0}
    return out


def test_two_ranks_threads_and_forks_deliver_every_point_exactly_once(
    kafka_bootstrap: str, topic_prefix_factory: Callable[..., str], tmp_path: Path,
) -> None:
    prefix, n = topic_prefix_factory(), 5000
    env = {**os.environ, "PYTHONPATH": str(REPO), "TRACKSTREAM_KAFKA_BOOTSTRAP": kafka_bootstrap,
           "TRACKSTREAM_TOPIC_PREFIX": prefix, "TRACKSTREAM_RUN_ID": "job-42", "WORLD_SIZE": "2",
           "TRACKSTREAM_SPOOL_DIR": str(tmp_path), "POINTS": str(n)}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER], env={**env, "RANK": str(rank)},
                                stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    for worker in workers:
        _, stderr = worker.communicate(timeout=240)
        assert worker.returncode == 0, stderr
    found = consume(kafka_bootstrap, prefix, finished_runs(2))
    assert {(e.entity.project, e.entity.type, e.entity.id, e.world_size) for e in found} == {
        ("proj", "run", "job-42", 2)}
    producers = unique_per_producer(found)
    assert len(producers) == 4, "two ranks, each with a forked child"
    by_rank: dict[int, list[dict[tuple[str, str], dict[int, float]]]] = {0: [], 1: []}
    for envelopes in producers.values():
        ranks = {e.rank for e in envelopes}
        assert len(ranks) == 1
        by_rank[ranks.pop()].append(replay(envelopes))
    for rank, states in by_rank.items():
        parent = next(s for s in states if ("shared", "series") in s)
        child = next(s for s in states if ("child", "series") in s)
        shared = parent.pop(("shared", "series"))
        assert sorted(shared) == list(range(4 * n))
        assert sorted(shared.values()) == [float(v) for v in range(4 * n)]
        assert {k: bits(v) for k, v in parent.items()} == {k: bits(v) for k, v in expected_rank(rank, n).items()}
        assert child == {("child", "series"): {0: float(rank), 1: 7.0}}
    started = [ev for e in found for ev in e.events if ev.type == "run_started"]
    assert [ev.data["params"] for ev in started] == [{"lr": 0.1}] * 2


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


NO_BROKER = """
import trackstream as ts
run = ts.start_run("proj", "offline", run_id="offline-1")
for i in range(20000):
    run.log_metrics({"loss": i / 20000, "acc": float(i)})
run.log_metric("best", 0.9, single_value=True)
run.finish()
"""


def test_no_broker_at_start_spools_and_sync_delivers_exactly_once(
    kafka_bootstrap: str, topic_prefix_factory: Callable[..., str], tmp_path: Path,
) -> None:
    prefix = topic_prefix_factory()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TRACKSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{closed_port()}",
           "TRACKSTREAM_TOPIC_PREFIX": prefix, "TRACKSTREAM_SPOOL_DIR": str(tmp_path),
           "TRACKSTREAM_REQUEST_TIMEOUT_MS": "2000", "TRACKSTREAM_EXIT_TIMEOUT_S": "3"}
    result = subprocess.run([sys.executable, "-c", NO_BROKER], env=env, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("is unreachable; spooling to") == 1, result.stderr
    assert "Unable connect" not in result.stderr, "aiokafka's connection errors are demoted to DEBUG"
    assert [s.alive for s in list_spools(tmp_path)] == [False]
    report = sync_spool(tmp_path, kafka_bootstrap=kafka_bootstrap, topic_prefix=prefix)
    assert report.producers == 1
    assert report.envelopes > 1
    assert list_spools(tmp_path) == [], "a fully synced spool is removed"
    assert sync_spool(tmp_path, kafka_bootstrap=kafka_bootstrap, topic_prefix=prefix).envelopes == 0
    found = consume(kafka_bootstrap, prefix, finished_runs(1))
    [envelopes] = unique_per_producer(found).values()
    assert len(found) == len(envelopes), "sync sent every envelope once"
    state = replay(envelopes)
    assert state["loss", "series"] == {i: i / 20000 for i in range(20000)}
    assert state["acc", "series"] == {i: float(i) for i in range(20000)}
    assert state["best", "single"] == {0: 0.9}


def log_block(run: ts.Run, start: int, count: int) -> None:
    for i in range(start, start + count):
        run.log_metrics({"loss": float(i), "lr": 1.0 / (i + 1)})


def test_broker_stopped_mid_run_and_restarted_loses_nothing(
    kafka_broker_factory: Callable[[], Any], tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trackstream.producers")
    broker = kafka_broker_factory()
    run = ts.start_run("proj", "outage", run_id="outage-1", kafka_bootstrap=broker.bootstrap,
                       topic_prefix="outage", spool_dir=str(tmp_path), request_timeout_ms=3000,
                       retry_backoff_ms=200)
    log_block(run, 0, 10_000)
    run.flush(timeout_s=60)
    broker.stop()
    log_block(run, 10_000, 10_000)
    run.flush(timeout_s=60)
    assert list_spools(tmp_path), "batches Kafka could not take went to the spool"
    log_block(run, 20_000, 5_000)
    broker.start()
    log_block(run, 25_000, 10_000)
    run.finish(timeout_s=60)

    def complete(found: list[Envelope]) -> bool:
        seqs = {e.seq for e in found}
        return finished_runs(1)(found) and len(seqs) == max(seqs) + 1

    found = consume(broker.bootstrap, "outage", complete, timeout_s=120)
    said = [r.getMessage() for r in caplog.records if r.name.startswith("trackstream.producers")
            and r.levelno >= logging.WARNING]
    down = sum("is unreachable; spooling" in m for m in said)
    assert down >= 1
    assert down == sum("is reachable again" in m for m in said), "every outage said once, and its end"
    noisy = [r for r in caplog.records if r.name.startswith("aiokafka") and r.levelno >= logging.WARNING
             and r.threadName == "trackstream-flusher"]
    assert noisy == [], "aiokafka records of the flusher thread are demoted to DEBUG"
    [envelopes] = unique_per_producer(found).values()
    state = replay(envelopes)
    assert state["loss", "series"] == {i: float(i) for i in range(35_000)}
    assert state["lr", "series"] == {i: 1.0 / (i + 1) for i in range(35_000)}


TERMINATED = """
import trackstream as ts
run = ts.start_run("proj", "terminated", run_id="sigterm-1")
i = 0
while True:
    run.log_metrics({"loss": float(i), "lr": 1.0 / (i + 1)})
    i += 1
    if i == 50_000:
        print("ready", flush=True)
"""


def test_sigterm_delivers_everything_to_kafka_and_the_run_ends_killed(
    kafka_bootstrap: str, topic_prefix_factory: Callable[..., str], tmp_path: Path,
) -> None:
    prefix = topic_prefix_factory()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TRACKSTREAM_KAFKA_BOOTSTRAP": kafka_bootstrap,
           "TRACKSTREAM_TOPIC_PREFIX": prefix, "TRACKSTREAM_SPOOL_DIR": str(tmp_path)}
    process = subprocess.Popen([sys.executable, "-c", TERMINATED], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM), stderr
    found = consume(kafka_bootstrap, prefix, finished_runs(1))
    [envelopes] = unique_per_producer(found).values()
    assert [ev.data for e in envelopes for ev in e.events if ev.type == "run_finished"] == [{"status": "killed"}]
    state = replay(envelopes)
    count = len(state["loss", "series"])
    assert count >= 50_000
    assert state["loss", "series"] == {i: float(i) for i in range(count)}
    assert state["lr", "series"] == {i: 1.0 / (i + 1) for i in range(count)}
    assert list_spools(tmp_path) == [], "Kafka acknowledged everything before the process died"


EXIT_AFTER_OUTAGE = """
import pathlib, sys, time
import trackstream as ts
bootstrap, spool, ready, go = sys.argv[1:5]
run = ts.start_run("proj", run_id="exit-outage", kafka_bootstrap=bootstrap, topic_prefix="exitoutage",
                   spool_dir=spool, request_timeout_ms=2000)
for i in range(1000):
    run.log_metric("x", float(i))
run.flush(timeout_s=60)
pathlib.Path(ready).touch()
deadline = time.monotonic() + 120
while not pathlib.Path(go).exists() and time.monotonic() < deadline:
    time.sleep(0.01)
for i in range(1000):
    run.log_metric("x", float(i))
run.flush(timeout_s=60)  # Kafka is away: the batch goes to the spool
"""


@pytest.mark.kafka
def test_exit_after_an_outage_leaves_no_asyncio_warning(kafka_broker_factory: Callable[[], Any],
                                                        tmp_path: Path) -> None:
    broker = kafka_broker_factory()
    ready, go = tmp_path / "ready", tmp_path / "go"
    child = subprocess.Popen([sys.executable, "-c", EXIT_AFTER_OUTAGE, broker.bootstrap, str(tmp_path / "spool"),
                              str(ready), str(go)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert child.poll() is None, child.stderr.read() if child.stderr else ""
            assert time.monotonic() < deadline, "the child did not log"
            time.sleep(0.02)
        broker.stop()
        go.touch()
        _, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
    assert child.returncode == 0, stderr
    assert "is unreachable; spooling" in stderr  # the one outage warning
    assert "Task was destroyed" not in stderr
    assert "Traceback" not in stderr
