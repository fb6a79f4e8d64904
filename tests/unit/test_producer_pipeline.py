"""The delivery state machine with a scripted Kafka: outages, overflow, spool drain order, durability."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from trackstream.producers import pipeline as pipeline_module
from trackstream.producers.buffer import Drained
from trackstream.producers.config import ProducerConfig
from trackstream.producers.kafka import TransportError
from trackstream.producers.pipeline import Pipeline
from trackstream.producers.spool import SpoolReader
from trackstream.schemas import EntityRef, decode
from trackstream.schemas.settings import KafkaSettings

ENTITIES = [EntityRef("p", "run", f"r{i}") for i in range(3)]


class ScriptedKafka:
    """Accepts or refuses sends; ``gate`` (when set) holds every send until released."""

    instances: list[ScriptedKafka] = []

    def __init__(self, config: ProducerConfig) -> None:
        self.up = True
        self.delivered: list[tuple[bytes, int]] = []
        self.payloads: list[bytes] = []
        self.gate: asyncio.Event | None = None
        self.before_send: Any = None
        ScriptedKafka.instances.append(self)

    async def send(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        if self.before_send is not None:
            self.before_send(items)
        if self.gate is not None:
            await self.gate.wait()
        if not self.up:
            raise TransportError("scripted outage")
        self.delivered.extend((key, decode(payload).seq) for key, payload in items)
        self.payloads.extend(payload for _, payload in items)

    async def close(self) -> None:
        return None


@pytest.fixture
def kafka(monkeypatch: pytest.MonkeyPatch) -> type[ScriptedKafka]:
    ScriptedKafka.instances = []
    monkeypatch.setattr(pipeline_module, "KafkaTransport", ScriptedKafka)
    return ScriptedKafka


def config(tmp_path: Path, **changes: Any) -> ProducerConfig:
    values: dict[str, Any] = {"kafka": KafkaSettings(bootstrap="scripted:9092"), "spool_dir": str(tmp_path),
                              "retry_backoff_ms": 10, "max_envelope_points": 10}
    values.update(changes)
    return ProducerConfig(**values)


def submit(pipe: Pipeline, rounds: int, points: int = 25) -> None:
    for r in range(rounds):
        for entity in ENTITIES:
            drained = Drained()
            drained.series["m"] = (list(range(points)), [r] * points, [float(r)] * points)
            pipe.submit(pipe.build(entity, 0, 1, drained))


async def eventually(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def assert_entity_counters(payloads: list[bytes]) -> None:
    """After dropping duplicates: per entity, entity_seq is 0, 1, ... and entity_offset the points before."""
    unique = {decode(p).seq: decode(p) for p in payloads}
    tracks: dict[EntityRef, tuple[int, int]] = {}
    for seq in sorted(unique):
        envelope = unique[seq]
        count, points = tracks.get(envelope.entity, (0, 0))
        assert (envelope.entity_seq, envelope.entity_offset) == (count, points), f"seq {seq}"
        tracks[envelope.entity] = (count + 1, points + envelope.point_count())
    assert set(tracks) == set(ENTITIES)


def assert_complete_and_ordered(pipe: Pipeline, delivered: list[tuple[bytes, int]]) -> None:
    """Every seq delivered at least once, and per entity no seq first seen after a higher one."""
    assert {seq for _, seq in delivered} == set(range(pipe.seqs.next))
    seen: set[int] = set()
    highest: dict[bytes, int] = {}
    for key, seq in delivered:
        if seq in seen:
            continue
        seen.add(seq)
        assert seq > highest.get(key, -1), f"seq {seq} of {key!r} arrived after {highest[key]}"
        highest[key] = seq


def test_direct_mode_delivers_in_order_without_touching_the_spool(tmp_path: Path, kafka: Any) -> None:
    async def scenario() -> None:
        pipe = Pipeline(config(tmp_path))
        submit(pipe, 4)
        await asyncio.wait_for(pipe.wait_settled(), 10)
        assert_complete_and_ordered(pipe, kafka.instances[0].delivered)
        assert_entity_counters(kafka.instances[0].payloads)
        assert not pipe.spooled
        assert pipe.spool is None
        await pipe.close()

    asyncio.run(scenario())
    assert list(tmp_path.iterdir()) == []


def test_kafka_down_at_start_spools_then_drains_in_order_and_goes_direct(tmp_path: Path, kafka: Any) -> None:
    async def scenario() -> None:
        pipe = Pipeline(config(tmp_path))
        fake = kafka.instances[0]
        fake.up = False
        submit(pipe, 3)
        await asyncio.wait_for(pipe.wait_settled(), 10)
        await eventually(lambda: pipe.spooled)
        submit(pipe, 2)
        await asyncio.wait_for(pipe.wait_settled(), 10)
        assert fake.delivered == []
        frames = list(SpoolReader(pipe.spool_path).frames())
        assert [decode(p).seq for _, _, p in frames] == list(range(pipe.seqs.next))
        acknowledged = asyncio.ensure_future(pipe.wait_settled(acknowledged=True))
        await asyncio.sleep(0.05)
        assert not acknowledged.done(), "spooled is not acknowledged"
        fake.up = True
        await asyncio.wait_for(acknowledged, 10)
        await eventually(lambda: not pipe.spooled)
        submit(pipe, 2)
        await asyncio.wait_for(pipe.wait_settled(), 10)
        await eventually(lambda: len({s for _, s in fake.delivered}) == pipe.seqs.next)
        assert_complete_and_ordered(pipe, fake.delivered)
        assert_entity_counters(fake.payloads)
        await pipe.close()

    asyncio.run(scenario())
    assert list(tmp_path.iterdir()) == [], "a drained spool directory is removed on close"


def test_an_outage_mid_round_keeps_order_per_entity(tmp_path: Path, kafka: Any) -> None:
    async def scenario() -> None:
        pipe = Pipeline(config(tmp_path))
        fake = kafka.instances[0]
        calls = {"n": 0}

        def flaky(items: Sequence[tuple[bytes, bytes]]) -> None:
            calls["n"] += 1
            fake.up = calls["n"] not in (2, 3, 4)

        fake.before_send = flaky
        for _ in range(6):
            submit(pipe, 1)
            await asyncio.sleep(0.01)
        await asyncio.wait_for(pipe.wait_settled(), 10)
        await eventually(lambda: len({s for _, s in fake.delivered}) == pipe.seqs.next and not pipe.spooled)
        assert_complete_and_ordered(pipe, fake.delivered)
        assert_entity_counters(fake.payloads)
        await pipe.close()

    asyncio.run(scenario())


def test_past_the_memory_bound_batches_go_to_the_spool_first(tmp_path: Path, kafka: Any) -> None:
    async def scenario() -> None:
        pipe = Pipeline(config(tmp_path, max_buffer_bytes=20_000))
        fake = kafka.instances[0]
        fake.gate = asyncio.Event()
        submit(pipe, 1)
        await eventually(lambda: pipe._inflight != [])
        submit(pipe, 10)
        assert pipe.spooled, "the outbox passed max_buffer_bytes while a round was stuck"
        await asyncio.wait_for(pipe.wait_settled(), 10)
        fake.gate.set()
        await eventually(lambda: len({s for _, s in fake.delivered}) == pipe.seqs.next and not pipe.spooled)
        assert_complete_and_ordered(pipe, fake.delivered)
        assert_entity_counters(fake.payloads)
        await pipe.close()

    asyncio.run(scenario())


def test_durability_spool_writes_every_batch_before_sending_it(tmp_path: Path, kafka: Any) -> None:
    async def scenario() -> None:
        pipe = Pipeline(config(tmp_path, durability="spool", fsync="batch"))
        fake = kafka.instances[0]

        def on_disk_first(items: Sequence[tuple[bytes, bytes]]) -> None:
            spooled = {decode(p).seq for _, _, p in SpoolReader(pipe.spool_path).frames()}
            assert {decode(p).seq for _, p in items} <= spooled

        fake.before_send = on_disk_first
        submit(pipe, 3)
        await asyncio.wait_for(pipe.wait_settled(), 10)
        await eventually(lambda: len({s for _, s in fake.delivered}) == pipe.seqs.next)
        assert pipe.spooled
        reader = SpoolReader(pipe.spool_path)
        assert reader.at_end(reader.load_position("kafka"))
        assert_complete_and_ordered(pipe, fake.delivered)
        assert_entity_counters(fake.payloads)
        await pipe.close()

    asyncio.run(scenario())


def test_at_exit_unacknowledged_batches_are_spooled(tmp_path: Path, kafka: Any) -> None:
    async def scenario() -> None:
        pipe = Pipeline(config(tmp_path))
        kafka.instances[0].gate = asyncio.Event()
        submit(pipe, 2)
        await eventually(lambda: pipe._inflight != [])
        submit(pipe, 1)
        assert pipe.spool_unsettled() == pipe.seqs.next
        frames = [p for _, _, p in SpoolReader(pipe.spool_path).frames()]
        assert [decode(p).seq for p in frames] == list(range(pipe.seqs.next))
        assert_entity_counters(frames)
        await asyncio.wait_for(pipe.wait_settled(), 1)
        await pipe.close()

    asyncio.run(scenario())
