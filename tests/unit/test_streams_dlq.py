"""One test per bad-input class: its DLQ reason, and that good points of the same envelope survive."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from trackstream.schemas import EntityRef, Envelope, MetricBatch, encode, envelope_to_wire
from trackstream.schemas.topics import Topics
from trackstream.streams import Processor, SourcePosition, output_messages
from trackstream.streams.records import decode_dlq

RUN = EntityRef(project="p", type="run", id="r1")
SOURCE = SourcePosition("t.metrics", 1, 17)


def good_wire() -> dict[str, Any]:
    envelope = Envelope(producer_id="p0", seq=0, sent_ns=1, entity=RUN, metrics=[
        MetricBatch("loss", "series", [0, 1], [10, 11], [1.0, 2.0]),
        MetricBatch("acc", "series", [0, 1], [10, 11], [0.5, 0.6]),
    ])
    return envelope_to_wire(envelope)


def mutate(change: Callable[[dict[str, Any]], None]) -> bytes:
    wire = good_wire()
    change(wire)
    return orjson.dumps(wire)


def set_path(*path: Any, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(wire: dict[str, Any]) -> None:
        target = wire
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
    return change


def drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda wire: wire.pop(key)


WHOLE = [
    ("malformed", b"{not json"),
    ("malformed", b"[1, 2]"),
    ("unsupported_version", mutate(set_path("v", value=2))),
    ("missing_field", mutate(drop("producer_id"))),
    ("mistyped_field", mutate(set_path("seq", value="7"))),
    ("bad_entity", mutate(set_path("entity", "type", value="dataset"))),
    ("bad_event", mutate(set_path("events", value=[{"type": "run_finished", "time_ns": 1, "status": "meh"}]))),
]

PARTIAL = [
    ("bad_metric_name", set_path("metrics", 0, "name", value="bad*name")),
    ("non_numeric_value", set_path("metrics", 0, "values", value=[1.0, "x"])),
    ("non_numeric_value", set_path("metrics", 0, "values", value=[1.0, True])),
    ("length_mismatch", set_path("metrics", 0, "steps", value=[0])),
    ("bad_nonfinite", set_path("metrics", 0, "nonfinite", value=[[0, 1]])),
    ("mistyped_field", set_path("metrics", 0, "steps", value=["a", "b"])),
]


@pytest.mark.parametrize(("reason", "raw"), WHOLE, ids=[f"{r}-{i}" for i, (r, _) in enumerate(WHOLE)])
def test_rejected_envelope_goes_to_dlq(reason: str, raw: bytes) -> None:
    processor = Processor()
    out = processor.process(raw, source=SOURCE, key=b"key")
    assert [r.reason for r in out.dlq] == [reason]
    record = out.dlq[0]
    assert (record.source, record.raw, record.key, record.metric) == (SOURCE, raw, b"key", None)
    assert record.detail
    assert not (out.point_blocks)
    assert not (out.step_aggregates)
    assert not (out.entity_states)
    assert processor.entity_keys() == []


def test_oversize_envelope_goes_to_dlq() -> None:
    raw = encode(Envelope(producer_id="p0", seq=0, sent_ns=1, entity=RUN,
                          metrics=[MetricBatch("m", "series", list(range(500)), list(range(500)), [1.5] * 500)]))
    out = Processor(max_envelope_bytes=1000).process(raw, source=SOURCE)
    assert [r.reason for r in out.dlq] == ["oversize"]


@pytest.mark.parametrize(("reason", "change"), PARTIAL, ids=[f"{r}-{i}" for i, (r, _) in enumerate(PARTIAL)])
def test_bad_metric_group_goes_to_dlq_and_good_points_stay(reason: str, change: Callable[..., None]) -> None:
    raw = mutate(change)
    out = Processor().process(raw, source=SOURCE)
    assert [r.reason for r in out.dlq] == [reason]
    record = out.dlq[0]
    assert record.raw == raw
    assert record.points is not None
    assert record.count >= 1
    assert record.key == RUN.key()
    (block,) = out.point_blocks
    assert [b.name for b in block.metrics] == ["acc"]
    assert block.metrics[0].values == [0.5, 0.6]


def test_dlq_message_round_trips() -> None:
    raw = mutate(set_path("metrics", 0, "name", value="bad*name"))
    out = Processor().process(raw, source=SOURCE, key=b"key")
    dlq = [m for m in output_messages(out, Topics("x")) if m.topic == "x.metrics.dlq"]
    assert len(dlq) == 1
    record = decode_dlq(dlq[0].value, key=dlq[0].key)
    assert (record.reason, record.metric, record.count, record.source, record.raw, record.key) == (
        "bad_metric_name", "bad*name", 2, SOURCE, raw, b"key")


def test_duplicate_of_a_partly_bad_envelope_is_not_dead_lettered_twice() -> None:
    raw = mutate(set_path("metrics", 0, "name", value="bad*name"))
    processor = Processor()
    assert len(processor.process(raw, source=SOURCE).dlq) == 1
    again = processor.process(raw, source=SOURCE)
    assert again.dlq == []
    assert again.duplicates == 1
