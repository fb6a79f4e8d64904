"""The stream worker's pure parts against poison input (issue 11): nothing it writes can fail to encode or be too large.

- dead letters: raw payloads cut to fit, with their size and SHA-256; a record that cannot be encoded falls back to a
  minimal one; a rejected group too deep to encode is left out of its record;
- outputs: a point block, step aggregates or entity states too large for one message are split into several, which the
  sinks' decoders read unchanged and which hold exactly the original records;
- conflicting re-sends of a (producer_id, seq) are dead-lettered and counted once; identical ones stay silent;
- delivery: a failed message is sent again until acknowledged, without losing the others of its batch; a message the
  broker refuses as too large is dead-lettered (an output) or re-encoded smaller (a dead letter);
- outages: two WARNINGs per outage, the clients' errors demoted to DEBUG.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
from typing import Any

import orjson
import pytest

from trackstream.schemas import EntityRef, Envelope, Event, MetricBatch, encode, envelope_to_wire
from trackstream.schemas.limits import RECORD_BYTES_MAX
from trackstream.schemas.processed import (
    EntityState,
    PointBlock,
    StepAggregate,
    decode_entity_states,
    decode_point_block,
    decode_step_aggregates,
)
from trackstream.schemas.topics import Topics
from trackstream.schemas.validation import Validated
from trackstream.streams import Output, Processor, SourcePosition, output_messages
from trackstream.streams.dedup import ProducerTrack
from trackstream.streams.delivery import Delivery, oversize_rescue
from trackstream.streams.dlq import DlqRecord, decode_dlq, dlq_key, encode_dlq
from trackstream.streams.entity import EntityCtx
from trackstream.streams.outage import BrokerHealth, KafkaLogFilter
from trackstream.streams.records import OutMessage
from trackstream.streams.split import point_block_values, record_values, split_point_block

RUN = EntityRef(project="p", type="run", id="r1")
SOURCE = SourcePosition("t.metrics", 2, 41)
TOPICS = Topics("t")


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def dumps(wire: Any) -> bytes:
    """The standard library writes nesting past orjson's 254 levels, as an attacker's client can."""
    import json

    return json.dumps(wire, separators=(",", ":")).encode()


# --- dead letters --------------------------------------------------------------------------------------------


def test_an_oversize_raw_payload_is_cut_with_its_size_and_sha256() -> None:
    raw = os.urandom(7_500_000)
    value = encode_dlq(DlqRecord("oversize", "too big", SOURCE, raw, key=b"k"))
    assert len(value) <= RECORD_BYTES_MAX
    record = decode_dlq(value, key=b"k")
    assert (record.reason, record.source, record.raw_truncated) == ("oversize", SOURCE, True)
    assert record.raw_size == len(raw)
    assert record.raw_sha256 == hashlib.sha256(raw).hexdigest()
    assert raw.startswith(record.raw)
    assert len(record.raw) > RECORD_BYTES_MAX // 2  # as much as fits is kept


def test_a_small_raw_payload_is_kept_whole() -> None:
    raw = b'{"v": 2}'
    record = decode_dlq(encode_dlq(DlqRecord("unsupported_version", "v", SOURCE, raw)))
    assert (record.raw, record.raw_size, record.raw_truncated) == (raw, len(raw), False)
    assert record.raw_sha256 == hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize("limit", [4_096, 100_000, RECORD_BYTES_MAX])
def test_every_dead_letter_fits_its_limit(limit: int) -> None:
    points = {"name": "x", "values": list(range(200_000))}
    for record in (DlqRecord("non_numeric_value", "d" * 50_000, SOURCE, os.urandom(2_000_000), points=points),
                   DlqRecord("malformed", "\ud800 not utf-8", SOURCE, b"\xff" * 10_000, metric="\udcff")):
        assert len(encode_dlq(record, limit=limit)) <= limit
        assert orjson.dumps(record.to_wire(limit=limit))


def test_a_group_too_deep_to_encode_is_left_out_of_its_record() -> None:
    record = DlqRecord("bad_metric_name", "bad", SOURCE, b"{}", metric="no!", count=3,
                       points={"name": "no!", "colour": nested(300)})
    wire = orjson.loads(encode_dlq(record))
    assert "points" not in wire
    assert "Recursion" in wire["points_omitted"] or "recursion" in wire["points_omitted"]
    assert (wire["metric"], wire["count"], wire["source"]["offset"]) == ("no!", 3, 41)


def test_a_record_that_cannot_be_encoded_falls_back_to_a_minimal_one() -> None:
    raw = os.urandom(3_000_000)
    record = DlqRecord("internal_error", "boom", SOURCE, raw, count=object(),  # type: ignore[arg-type]
                       points={"x": nested(300)})
    value = encode_dlq(record)
    assert len(value) <= RECORD_BYTES_MAX
    wire = orjson.loads(value)
    assert "fallback" in wire
    assert (wire["reason"], wire["detail"], wire["count"]) == ("internal_error", "boom", 0)
    assert wire["source"] == {"topic": "t.metrics", "partition": 2, "offset": 41}
    assert (wire["raw_size"], wire["raw_sha256"]) == (len(raw), hashlib.sha256(raw).hexdigest())
    assert raw.startswith(base64.b64decode(wire["raw"]))


def test_a_long_source_key_is_hashed_on_the_dlq_topic() -> None:
    assert dlq_key(b"short") == b"short"
    assert dlq_key(None) is None
    assert dlq_key(b"k" * 100_000) == b"sha256:" + hashlib.sha256(b"k" * 100_000).hexdigest().encode()


def test_processing_never_raises_and_every_message_fits() -> None:
    deep_params = dumps({"v": 1, "producer_id": "p", "seq": 0, "sent_ns": 1,
                         "entity": {"project": "p", "type": "run", "id": "r"},
                         "events": [{"type": "run_started", "time_ns": 1, "name": "n", "params": {"a": nested(300)},
                                     "tags": {}}]})
    wire = good_wire(groups=2)
    wire["metrics"][0]["name"] = "no!"
    wire["metrics"][0]["colour"] = nested(300)
    inputs = [deep_params, dumps(wire), os.urandom(7_500_000), b"[" * 300 + b"]" * 300, None]
    processor = Processor()
    for offset, raw in enumerate(inputs):
        out = processor.process(raw, source=SourcePosition("t.metrics", 0, offset), key=b"k")  # type: ignore[arg-type]
        assert out.dlq
        assert out.dlq[0].reason != "internal_error"
        for message in output_messages(out, TOPICS):
            assert len(message.value) <= RECORD_BYTES_MAX
    for blob in processor.take_dirty().values():
        assert EntityCtx.from_bytes(blob)


@pytest.mark.parametrize("where", ["v", "rank", "entity.id", "events.0.type", "metrics.0.name", "metrics.0.steps.0",
                                   "metrics.0.values.0", "metrics.0.kind"])
def test_a_value_nested_near_the_json_limit_is_named_not_an_internal_error(where: str) -> None:
    """Error messages show untrusted values through one bounded repr: a value nested 1,000 deep (orjson reads up
    to 1,024) once made ``repr`` exceed the recursion limit, so the envelope became an ``internal_error``."""
    wire = good_wire(groups=1)
    wire["events"] = [{"type": "heartbeat", "time_ns": 1}]
    *parents, last = where.split(".")
    node: Any = wire
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = "DEEP"
    raw = dumps(wire).replace(b'"DEEP"', b"[" * 1_000 + b"]" * 1_000)  # past what json.dumps can write
    out = Processor().process(raw, source=SOURCE, key=b"k")
    assert [record.reason for record in out.dlq if record.reason == "internal_error"] == []
    assert out.dlq, "a nested value where a scalar belongs is rejected"
    assert all(len(record.detail) < 2_000 for record in out.dlq)


def test_the_sink_names_a_deeply_nested_version_without_recursing() -> None:
    from trackstream.sinks.checks import UnsupportedVersion, decode_records

    with pytest.raises(UnsupportedVersion, match=r"v=\[\[\["):
        decode_records("entities", b'{"records": [], "v": ' + b"[" * 1_000 + b"]" * 1_000 + b"}")


def test_later_groups_of_a_large_envelope_carry_its_hash_not_another_copy() -> None:
    wire = good_wire(groups=3, points=1_500)
    wire["metrics"][0]["name"] = "no!"
    wire["metrics"][1]["name"] = "no?"
    raw = orjson.dumps(wire)
    out = Processor().process(raw, source=SOURCE)
    first, second = (decode_dlq(m.value) for m in output_messages(out, TOPICS) if m.topic == TOPICS.dlq)
    assert (first.raw, first.raw_truncated) == (raw, False)
    assert (second.raw, second.raw_truncated, second.raw_size) == (b"", True, len(raw))
    assert first.raw_sha256 == second.raw_sha256 == hashlib.sha256(raw).hexdigest()
    assert (first.count, second.count) == (1_500, 1_500)


# --- outputs split under the limit --------------------------------------------------------------------------


def good_wire(*, groups: int = 2, points: int = 3, seq: int = 0, producer: str = "p0") -> dict[str, Any]:
    envelope = Envelope(producer_id=producer, seq=seq, sent_ns=1, entity=RUN, metrics=[
        MetricBatch(f"m{i}", "series", list(range(points)), [1_733_000_000_000_000_000 + s for s in range(points)],
                    [0.25 * s + i for s in range(points)]) for i in range(groups)])
    return envelope_to_wire(envelope)


def many_groups_block(groups: int, points: int = 1) -> PointBlock:
    metrics = [MetricBatch(f"metric/{i:06d}", "series", list(range(points)), [1_733_000_000_000_000_000] * points,
                           [float(i) + 0.5] * points) for i in range(groups)]
    return PointBlock(entity=RUN, rank=0, producer_id="p0", seq=7, metrics=metrics, generations=[i % 3 for i in
                                                                                                  range(groups)])


def flatten(blocks: list[PointBlock]) -> list[tuple[str, int, int, float, int]]:
    return [(batch.name, step, time, value, generation) for block in blocks
            for batch, generation in zip(block.metrics, block.generations, strict=True)
            for step, time, value in zip(batch.steps, batch.times_ns, batch.values, strict=True)]


@pytest.mark.parametrize(("groups", "points"), [(20_000, 1), (1, 200_000), (3, 70_000)])
def test_a_large_point_block_splits_into_blocks_under_the_limit(groups: int, points: int) -> None:
    block = many_groups_block(groups, points)
    values = point_block_values(block)
    assert len(values) > 1
    assert all(len(value) <= RECORD_BYTES_MAX for value in values)
    parts = [decode_point_block(value) for value in values]
    assert {(p.entity, p.rank, p.producer_id, p.seq) for p in parts} == {(RUN, 0, "p0", 7)}
    assert flatten(parts) == flatten([block])
    # the sink reads each part on its own, straight into its columns
    from trackstream.sinks.batch import PointColumns

    columns = PointColumns()
    assert sum(columns.add_raw(value) for value in values) == groups * points


def test_a_block_under_the_limit_stays_one_message() -> None:
    block = many_groups_block(10, 10)
    assert [b for b, _ in split_point_block(block)] == [block]


def step_aggregate(metric: str, step: int = 2) -> StepAggregate:
    return StepAggregate(entity=RUN, metric=metric, generation=0, step=step, mean=1.5, min=float("nan"),
                         max=float("inf"), count=3, world_size=4, time_ns=9)


def test_many_step_aggregates_split_into_messages_the_sink_decodes() -> None:
    from trackstream.streams.records import encode_step_aggregates

    records = [step_aggregate(f"metric/{i:06d}") for i in range(20_000)]
    values = record_values(records, encode_step_aggregates)
    assert len(values) > 1
    assert all(len(value) <= RECORD_BYTES_MAX for value in values)
    decoded = [r for value in values for r in decode_step_aggregates(value)]
    assert [r.metric for r in decoded] == [r.metric for r in records]


def test_the_processor_output_of_50000_groups_splits_under_the_limit() -> None:
    """The groups-per-envelope limit rejects this envelope in validation; the outputs must still fit if it did not."""
    block = many_groups_block(50_000)
    envelope = Envelope(producer_id="p0", seq=0, sent_ns=1, entity=RUN, metrics=block.metrics,
                        events=[Event("run_started", 1, {"name": "n", "params": {"lr": 0.1}, "tags": {}})])
    raw = encode(envelope)
    out = Processor().process_validated(Validated(envelope=envelope), raw=raw, source=SOURCE)
    messages = output_messages(out, TOPICS)
    assert all(len(m.value) <= RECORD_BYTES_MAX for m in messages)
    by_topic: dict[str, list[bytes]] = {}
    for message in messages:
        by_topic.setdefault(message.topic, []).append(message.value)
    assert len(by_topic[TOPICS.points]) > 1
    assert sum(decode_point_block(v).point_count() for v in by_topic[TOPICS.points]) == 50_000
    assert [s.name for v in by_topic[TOPICS.entities] for s in [decode_entity_states(v)[0]]] == ["n"]


def test_an_entity_state_that_cannot_be_encoded_becomes_a_dead_letter() -> None:
    bad = EntityState(entity=RUN, name="n", status="running", params={"deep": nested(300)}, version=1)
    good = EntityState(entity=EntityRef("p", "run", "r2"), name="m", status="running", version=1)
    messages = output_messages(Output(entity_states=[bad, good]), TOPICS)
    assert [m.topic for m in messages] == [TOPICS.entities, TOPICS.dlq]
    assert decode_entity_states(messages[0].value)[0].name == "m"
    assert decode_dlq(messages[1].value).reason == "internal_error"


def test_params_nested_past_the_limit_never_reach_the_state() -> None:
    ctx = EntityCtx.new(Envelope(producer_id="p", seq=0, sent_ns=1, entity=RUN), 0)
    ctx.apply_event(Event("params", 1, {"params": {"deep": nested(300), "lr": 0.1}}))
    assert ctx.state.params["lr"] == 0.1
    assert isinstance(ctx.state.params["deep"], str)
    assert EntityCtx.from_bytes(ctx.to_bytes()).state.params == ctx.state.params


# --- conflicting re-sends -----------------------------------------------------------------------------------


@pytest.mark.parametrize("entity_seq", [True, False])
def test_a_conflicting_resend_is_dead_lettered_and_counted_once(entity_seq: bool) -> None:
    def raw(value: float) -> bytes:
        wire = good_wire(points=4)
        wire["metrics"][0]["values"][0] = value
        if entity_seq:
            wire.update(entity_seq=0, entity_offset=0)
        return orjson.dumps(wire)

    processor = Processor()
    first, other = raw(1.0), raw(2.0)
    assert processor.process(first, source=SOURCE).point_count() == 8
    conflict = processor.process(other, source=SOURCE)
    assert (conflict.conflicts, conflict.duplicates, conflict.point_blocks) == (1, 0, [])
    (record,) = conflict.dlq
    assert (record.reason, record.count, record.raw, record.source) == ("conflicting_resend", 8, other, SOURCE)
    for again in (first, other):  # the same envelope again, or the same conflicting one again: silent
        out = processor.process(again, source=SOURCE)
        assert (out.duplicates, out.conflicts, out.dlq) == (1, 0, [])
    ctx = processor.entity(RUN)
    assert ctx is not None
    assert ctx.conflicting_resends == 1
    restored = EntityCtx.from_bytes(ctx.to_bytes())
    assert restored.conflicting_resends == 1
    assert restored.tracks["p0"].digests == ctx.tracks["p0"].digests


def test_a_state_from_before_digests_still_loads() -> None:
    track = ProducerTrack.from_wire([5, [3, 5], 0, 0, [], 0])
    assert (track.high, track.digests) == (5, {})
    assert not track.accept(5, None, None, 1, "abc")
    assert track.conflict(5, "abc") is None  # no digest kept for it: a silent duplicate


def test_digests_are_bounded() -> None:
    track = ProducerTrack()
    for seq in range(1_000):
        assert track.accept(seq, seq, seq, 1, f"d{seq}")
    assert len(track.digests) == 32
    assert track.conflict(999, "other") == "d999"
    assert track.conflict(3, "other") is None


# --- delivery -----------------------------------------------------------------------------------------------


class FakeProducer:
    """Fails chosen messages a number of times (at send, or on the future), records what was acknowledged."""

    def __init__(self, failures: dict[bytes, list[BaseException]]) -> None:
        self.failures = failures
        self.acked: list[OutMessage] = []
        self.sends = 0

    async def send(self, message: OutMessage) -> asyncio.Future[None]:
        self.sends += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self.failures.get(message.value)
        if queue:
            error = queue.pop(0)
            if isinstance(error, KeyError):
                raise error
            future.set_exception(error)
        else:
            self.acked.append(message)
            future.set_result(None)
        return future


async def no_sleep(_: float) -> None:
    await asyncio.sleep(0)


def test_a_failed_dead_letter_is_sent_again_and_the_others_of_its_batch_are_kept() -> None:
    from aiokafka.errors import KafkaConnectionError, RequestTimedOutError

    messages = [OutMessage(TOPICS.dlq, b"k", f"dlq-{i:04d}".encode()) for i in range(5)]
    producer = FakeProducer({b"dlq-0002": [RequestTimedOutError(), KafkaConnectionError(), KeyError("at send")]})
    assert messages[2].value == b"dlq-0002"
    health = BrokerHealth("test")
    delivery = Delivery(producer.send, health=health, sleep=no_sleep)
    asyncio.run(delivery.deliver(messages))
    assert sorted(m.value for m in producer.acked) == sorted(m.value for m in messages)
    assert len(producer.acked) == 5
    assert delivery.retried == 3
    assert health.due()  # a connectivity failure makes the monitor probe the broker


def test_an_oversize_output_is_dead_lettered_and_an_oversize_dead_letter_shrinks() -> None:
    from aiokafka.errors import MessageSizeTooLargeError

    points = OutMessage(TOPICS.points, RUN.key(), point_block_values(many_groups_block(3, 5))[0])
    dead = OutMessage(TOPICS.dlq, b"k", encode_dlq(DlqRecord("oversize", "x", SOURCE, os.urandom(500_000))))
    producer = FakeProducer({points.value: [MessageSizeTooLargeError()], dead.value: [MessageSizeTooLargeError()]})
    delivery = Delivery(producer.send, rescue=oversize_rescue(TOPICS), sleep=no_sleep)
    asyncio.run(delivery.deliver([points, dead]))
    assert [m.topic for m in producer.acked] == [TOPICS.dlq, TOPICS.dlq]
    rescued = {r.reason: r for r in (decode_dlq(m.value) for m in producer.acked)}
    assert (rescued["output_too_large"].count, rescued["output_too_large"].raw) == (15, points.value)
    assert rescued["oversize"].raw_size == 500_000
    smaller = next(m for m in producer.acked if decode_dlq(m.value).reason == "oversize")
    assert len(smaller.value) <= len(dead.value) // 2


def test_a_state_refused_as_too_large_is_retried_not_replaced() -> None:
    from aiokafka.errors import MessageSizeTooLargeError

    state = OutMessage("app-entity-state", RUN.key(), b"state-01", 0)
    producer = FakeProducer({b"state-01": [MessageSizeTooLargeError(), MessageSizeTooLargeError()]})
    asyncio.run(Delivery(producer.send, rescue=oversize_rescue(TOPICS), sleep=no_sleep).deliver([state]))
    assert producer.acked == [state]


# --- outages ------------------------------------------------------------------------------------------------


def test_an_outage_is_two_warnings_and_the_client_errors_are_demoted(caplog: pytest.LogCaptureFixture) -> None:
    clock = iter(range(100))
    health = BrokerHealth("kafka:9092", clock=lambda: float(next(clock)))
    log_filter = KafkaLogFilter(health)
    client = logging.getLogger("aiokafka.conn.test-poison")
    client.addFilter(log_filter)
    caplog.set_level(logging.INFO)
    try:
        client.error("Unable connect to node with id 1: [Errno 111] Connect call failed")
        assert health.due()
        assert not health.down
        health.probed(ok=False, detail="refused")
        for _ in range(40):
            client.error("Unable connect to node with id 1: [Errno 111] Connect call failed")
            client.warning("something else went wrong")  # during an outage: demoted too
            health.probed(ok=False)
        health.probed(ok=True)
        client.warning("a warning after the outage")
    finally:
        client.removeFilter(log_filter)
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in loud] == ["trackstream.streams.outage", "trackstream.streams.outage",
                                      "aiokafka.conn.test-poison"]
    assert "lost Kafka at kafka:9092" in loud[0].getMessage()
    assert "40 retries" in loud[1].getMessage()
    assert not health.down
