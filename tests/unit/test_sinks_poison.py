"""The sink's poison handling without Kafka: decode-time range checks, dead-letter records, the salvage of a chunk
that fails to build, the dead-letter sender's retries and the outage watch's two warnings."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
from collections import deque
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trackstream.schemas.envelope import EntityRef, MetricBatch
from trackstream.schemas.limits import RECORD_BYTES_MAX, WORLD_SIZE_MAX
from trackstream.schemas.processed import (
    EntityState,
    PointBlock,
    StepAggregate,
    encode_point_block,
    encode_records,
)
from trackstream.schemas.settings import KafkaSettings
from trackstream.sinks.batch import Batcher, PointColumns
from trackstream.sinks.checks import (
    U32,
    Malformed,
    Rejected,
    Unstorable,
    UnsupportedVersion,
    check_int,
    decode_records,
    reason_of,
    record_problem,
)
from trackstream.sinks.chunks import Held, Message, prepare_chunk
from trackstream.sinks.dlq import (
    MAX_PROBLEMS,
    DeadLetter,
    DeadLetterSender,
    count_points,
    decode_dead_letter,
    encode_dead_letter,
    sink_dlq_topic,
)
from trackstream.sinks.outage import BrokerWatch
from trackstream.sinks.sink import Sink

E = EntityRef("p", "run", "r1")
T0 = 1_700_000_000_000_000_000


def _step(**changes: Any) -> dict[str, Any]:
    wire = {"entity": ["p", "run", "r1"], "metric": "loss", "generation": 0, "step": 5, "mean": 1.0, "min": 0.5,
            "max": 1.5, "count": 2, "world_size": 2, "time_ns": T0}
    return wire | changes


def _state(**changes: Any) -> dict[str, Any]:
    wire = {"entity": ["p", "run", "r1"], "name": "r1", "status": "running", "params": {"lr": 0.1},
            "tags": {"t": "v"}, "started_ns": T0, "ended_ns": 0,
            "producers": [{"producer_id": "a", "rank": 0, "world_size": 2, "host": "h"}], "lost_points": 0,
            "version": 1}
    return wire | changes


def _message(*records: dict[str, Any]) -> bytes:
    return orjson.dumps({"v": 1, "records": list(records)})


# --- decode-time checks --------------------------------------------------------------------------------------


def test_check_int_bounds_types_and_reasons() -> None:
    assert check_int("rank", 2**32 - 1, U32) == 2**32 - 1
    for bad, kind in [(2**32, Unstorable), (-1, Unstorable), (1.8446744073709552e19, Unstorable), (1.5, Unstorable),
                      (True, Rejected), ("3", Rejected), (None, Rejected)]:
        with pytest.raises(kind) as raised:
            check_int("rank", bad, U32)
        assert raised.value.field == "rank"
    assert reason_of(Unstorable("x")) == "unstorable_value"
    assert reason_of(Rejected("x")) == "malformed_record"
    assert reason_of(Malformed("x")) == "malformed"
    assert reason_of(KeyError("x")) == "malformed"


@pytest.mark.parametrize(("kind", "good", "bad", "field"), [
    ("steps", _step(), _step(world_size=2**62), "world_size"),
    ("steps", _step(), _step(world_size=WORLD_SIZE_MAX + 1), "world_size"),
    ("steps", _step(), _step(count=2**32), "count"),
    ("steps", _step(), _step(generation=-1), "generation"),
    ("steps", _step(), _step(step=2**63), "step"),
    ("entities", _state(), _state(version=-1), "version"),
    ("entities", _state(), _state(lost_points=-5), "lost_points"),
    ("entities", _state(), _state(started_ns=2**63), "started_ns"),
    ("entities", _state(), _state(producers=[{"producer_id": "a", "rank": 2**32, "world_size": 2**62}]),
     "producers[0]"),
    ("entities", _state(), _state(params={"deep": orjson.loads("[" * 40 + "]" * 40)}), "params"),
])
def test_an_unstorable_record_is_rejected_alone(kind: str, good: dict[str, Any], bad: dict[str, Any],
                                                field: str) -> None:
    decoded = decode_records(kind, _message(good, bad, good))
    assert len(decoded.records) == 2
    assert [(index, reason) for index, reason, _ in decoded.rejected] == [(1, "unstorable_value")]
    assert decoded.rejected[0][2].startswith(f"{field}:")
    Sink.prepare(**{{"steps": "steps", "entities": "entity_states"}[kind]: decoded.records})  # what was kept builds


def test_integers_past_64_bits_and_bad_shapes_are_rejected() -> None:
    huge = json.dumps({"v": 1, "records": [_step(count=2**64)]}).encode()  # orjson reads that integer as a float
    assert decode_records("steps", huge).rejected[0][1] == "unstorable_value"
    for bad in [_step(extra=1), {k: v for k, v in _step().items() if k != "step"}, _step(metric=3),
                _step(entity=["p", "run"]), _step(mean="1.0"), _step(mean={"$f64": -1}), [1, 2], "x"]:
        decoded = decode_records("steps", _message(bad))  # type: ignore[arg-type]
        assert decoded.records == []
        assert decoded.rejected[0][1] == "malformed_record", bad
    for bad_state in [_state(tags={"t": 1}), _state(params=[1]), _state(producers={"a": 1}), _state(name=None)]:
        assert decode_records("entities", _message(bad_state)).rejected[0][1] == "malformed_record"


def test_values_at_every_limit_are_kept_and_build() -> None:
    steps = [_step(generation=2**32 - 1, step=-(2**63), count=2**32 - 1, world_size=WORLD_SIZE_MAX, time_ns=0),
             _step(step=2**63 - 1, time_ns=2**63 - 1, mean={"$f64": 0x7FF8000000000001})]
    states = [_state(lost_points=2**64 - 1, version=2**64 - 1, ended_ns=-(2**63),
                     producers=[{"producer_id": "a", "rank": WORLD_SIZE_MAX - 1, "world_size": WORLD_SIZE_MAX}],
                     params={"deep": orjson.loads("[" * 31 + "]" * 31), "big": 2**64 - 1, "neg": -(2**63)})]
    decoded = {kind: decode_records(kind, _message(*records))
               for kind, records in [("steps", steps), ("entities", states)]}
    assert all(not d.rejected for d in decoded.values())
    prepared = Sink.prepare(steps=decoded["steps"].records, entity_states=decoded["entities"].records)
    assert prepared.stats.steps == 2


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["steps", "entities"]), st.data())
def test_whatever_decodes_builds(kind: str, data: st.DataObject) -> None:
    """The property the worker rests on: a record the checks keep never fails to build."""
    edge = st.sampled_from([0, -1, 1, 2**24, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63, -(2**63),
                            -(2**63) - 1, 2**64 - 1, 0.5, True, None, "x", [], {}])
    wire = {"steps": _step, "entities": _state}[kind]()
    for name in data.draw(st.lists(st.sampled_from(sorted(wire)), max_size=3)):
        wire[name] = data.draw(edge)
    raw = json.dumps({"v": 1, "records": [wire]}).encode()  # orjson would refuse integers past 64 bits
    decoded = decode_records(kind, raw)
    arg = {"steps": "steps", "entities": "entity_states"}[kind]
    Sink.prepare(**{arg: decoded.records})
    assert len(decoded.records) + len(decoded.rejected) == 1


def test_unreadable_messages_are_rejected_whole() -> None:
    for raw in [b"\x00\xffgarbage", _message(_step())[:20], b"[]", b'{"v": 1}', b"", None]:
        with pytest.raises(Malformed):
            decode_records("steps", raw)
    with pytest.raises(UnsupportedVersion):
        decode_records("steps", orjson.dumps({"v": 2, "records": []}))


def _block(rank: int = 0, steps: list[int] | None = None) -> PointBlock:
    steps = steps if steps is not None else [0, 1, 2]
    batch = MetricBatch("loss", "series", steps, [T0 + s for s in range(len(steps))], [1.0] * len(steps))
    return PointBlock(E, rank, "prod", 7, [batch], [0])


def test_a_point_block_past_a_column_is_rejected_and_adds_nothing() -> None:
    columns = PointColumns()
    assert columns.add_raw(encode_point_block(_block())) == 3
    good = orjson.loads(encode_point_block(_block()))
    cases = [({"rank": 2**32}, "rank", Unstorable), ({"rank": WORLD_SIZE_MAX}, "rank", Unstorable),
             ({"seq": -1}, "seq", Unstorable), ({"generations": [2**32]}, "generations[0]", Unstorable),
             ({"incarnation": 2**32}, "incarnation", Unstorable), ({"incarnation": -1}, "incarnation", Unstorable),
             ({"rank": "0"}, "rank", Rejected), ({"entity": ["p", "run"]}, "entity", Rejected)]
    for change, field, kind in cases:
        with pytest.raises(kind) as raised:
            columns.add_raw(orjson.dumps(good | change))
        assert raised.value.field == field
    group = good["metrics"][0]
    for key, value, field in [("steps", [0, 2**63, 1], "metrics[0].steps"),
                              ("times_ns", [0, 1, -(2**64)], "metrics[0].times_ns"),
                              ("nonfinite", [[3, 0x7FF0000000000000]], "metrics[0].nonfinite index"),
                              ("nonfinite", [[0, 2**64]], "metrics[0].nonfinite bits")]:
        with pytest.raises(Rejected) as raised:
            columns.add_raw(json.dumps(good | {"metrics": [group | {key: value}]}).encode())
        assert raised.value.field == field
    with pytest.raises(Rejected):
        columns.add_raw(orjson.dumps(good | {"metrics": [group | {"steps": [0, None, 2]}]}))
    assert columns.points == 3
    assert len(columns) == 1
    Sink.prepare(point_blocks=columns)


# --- dead-letter records -------------------------------------------------------------------------------------


def test_a_dead_letter_carries_reason_source_and_raw() -> None:
    raw = b"\x00\xffgarbage"
    letter = DeadLetter.message("malformed", "not JSON", ("ts.steps", 2, 41), raw, b"key")
    wire = decode_dead_letter(encode_dead_letter(letter))
    assert wire["reason"] == "malformed"
    assert wire["source"] == {"topic": "ts.steps", "partition": 2, "offset": 41}
    assert wire["raw"] == raw
    assert wire["raw_size"] == len(raw)
    assert wire["raw_sha256"] == hashlib.sha256(raw).hexdigest()
    assert wire["raw_truncated"] is False
    assert wire["records"] is None
    assert wire["rejected"] is None
    assert sink_dlq_topic("ts") == "ts.sink.dlq"


def test_a_dead_letter_of_some_records_names_them() -> None:
    problems = [(i, "unstorable_value", f"world_size: {i}") for i in range(0, 200, 2)]
    letter = DeadLetter.some_records(problems, ("ts.entities", 0, 9), b"{}", None)
    wire = decode_dead_letter(encode_dead_letter(letter))
    assert wire["records"] == list(range(0, 200, 2))
    assert wire["rejected"] == 100
    assert len(wire["problems"]) == MAX_PROBLEMS
    assert wire["problems"][1] == {"record": 2, "reason": "unstorable_value", "detail": "world_size: 2"}
    assert (wire["reason"], wire["detail"]) == ("unstorable_value", "world_size: 0")


@pytest.mark.parametrize("size", [0, 1, 1000, RECORD_BYTES_MAX // 2, RECORD_BYTES_MAX, 3 * RECORD_BYTES_MAX])
def test_a_dead_letter_fits_the_record_limit(size: int) -> None:
    raw = hashlib.sha256(b"seed").digest() * (size // 32 + 1)
    raw = raw[:size]
    letter = DeadLetter.message("malformed", "x" * 50_000, ("t", 0, 0), raw)
    encoded = encode_dead_letter(letter)
    assert len(encoded) <= RECORD_BYTES_MAX
    wire = decode_dead_letter(encoded)
    assert raw.startswith(wire["raw"])
    assert wire["raw_size"] == size
    assert wire["raw_sha256"] == hashlib.sha256(raw).hexdigest()
    assert wire["raw_truncated"] == (len(wire["raw"]) < size)
    if size <= RECORD_BYTES_MAX // 2:
        assert wire["raw"] == raw
    else:
        assert len(encoded) > RECORD_BYTES_MAX - 8  # cut to fit, not far below the limit


def test_tight_limits_are_met_exactly() -> None:
    raw = bytes(range(256)) * 10
    for limit in range(700, 1400, 7):
        assert len(encode_dead_letter(DeadLetter.message("m", "d", ("t", 0, 0), raw), max_bytes=limit)) <= limit


# --- a chunk that fails to build -----------------------------------------------------------------------------


def _held(kind: str) -> Held:
    return Held(f"ts.{kind}", 0, kind, Batcher(write=lambda items: None))


def test_a_record_that_fails_to_build_is_dead_lettered_and_the_rest_written() -> None:
    held = _held("steps")
    good = StepAggregate(E, "loss", 0, 1, 1.0, 1.0, 1.0, 1, 1, T0)
    bad = StepAggregate(E, "loss", 0, 2, 1.0, 1.0, 1.0, "many", 2, T0)  # type: ignore[arg-type]  # past the checks
    held.batcher.add(Message(10, [good, good], b"m10"), rows=2)
    held.batcher.add(Message(11, [bad, good], b"m11", indices=[0, 3]), rows=2)
    held.batcher.add(Message(12, [], b"m12", stored=False), rows=0)
    chunk = held.seal("tp")
    prepared, letters = prepare_chunk(Sink, chunk)  # type: ignore[arg-type]  # prepare is a staticmethod
    assert prepared.stats.steps == 3
    assert chunk.records == 3
    assert [(x.offset, x.records, x.problems[0][1]) for x in letters] == [(11, [0], "unstorable_record")]
    assert chunk.messages == []


def test_a_point_block_that_fails_to_build_is_dead_lettered_and_the_rest_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import trackstream.sinks.sink as sink_module

    real = sink_module.points_tables

    def fragile(columns: PointColumns) -> Any:  # a failure the decode-time checks did not foresee
        if any(row[2] == "poison" for row in columns.ingested):
            raise OverflowError("Python integer out of bounds (test)")
        return real(columns)

    monkeypatch.setattr(sink_module, "points_tables", fragile)
    held = _held("points")
    poison = encode_point_block(PointBlock(EntityRef("p", "run", "poison"), 0, "prod", 1, _block().metrics, [0]))
    for offset, raw in enumerate([encode_point_block(_block()), poison, encode_point_block(_block(1))]):
        held.batcher.add(Message(offset, [], raw, b"key"), rows=held.columns.add_raw(raw))
    prepared, letters = prepare_chunk(Sink, held.seal("tp"))  # type: ignore[arg-type]
    assert prepared.stats.points == 6
    assert [(x.offset, x.reason, x.records, x.points, x.key) for x in letters] == [
        (1, "unstorable_record", None, 3, b"key")]
    assert letters[0].raw == poison
    assert "out of bounds" in letters[0].detail


def test_values_that_are_not_numbers_are_rejected_at_decode() -> None:
    wire = orjson.loads(encode_point_block(_block()))
    wire["metrics"][0]["values"] = [1.0, {"a": 1}, 2.0]
    with pytest.raises(Rejected) as raised:
        PointColumns().add_raw(orjson.dumps(wire))
    assert raised.value.field == "metrics[0].values"
    wire["metrics"][0]["values"] = [1.0, None, 2.0]  # null: a non-finite value, its bits in nonfinite
    wire["metrics"][0]["nonfinite"] = [[1, 0x7FF0000000000000]]
    columns = PointColumns()
    assert columns.add_raw(orjson.dumps(wire)) == 3
    assert Sink.prepare(point_blocks=columns).tables[0][1].column("value32").to_pylist()[1] == float("inf")


# --- the dead-letter sender ----------------------------------------------------------------------------------


class FakeProducer:
    """Acknowledges sends, except that the first ``fail`` sends fail (as with a broker away)."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.delivered: list[bytes] = []
        self.keys: list[bytes | None] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[None]:
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.fail:
            self.fail -= 1
            ack.set_exception(ConnectionError("broker away"))
        else:
            self.delivered.append(value)
            self.keys.append(key)
            ack.set_result(None)
        return ack


def test_a_long_source_key_is_hashed_and_the_letter_still_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    producer = FakeProducer(fail=0)

    async def start(self: DeadLetterSender) -> FakeProducer:
        return producer

    monkeypatch.setattr(DeadLetterSender, "_start", start)

    async def scenario() -> None:
        sender = DeadLetterSender(KafkaSettings(bootstrap="127.0.0.1:1"), "t")
        key = b"k" * 100_000
        await sender.submit(DeadLetter.message("malformed", "d", ("t", 0, 0), b"x" * 2_000_000, key))
        await sender.submit(DeadLetter.message("malformed", "d", ("t", 0, 1), b"x", b"short"))
        await sender.close()

    asyncio.run(scenario())
    assert producer.keys == [hashlib.sha256(b"k" * 100_000).digest(), b"short"]
    assert len(producer.delivered[0]) + 32 <= RECORD_BYTES_MAX


def test_the_points_of_a_dead_point_block_are_counted_when_readable() -> None:
    assert count_points(encode_point_block(_block())) == 3
    assert count_points(b"garbage") == 0
    assert count_points(None) == 0


def test_the_sender_retries_in_order_and_never_drops(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    producer = FakeProducer(fail=4)
    failures: list[BaseException] = []
    acked: list[DeadLetter] = []

    async def start(self: DeadLetterSender) -> FakeProducer:
        return producer

    async def reset(self: DeadLetterSender) -> None:
        return None

    monkeypatch.setattr(DeadLetterSender, "_start", start)
    monkeypatch.setattr(DeadLetterSender, "_reset", reset)

    async def scenario() -> list[bool]:
        sender = DeadLetterSender(KafkaSettings(bootstrap="127.0.0.1:1"), "ts.sink.dlq", max_backoff_s=0.05,
                                  on_failure=failures.append, on_acked=acked.append)
        letters = [DeadLetter.message("malformed", str(i), ("t", 0, i), b"%d" % i) for i in range(5)]
        futures = [sender.submit(letter) for letter in letters]
        await asyncio.wait_for(asyncio.gather(*futures), timeout=10)
        assert sender.pending == 0
        assert sender.retries == 1  # the four failed sends were one attempt; the fifth was acknowledged then
        await sender.close()
        return [f.done() and not f.cancelled() for f in futures]

    with caplog.at_level(logging.WARNING, logger="trackstream.sinks.dlq"):
        assert all(asyncio.run(scenario()))
    assert [decode_dead_letter(v)["source"]["offset"] for v in producer.delivered] == [4, 0, 1, 2, 3]  # no copy
    assert len(failures) == 1
    assert sorted(letter.offset for letter in acked) == [0, 1, 2, 3, 4]


def test_a_failure_streak_is_one_warning_unless_an_outage_is_reported(monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    async def reset(self: DeadLetterSender) -> None:
        return None

    monkeypatch.setattr(DeadLetterSender, "_reset", reset)

    async def scenario(quiet: bool) -> None:
        producer = FakeProducer(fail=6)

        async def start(self: DeadLetterSender) -> FakeProducer:
            return producer

        monkeypatch.setattr(DeadLetterSender, "_start", start)
        sender = DeadLetterSender(KafkaSettings(bootstrap="127.0.0.1:1"), "t", max_backoff_s=0.01,
                                  quiet=lambda: quiet)
        await asyncio.wait_for(sender.submit(DeadLetter.message("m", "d", ("t", 0, 0), b"x")), timeout=10)
        assert sender.retries == 6
        await sender.close()

    for quiet, expected in [(False, 1), (True, 0)]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="trackstream.sinks.dlq"):
            asyncio.run(scenario(quiet))
        assert sum("failed" in r.getMessage() for r in caplog.records) == expected


def test_closing_the_sender_abandons_what_is_unacknowledged(monkeypatch: pytest.MonkeyPatch) -> None:
    async def start(self: DeadLetterSender) -> Any:
        raise ConnectionError("broker away")

    async def reset(self: DeadLetterSender) -> None:
        return None

    monkeypatch.setattr(DeadLetterSender, "_start", start)
    monkeypatch.setattr(DeadLetterSender, "_reset", reset)

    async def scenario() -> None:
        sender = DeadLetterSender(KafkaSettings(bootstrap="127.0.0.1:1"), "t", max_backoff_s=0.01)
        future = sender.submit(DeadLetter.message("malformed", "d", ("t", 0, 0), b"x"))
        done, _ = await asyncio.wait({future}, timeout=0.2)
        assert not done  # retried, not dropped
        await sender.close()
        assert future.cancelled()
        assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    asyncio.run(scenario())


# --- the outage watch ----------------------------------------------------------------------------------------


def test_an_outage_is_two_warnings(caplog: pytest.LogCaptureFixture) -> None:
    results: deque[bool] = deque([True, False, False, False, True, True])

    async def probe() -> None:
        if not results.popleft():
            raise ConnectionError("Connect call failed")
        if not results:
            stop.set()

    stop = asyncio.Event()
    watch = BrokerWatch("127.0.0.1:1", interval_s=0.001, down_interval_s=0.001)
    with caplog.at_level(logging.DEBUG, logger="trackstream.sinks.worker"):
        asyncio.run(asyncio.wait_for(watch.run(probe, stop), timeout=10))
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(messages) == 2, messages
    assert messages[0].startswith("lost Kafka at 127.0.0.1:1 (Connect call failed)")
    assert messages[1].startswith("Kafka at 127.0.0.1:1 is back after")
    assert messages[1].endswith("(2 retries)")
    assert watch.outages == 1
    assert not watch.down


def test_an_encoded_dead_letter_is_plain_json() -> None:
    letter = DeadLetter.message("malformed", "d", ("t", 0, 0), b"\x00")
    wire = orjson.loads(encode_dead_letter(letter))
    assert base64.b64decode(wire["raw"]) == b"\x00"
    assert isinstance(wire["time_ns"], int)


def test_records_of_every_kind_round_trip_through_the_checked_decoder() -> None:
    steps = [StepAggregate(E, "loss", 1, 2, float("nan"), -0.0, float("inf"), 2, 2, T0)]
    states = [EntityState(E, "n", "running", {"a": {"$f64": 1}}, {"t": "v"}, T0, 0, [], 0, 2)]
    for kind, records in [("steps", steps), ("entities", states)]:
        decoded = decode_records(kind, encode_records(records))  # type: ignore[arg-type]
        assert not decoded.rejected
        assert repr(decoded.records) == repr(records)


def test_records_in_hand_are_checked_as_on_the_wire() -> None:
    assert record_problem(_block()) is None
    assert record_problem(_block(rank=2**32)) == ("unstorable_value", "rank: 4294967296 is outside 0..16777215")
    assert record_problem(_block(steps=[0, 2**63]))[0] == "unstorable_value"  # type: ignore[index]
    assert record_problem(StepAggregate(E, "m", 0, 1, 1.0, 1.0, 1.0, 1, 2**62, T0))[0] == "unstorable_value"  # type: ignore[index]
    assert record_problem(EntityState(E, "n", "running", producers=[{"rank": 2**32, "world_size": 2**62}])) == (
        "unstorable_value", "producers[0]: world_size=4611686018427387904 is outside 1..16777216")
    assert record_problem(StepAggregate(E, "m", 0, 1, math.nan, math.nan, math.nan, 1, 2, T0)) is None
