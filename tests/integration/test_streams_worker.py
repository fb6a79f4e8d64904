"""Streams worker on a real broker: raw envelopes in, processed topics out, across bad input, SIGKILL, rebalance.

The worker runs as a subprocess (``python -m streams worker``) so that a test can SIGKILL it. Expected outputs
come from the same pure :class:`~trackstream.streams.Processor` fed the same envelopes in one process: "same result
as one
worker, no crash". Points are compared after the sinks' dedup key (entity, metric, rank, step, generation);
a duplicated point must be bit-identical and carry the same producer incarnation (the write order the sink versions
it by). Entity states are compared at their highest version, which must equal the reference's.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from trackstream.schemas import EntityRef, Envelope, MetricBatch, encode, envelope_to_wire, float_to_bits
from trackstream.schemas.processed import (
    decode_entity_states,
    decode_point_block,
    decode_step_aggregates,
    encode_records,
)
from trackstream.schemas.topics import Topics
from trackstream.streams import Output, Processor, SourcePosition, output_messages
from trackstream.streams.records import decode_dlq
from trackstream.streams.synthetic import RunSpec, run_envelopes

pytestmark = pytest.mark.kafka
REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120.0
MAX_ENVELOPE_BYTES = 200_000  # the workers run with this limit, so "oversize" fits in a Kafka message


# --- harness ----------------------------------------------------------------------------------------------


@dataclass
class Collected:
    """Everything read from the processed topics, keyed the way sinks dedup it."""

    points: dict[tuple[Any, ...], tuple[int, int]] = field(default_factory=dict)  # value bits, incarnation
    point_copies: int = 0
    conflicts: list[tuple[Any, ...]] = field(default_factory=list)
    steps: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    entities: dict[EntityRef, Any] = field(default_factory=dict)
    dlq: list[Any] = field(default_factory=list)

    def add(self, topic: str, topics: Topics, key: bytes | None, value: bytes) -> None:
        if topic == topics.points:
            block = decode_point_block(value)
            for batch, generation in zip(block.metrics, block.generations, strict=True):
                for step, value_ in zip(batch.steps, batch.values, strict=True):
                    ident = (block.entity, batch.name, block.rank, step, generation)
                    self.point_copies += 1
                    copy = (float_to_bits(value_), block.incarnation)
                    previous = self.points.setdefault(ident, copy)
                    if previous != copy:
                        self.conflicts.append(ident)
        elif topic == topics.steps:
            for agg in decode_step_aggregates(value):
                ident = (agg.entity, agg.metric, agg.generation, agg.step)
                if ident not in self.steps or agg.count >= self.steps[ident].count:
                    self.steps[ident] = agg
        elif topic == topics.entities:
            for state in decode_entity_states(value):
                if state.entity not in self.entities or state.version >= self.entities[state.entity].version:
                    self.entities[state.entity] = state
        else:
            self.dlq.append(decode_dlq(value, key=key))


def reference(messages: list[tuple[bytes | None, bytes]]) -> Collected:
    """What one uninterrupted worker must produce: the pure processor over the same messages, in order."""
    collected, topics = Collected(), Topics("ref")
    processor = Processor(step_timeout_ms=600_000, max_envelope_bytes=MAX_ENVELOPE_BYTES)
    out = Output()
    for offset, (key, raw) in enumerate(messages):
        out.extend(processor.process(raw, source=SourcePosition("ref", 0, offset), key=key))
    for message in output_messages(out, topics):
        collected.add(message.topic, topics, message.key, message.value)
    return collected


class Workers:
    """Streams worker subprocesses of one test; all are killed at teardown."""

    def __init__(self, bootstrap: str, prefix: str, log_dir: Path) -> None:
        self.bootstrap, self.prefix, self.log_dir = bootstrap, prefix, log_dir
        self.app_id = f"streams-test-{uuid.uuid4().hex[:8]}"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"worker{len(self.procs)}.log").open("wb")
        command = [sys.executable, "-m", "trackstream.streams", "worker", "--bootstrap", self.bootstrap,
                   "--topic-prefix", self.prefix, "--app-id", self.app_id,
                   "--data-dir", str(self.log_dir / f"data{len(self.procs)}"),
                   "--step-timeout-ms", "600000", "--max-envelope-bytes", str(MAX_ENVELOPE_BYTES),
                   "--loglevel", "info"]
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


@pytest.fixture
def workers_factory(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Callable[[str], Workers]]:
    created: list[Workers] = []

    def make(prefix: str) -> Workers:
        workers = Workers(kafka_bootstrap, prefix, tmp_path)
        created.append(workers)
        return workers

    yield make
    for workers in created:
        workers.stop_all()


async def produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]], *,
                  per_second: float = 0.0) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True,
                                max_request_size=8 * 1024 * 1024)
    await producer.start()
    try:
        for index, (key, value) in enumerate(messages):
            await producer.send(topic, value, key=key)
            if per_second and index % 10 == 9:
                await producer.flush()
                await asyncio.sleep(10 / per_second)
        await producer.flush()
    finally:
        await producer.stop()


async def collect_until(bootstrap: str, topics: Topics, done: Callable[[Collected], bool], *,
                        collected: Collected | None = None, timeout_s: float = TIMEOUT_S) -> Collected:
    """Read every processed topic from the start until ``done(collected)`` holds (or fail on timeout)."""
    from aiokafka import AIOKafkaConsumer

    collected = Collected() if collected is None else collected
    names = [topics.points, topics.steps, topics.entities, topics.dlq]
    consumer = AIOKafkaConsumer(*names, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None, fetch_max_bytes=64 * 1024 * 1024)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not done(collected):
            if time.monotonic() > deadline:
                pytest.fail(f"outputs incomplete after {timeout_s}s: {len(collected.points)} points, "
                            f"{len(collected.steps)} step aggregates, {len(collected.entities)} entities")
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                for record in records:
                    collected.add(tp.topic, topics, record.key, record.value)
    finally:
        await consumer.stop()
    return collected


def messages_of(envelopes: list[Envelope]) -> list[tuple[bytes | None, bytes]]:
    return [(e.entity.key(), encode(e)) for e in envelopes]


def complete(expected: Collected) -> Callable[[Collected], bool]:
    def check(got: Collected) -> bool:
        return (len(got.points) >= len(expected.points) and len(got.steps) >= len(expected.steps)
                and all(got.entities.get(e) is not None and got.entities[e].version >= s.version
                        for e, s in expected.entities.items()))
    return check


def canonical(records: dict[Any, Any]) -> dict[Any, bytes]:
    """Records as their wire bytes: exact, and NaN equals NaN."""
    return {key: encode_records([record]) for key, record in records.items()}


def assert_same(got: Collected, expected: Collected) -> None:
    assert got.conflicts == []
    assert got.points == expected.points
    assert canonical(got.steps) == canonical(expected.steps)
    assert canonical(got.entities) == canonical(expected.entities)


def workload(tag: str, runs: int, *, steps: int, steps_per_envelope: int) -> list[Envelope]:
    """Several runs (world size 1 and 2) interleaved as they would be produced concurrently."""
    per_run = [list(run_envelopes(RunSpec(project="it", run_id=f"{tag}-{i}", world_size=1 + i % 2, steps=steps,
                                          steps_per_envelope=steps_per_envelope, seed=i, nan_every=13),
                                  params={"lr": 0.001 * (i + 1), "seed": i}))
               for i in range(runs)]
    mixed: list[Envelope] = []
    while any(per_run):
        for queue in per_run:
            if queue:
                mixed.append(queue.pop(0))
    return mixed


# --- one worker, all output kinds, every bad-input class ------------------------------------------------

BAD_INPUTS: dict[str, bytes] = {}


def _bad(reason: str, change: Callable[[dict[str, Any]], None] | None = None, raw: bytes | None = None) -> None:
    if raw is None:
        wire = envelope_to_wire(next(run_envelopes(RunSpec(project="it", run_id=f"bad-{reason}", steps=2))))
        assert change is not None
        change(wire)
        raw = orjson.dumps(wire)
    BAD_INPUTS[reason] = raw


_bad("malformed", raw=b"\x00garbage")
_bad("unsupported_version", lambda w: w.update(v=99))
_bad("missing_field", lambda w: w.pop("seq"))
_bad("mistyped_field", lambda w: w.update(sent_ns="yesterday"))
_bad("bad_entity", lambda w: w["entity"].update(project=""))
_bad("bad_event", lambda w: w.update(events=[{"type": "overwrite", "time_ns": 0, "metric": "no*good"}]))
_bad("bad_metric_name", lambda w: w["metrics"][0].update(name="x" * 300))
_bad("non_numeric_value", lambda w: w["metrics"][0].update(values=["1.0", 2.0]))
_bad("length_mismatch", lambda w: w["metrics"][0].update(times_ns=[1]))
_bad("bad_nonfinite", lambda w: w["metrics"][0].update(values=[None, 1.0], nonfinite=[[0, 4607182418800017408]]))
_bad("oversize", raw=b'{"v":1,"pad":"' + b"x" * MAX_ENVELOPE_BYTES + b'"}')
PARTIAL = {"bad_metric_name", "non_numeric_value", "length_mismatch", "bad_nonfinite"}


@pytest.fixture(scope="module")
def pipeline(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One worker fed four runs, one envelope per bad-input class, then run e2e-1 re-sent entirely."""
    prefix = f"ts_streams_{uuid.uuid4().hex[:8]}"
    topics = Topics(prefix)
    envelopes = workload("e2e", 4, steps=400, steps_per_envelope=100)
    resent = [e for e in envelopes if e.entity.id == "e2e-1"]
    bad = [(f"bad-{reason}".encode(), raw) for reason, raw in BAD_INPUTS.items()]
    # Same entity (so same partition) as the re-sent run, produced last: once its point is out, so is the rest.
    marker = Envelope(producer_id="marker", seq=0, sent_ns=0, entity=resent[0].entity, world_size=2,
                      metrics=[MetricBatch("marker", "single", [0], [0], [1.0])])
    messages = messages_of(envelopes) + bad + messages_of(resent) + messages_of([marker])
    expected = reference(messages)
    workers = Workers(kafka_bootstrap, prefix, tmp_path_factory.mktemp("streams-e2e"))
    try:
        workers.start()
        asyncio.run(produce(kafka_bootstrap, topics.metrics, messages))

        def done(got: Collected) -> bool:
            return (complete(expected)(got) and len(got.dlq) >= len(expected.dlq)
                    and any(ident[1] == "marker" for ident in got.points))

        got = asyncio.run(collect_until(kafka_bootstrap, topics, done))
        yield {"got": got, "expected": expected, "envelopes": envelopes}
    finally:
        workers.stop_all()


def test_outputs_equal_the_reference_and_resent_seqs_add_nothing(pipeline: dict[str, Any]) -> None:
    got, expected = pipeline["got"], pipeline["expected"]
    assert_same(got, expected)
    assert got.point_copies == len(got.points)  # the re-sent envelopes produced no copies at all
    assert len(got.points) > sum(e.point_count() for e in pipeline["envelopes"])
    assert sorted(r.reason for r in got.dlq) == sorted(r.reason for r in expected.dlq)
    # the marker's producer came third to run e2e-1 (after its two ranks): its writes order after theirs
    assert {copy[1] for ident, copy in got.points.items() if ident[1] == "marker"} == {2}


def test_cross_rank_means_exact(pipeline: dict[str, Any]) -> None:
    got, envelopes = pipeline["got"], pipeline["envelopes"]
    two_rank = [e for e in envelopes if e.world_size == 2]
    assert {k[0].id for k in got.steps} == {"e2e-1", "e2e-3"}
    assert len(got.steps) == 2 * 400 * 4
    for (entity, metric, _generation, step), agg in got.steps.items():
        values = [v for e in two_rank if e.entity == entity for b in e.metrics if b.name == metric
                  for s, v in zip(b.steps, b.values, strict=True) if s == step]
        assert agg.count == 2 == len(values)
        assert float_to_bits(agg.mean) == float_to_bits(math.fsum(values) / 2)


def test_lifecycle(pipeline: dict[str, Any]) -> None:
    got = pipeline["got"]
    state = got.entities[EntityRef("it", "run", "e2e-2")]
    assert (state.status, state.name, state.params) == ("completed", "e2e-2", {"lr": 0.003, "seed": 2})
    assert (state.started_ns, state.ended_ns) == (1_000_000_000, 1_000_000_000 + 400 * 1_000_000)
    two = got.entities[EntityRef("it", "run", "e2e-3")]
    assert sorted((p["rank"], p["host"]) for p in two.producers) == [(0, "host0"), (1, "host1")]


@pytest.mark.parametrize("reason", sorted(BAD_INPUTS))
def test_bad_input_goes_to_dlq_with_reason(pipeline: dict[str, Any], reason: str) -> None:
    records = [r for r in pipeline["got"].dlq if r.raw == BAD_INPUTS[reason]]
    assert [r.reason for r in records] == [reason]
    record = records[0]
    assert record.source.topic.endswith(".metrics")
    assert record.source.offset >= 0
    if reason in PARTIAL:
        assert record.metric is not None
        assert record.count >= 1
        entity = EntityRef("it", "run", f"bad-{reason}")
        assert any(k[0] == entity for k in pipeline["got"].points)  # the envelope's other metrics were kept


# --- crash and rebalance ---------------------------------------------------------------------------------


def test_sigkill_mid_stream_then_restart_every_point_once(
        kafka_bootstrap: str, topic_prefix_factory: Callable[..., str],
        workers_factory: Callable[[str], Workers]) -> None:
    prefix = topic_prefix_factory(partitions=3)
    topics, workers = Topics(prefix), workers_factory(prefix)
    envelopes = workload("kill", 6, steps=1200, steps_per_envelope=20)
    expected = reference(messages_of(envelopes))

    messages = messages_of(envelopes)
    half = len(messages) // 2

    async def scenario() -> Collected:
        first = workers.start()
        sending = asyncio.create_task(produce(kafka_bootstrap, topics.metrics, messages[:half], per_second=60))
        # Late enough for a few offset commits and checkpoints (every second), early enough to be mid-stream.
        partial = await collect_until(kafka_bootstrap, topics,
                                      lambda got: len(got.points) > len(expected.points) * 3 // 10)
        first.send_signal(signal.SIGKILL)  # mid-stream: outputs sent, offsets and state partly not yet
        first.wait(timeout=30)
        assert len(partial.points) < len(expected.points) // 2
        await sending
        workers.start()
        await produce(kafka_bootstrap, topics.metrics, messages[half:])
        return await collect_until(kafka_bootstrap, topics, complete(expected))

    got = asyncio.run(scenario())
    assert_same(got, expected)
    assert "state restored from the checkpoint topic" in (workers.log_dir / "worker1.log").read_text()


def test_two_workers_with_rebalance_same_result_as_one(
        kafka_bootstrap: str, topic_prefix_factory: Callable[..., str],
        workers_factory: Callable[[str], Workers]) -> None:
    prefix = topic_prefix_factory(partitions=3)
    topics, workers = Topics(prefix), workers_factory(prefix)
    envelopes = workload("rebal", 6, steps=1200, steps_per_envelope=20)
    expected = reference(messages_of(envelopes))

    messages = messages_of(envelopes)
    third = len(messages) // 3

    async def scenario() -> Collected:
        # Input keeps flowing in three phases: one worker, two workers after the rebalance, then the
        # second alone after the first left. Phases wait on the workers' logs, not on the clock.
        first = workers.start()
        await produce(kafka_bootstrap, topics.metrics, messages[:third], per_second=40)
        await collect_until(kafka_bootstrap, topics, lambda got: len(got.points) > len(expected.points) // 10)
        workers.start()  # joins the group: the partitions are split between the two
        await wait_for_log(workers.log_dir / "worker1.log", "state restored from the checkpoint topic")
        # The first worker reloads what it kept after the rebalance (it never restores before one).
        await wait_for_log(workers.log_dir / "worker0.log", "state restored from the checkpoint topic")
        await produce(kafka_bootstrap, topics.metrics, messages[third:2 * third], per_second=40)
        first.send_signal(signal.SIGTERM)  # leaves the group: the second worker takes everything
        await produce(kafka_bootstrap, topics.metrics, messages[2 * third:], per_second=40)
        return await collect_until(kafka_bootstrap, topics, complete(expected))

    got = asyncio.run(scenario())
    assert_same(got, expected)


def logged(path: Path, text: str) -> int:
    return path.read_text(errors="replace").count(text) if path.exists() else 0


async def wait_for_log(path: Path, text: str, *, count: int = 1, timeout_s: float = TIMEOUT_S) -> None:
    """Poll a worker's log until ``text`` occurs ``count`` times."""
    deadline = time.monotonic() + timeout_s
    while logged(path, text) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"{path.name}: {text!r} not logged {count} times within {timeout_s}s")
        await asyncio.sleep(0.2)
