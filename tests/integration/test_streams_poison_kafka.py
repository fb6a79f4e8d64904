"""Issue 11 against a real broker: no input stops the stream worker, no accepted point disappears uncounted.

Each case puts poison on ``<prefix>.metrics`` (one partition, so order is kept), then one good envelope, to a
worker started as a subprocess (``python -m trackstream.streams worker``, the default 4 MiB envelope limit). The
worker must stay up, the good envelope must land on the processed topics, every message it writes must fit in
``RECORD_BYTES_MAX``, and stored + dead-lettered points must equal the points sent. A dead letter of a whole
envelope counts the points of the message at its source offset (it carries that message's size and SHA-256); one of a
metric group, or a conflicting re-send, counts its ``count``.

A second test takes the broker away under a running worker: two WARNINGs, no ERROR line, no asyncio warning at exit.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
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

from trackstream.schemas import EntityRef, Envelope, Event, MetricBatch, encode
from trackstream.schemas.limits import RECORD_BYTES_MAX
from trackstream.schemas.processed import decode_point_block
from trackstream.schemas.topics import Topics
from trackstream.streams.records import DlqRecord, decode_dlq

pytestmark = pytest.mark.kafka
REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 180.0
KEY_ROOM = 16 * 1024  # a message's key (an entity key) and batch overhead, beside its value


@dataclass
class Sent:
    """One message put on ``<prefix>.metrics``: key, bytes, how many points it holds, where it landed."""

    key: bytes
    raw: bytes
    points: int
    offset: int = -1


@dataclass
class Collected:
    """What the worker wrote: distinct points (the sinks' identity), dead letters, the largest message per topic."""

    points: dict[tuple[Any, ...], int] = field(default_factory=dict)
    point_messages: dict[EntityRef, int] = field(default_factory=dict)
    dlq: list[DlqRecord] = field(default_factory=list)
    largest: dict[str, int] = field(default_factory=dict)

    def add(self, topics: Topics, topic: str, key: bytes | None, value: bytes) -> None:
        self.largest[topic] = max(self.largest.get(topic, 0), len(value) + len(key or b""))
        if topic == topics.points:
            block = decode_point_block(value)
            self.point_messages[block.entity] = self.point_messages.get(block.entity, 0) + 1
            for batch, generation in zip(block.metrics, block.generations, strict=True):
                for step in batch.steps:
                    self.points[(block.entity, batch.name, block.rank, step, generation)] = 1
        elif topic == topics.dlq:
            self.dlq.append(decode_dlq(value, key=key))

    def stored(self, entity: EntityRef) -> int:
        return sum(1 for ident in self.points if ident[0] == entity)


class Worker:
    """One streams worker subprocess; stopped (SIGTERM, then SIGKILL) at teardown."""

    def __init__(self, bootstrap: str, prefix: str, log_dir: Path) -> None:
        self.bootstrap, self.prefix, self.log = bootstrap, prefix, log_dir / "worker.log"
        command = [sys.executable, "-m", "trackstream.streams", "worker", "--bootstrap", bootstrap,
                   "--topic-prefix", prefix, "--app-id", f"poison-{uuid.uuid4().hex[:8]}",
                   "--data-dir", str(log_dir / "data"), "--step-timeout-ms", "600000", "--loglevel", "info"]
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(command, cwd=REPO, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
                                     env=env)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, *, timeout_s: float = 120.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        return self.proc.returncode


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[[str, str], Worker]]:
    started: list[Worker] = []

    def start(bootstrap: str, prefix: str) -> Worker:
        directory = tmp_path / f"worker{len(started)}"
        directory.mkdir()
        worker = Worker(bootstrap, prefix, directory)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop(timeout_s=30)


async def produce(bootstrap: str, topic: str, messages: list[Sent], *, compression: str | None = None) -> None:
    """Send in order (one partition) and record each message's offset."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, compression_type=compression,
                                max_request_size=128 * 1024 * 1024, request_timeout_ms=60_000)
    await producer.start()
    try:
        for message in messages:
            metadata = await (await producer.send(topic, message.raw, key=message.key))
            message.offset = metadata.offset
    finally:
        await producer.stop()


async def collect_until(bootstrap: str, topics: Topics, done: Callable[[Collected], bool], *,
                        worker: Worker | None = None, timeout_s: float = TIMEOUT_S) -> Collected:
    from aiokafka import AIOKafkaConsumer

    collected = Collected()
    consumer = AIOKafkaConsumer(*topics.processed(), topics.dlq, bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
                                fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=16 * 1024 * 1024)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not done(collected):
            if worker is not None and worker.proc.poll() is not None:
                pytest.fail(f"the worker exited ({worker.proc.returncode}):\n{worker.text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"outputs incomplete after {timeout_s}s: {len(collected.points)} points, "
                            f"{len(collected.dlq)} dead letters")
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                for record in records:
                    collected.add(topics, tp.topic, record.key, record.value)
    finally:
        await consumer.stop()
    return collected


# --- the poison ---------------------------------------------------------------------------------------------


def entity(name: str) -> EntityRef:
    return EntityRef("poison", "run", name)


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def series(name: str, points: int, offset: float = 0.0) -> MetricBatch:
    return MetricBatch(name, "series", list(range(points)), [1_733_000_000_000_000_000 + s for s in range(points)],
                       [s * 0.5 + offset for s in range(points)])


def envelope_message(envelope: Envelope) -> Sent:
    return Sent(envelope.entity.key(), encode(envelope), envelope.point_count())


def wire_message(ref: EntityRef, wire: dict[str, Any], points: int) -> Sent:
    """Bytes written by the standard library: it nests deeper than orjson can, as an attacker's client may."""
    return Sent(ref.key(), json.dumps(wire, separators=(",", ":")).encode(), points)


def base_wire(ref: EntityRef, *, seq: int = 0) -> dict[str, Any]:
    return {"v": 1, "producer_id": f"producer-{ref.id}", "seq": seq, "sent_ns": 1,
            "entity": {"project": ref.project, "type": ref.type, "id": ref.id}}


def params_nested_300() -> list[Sent]:
    ref = entity("deep-params")
    wire = base_wire(ref)
    wire["events"] = [{"type": "run_started", "time_ns": 1, "name": "deep", "params": {"a": nested(300)}, "tags": {}}]
    wire["metrics"] = [{"name": "loss", "kind": "series", "steps": [0, 1, 2], "times_ns": [1, 2, 3],
                        "values": [0.5, 0.25, 0.125]}]
    return [wire_message(ref, wire, 3)]


def bad_group_nested_300() -> list[Sent]:
    ref = entity("deep-group")
    wire = base_wire(ref)
    wire["metrics"] = [
        {"name": "no!", "kind": "series", "steps": [0, 1], "times_ns": [1, 2], "values": [1.0, 2.0],
         "colour": nested(300)},
        {"name": "kept", "kind": "series", "steps": [0, 1, 2, 3], "times_ns": [1, 2, 3, 4], "values": [1.0] * 4},
    ]
    return [wire_message(ref, wire, 6)]


def incompressible_7_5_mb() -> list[Sent]:
    return [Sent(entity("noise").key(), os.urandom(7_500_000), 0)]


def fifty_thousand_groups() -> list[Sent]:
    """A valid 3.8 MB envelope: 50,000 one-point groups (past the 1,024 groups an envelope may hold)."""
    metrics = [MetricBatch(f"m{i:05d}", "single", [0], [1], [0.5]) for i in range(50_000)]
    message = envelope_message(Envelope(producer_id="p-50k", seq=0, sent_ns=1, entity=entity("groups-50k"),
                                        metrics=metrics))
    assert 3_500_000 < len(message.raw) < 4 * 1024 * 1024
    return [message]


def million_groups() -> list[Sent]:
    """1,000,000 one-point groups: about 78 MB decoded, well under 1 MB zstd-compressed on the wire."""
    ref = entity("groups-1m")
    head = orjson.dumps(base_wire(ref))[:-1] + b',"metrics":['
    groups = b",".join(b'{"name":"m%07d","kind":"single","steps":[0],"times_ns":[1],"values":[0.5]}' % i
                       for i in range(1_000_000))
    return [Sent(ref.key(), head + groups + b"]}", 1_000_000)]


def large_valid_envelope() -> list[Sent]:
    """A valid 3.5 MB envelope (1,000 groups, 120,000 points): its point block is split over several messages."""
    message = envelope_message(Envelope(producer_id="p-large", seq=0, sent_ns=1, entity=entity("large"),
                                        metrics=[series(f"metric/{i:04d}", 120, offset=i) for i in range(1_000)]))
    assert 3_000_000 < len(message.raw) < 4 * 1024 * 1024
    return [message]


def conflicting_resend() -> list[Sent]:
    ref = entity("resend")
    first = Envelope(producer_id="p-resend", seq=0, sent_ns=1, entity=ref, metrics=[series("loss", 10)],
                     entity_seq=0, entity_offset=0,
                     events=[Event("run_started", 1, {"name": "resend", "params": {}, "tags": {}})])
    other = Envelope(producer_id="p-resend", seq=0, sent_ns=1, entity=ref, metrics=[series("loss", 12, offset=9.0)],
                     entity_seq=0, entity_offset=0)
    copy = envelope_message(first)
    copy.points = 0  # an identical re-send: a silent duplicate, it adds no point
    return [envelope_message(first), envelope_message(other), copy]


CASES: dict[str, tuple[Callable[[], list[Sent]], set[str], str | None]] = {
    "params-nested-300": (params_nested_300, {"bad_event"}, None),
    "bad-group-nested-300": (bad_group_nested_300, {"bad_metric_name"}, None),
    "incompressible-7.5MB": (incompressible_7_5_mb, {"oversize"}, None),
    "valid-3.8MB-50000-groups": (fifty_thousand_groups, {"oversize"}, None),
    "1000000-groups-zstd": (million_groups, {"oversize"}, "zstd"),
    "valid-3.5MB-split-outputs": (large_valid_envelope, set(), None),
    "conflicting-resend": (conflicting_resend, {"conflicting_resend"}, None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_poison_then_a_good_envelope(case: str, kafka_bootstrap: str, topic_prefix_factory: Callable[..., str],
                                     start_worker: Callable[[str, str], Worker]) -> None:
    make, reasons, compression = CASES[case]
    prefix = topic_prefix_factory(partitions=1)
    topics = Topics(prefix)
    good_ref = entity(f"good-{case}")
    good = envelope_message(Envelope(producer_id="p-good", seq=0, sent_ns=1, entity=good_ref,
                                     metrics=[series("loss", 50), series("accuracy", 50)]))
    poison = make()
    messages = [*poison, good]
    worker = start_worker(kafka_bootstrap, prefix)
    asyncio.run(produce(kafka_bootstrap, topics.metrics, messages, compression=compression))

    def done(got: Collected) -> bool:
        return got.stored(good_ref) == good.points and len(got.dlq) >= len(reasons)

    got = asyncio.run(collect_until(kafka_bootstrap, topics, done, worker=worker))

    assert worker.proc.poll() is None, "the worker must stay up"
    assert "Traceback" not in worker.text()
    assert sorted(r.reason for r in got.dlq) == sorted(reasons)
    assert all(size <= RECORD_BYTES_MAX + KEY_ROOM for size in got.largest.values()), got.largest
    by_offset = {m.offset: m for m in messages}
    dead_points = 0
    for record in got.dlq:
        source = by_offset[record.source.offset]
        assert record.source.topic == topics.metrics
        assert (record.raw_size, record.raw_sha256) == (len(source.raw), hashlib.sha256(source.raw).hexdigest())
        assert source.raw.startswith(record.raw)
        assert record.raw_truncated == (len(record.raw) < len(source.raw))
        envelope_level = record.metric is None and record.reason != "conflicting_resend"
        dead_points += source.points if envelope_level else record.count
    sent = sum(m.points for m in messages)
    assert len(got.points) + dead_points == sent
    if case == "valid-3.5MB-split-outputs":
        assert got.point_messages[entity("large")] > 1
        assert got.stored(entity("large")) == 120_000
    assert worker.stop() == 0


# --- a broker outage ----------------------------------------------------------------------------------------


def test_a_broker_outage_is_two_warnings_and_no_error(kafka_broker_factory: Callable[[], Any],
                                                      start_worker: Callable[[str, str], Worker]) -> None:
    broker = kafka_broker_factory()
    prefix = f"outage_{uuid.uuid4().hex[:8]}"
    topics = Topics(prefix)
    before, after = entity("before-outage"), entity("after-outage")
    worker = start_worker(broker.bootstrap, prefix)

    def landed(ref: EntityRef, points: int) -> Callable[[Collected], bool]:
        return lambda got: got.stored(ref) == points

    first = envelope_message(Envelope(producer_id="p-before", seq=0, sent_ns=1, entity=before,
                                      metrics=[series("loss", 20)]))
    asyncio.run(produce(broker.bootstrap, topics.metrics, [first]))
    asyncio.run(collect_until(broker.bootstrap, topics, landed(before, 20), worker=worker))

    broker.stop()
    wait_for(lambda: "lost Kafka at" in worker.text(), "the outage WARNING", worker)
    broker.start()
    wait_for(lambda: "is reachable again" in worker.text(), "the recovery WARNING", worker)
    second = envelope_message(Envelope(producer_id="p-after", seq=0, sent_ns=1, entity=after,
                                       metrics=[series("loss", 30)]))
    asyncio.run(produce(broker.bootstrap, topics.metrics, [second]))
    asyncio.run(collect_until(broker.bootstrap, topics, landed(after, 30), worker=worker))
    assert worker.stop() == 0

    text = worker.text()
    errors = [line for line in text.splitlines() if "] [ERROR] " in line]
    assert errors == []
    warnings = [line for line in text.splitlines() if "] [WARNING] " in line]
    assert len([w for w in warnings if "lost Kafka at" in w]) == 1
    assert len([w for w in warnings if "is reachable again" in w]) == 1
    assert "retries" in next(w for w in warnings if "is reachable again" in w)
    for noise in ("Task was destroyed", "Traceback", "Unable connect to node"):
        assert noise not in text


def wait_for(condition: Callable[[], bool], what: str, worker: Worker, *, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if worker.proc.poll() is not None:
            pytest.fail(f"the worker exited waiting for {what}:\n{worker.text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout_s}s:\n{worker.text()[-3000:]}")
        time.sleep(0.2)
