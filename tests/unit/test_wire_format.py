"""Wire format v1 round trips: encode -> decode and encode -> validate keep every point bit-exact."""

from __future__ import annotations

import math
import random
import string
import sys
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trackstream.schemas import (
    ENTITY_TYPES,
    METRIC_KINDS,
    RUN_STATUSES,
    EntityRef,
    Envelope,
    Event,
    MetricBatch,
    WireFormatError,
    bits_to_float,
    decode,
    encode,
    float_to_bits,
)
from trackstream.schemas.validation import validate

INT64 = st.integers(-(2**63), 2**63 - 1)
TIMES = st.integers(0, 2**63 - 1)  # ns since the epoch: a time before it is out of range
METRIC_NAMES = st.text(alphabet=string.ascii_letters + string.digits + "_-./ ", min_size=1, max_size=250)
SPECIAL_FLOATS = [
    math.nan, -math.nan, math.inf, -math.inf, 0.0, -0.0, 5e-324, -5e-324, 2.2250738585072009e-308,
    sys.float_info.max, -sys.float_info.max, sys.float_info.min, sys.float_info.epsilon,
    bits_to_float(0x7FF0000000000001),  # signalling NaN
    bits_to_float(0xFFF8000000000000),  # negative quiet NaN
    bits_to_float(0x7FFDEADBEEF00000),  # NaN with a payload
    bits_to_float(0xFFFFFFFFFFFFFFFF),  # all bits set
]
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True),
    st.integers(0, 2**64 - 1).map(bits_to_float),
    st.sampled_from(SPECIAL_FLOATS),
)
JSON_LEAVES = st.one_of(
    st.none(), st.booleans(), INT64, st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
)
JSON = st.recursive(
    JSON_LEAVES,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
    max_leaves=12,
)
PARAMS = st.dictionaries(st.text(min_size=1, max_size=20), JSON, max_size=6)  # keys: 1-250 characters
TAGS = st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=20), max_size=4)
ENTITIES = st.builds(
    EntityRef, project=st.text(min_size=1, max_size=30), type=st.sampled_from(ENTITY_TYPES),
    id=st.text(min_size=1, max_size=60),
)


@st.composite
def batches(draw: st.DrawFn, max_points: int = 40) -> MetricBatch:
    size = draw(st.integers(0, max_points))
    return MetricBatch(
        name=draw(METRIC_NAMES), kind=draw(st.sampled_from(METRIC_KINDS)),
        steps=draw(st.lists(INT64, min_size=size, max_size=size)),
        times_ns=draw(st.lists(TIMES, min_size=size, max_size=size)),
        values=draw(st.lists(VALUES, min_size=size, max_size=size)),
    )


EVENTS = st.one_of(
    st.builds(lambda t, n, p, g: Event("run_started", t, {"name": n, "params": p, "tags": g}),
              TIMES, st.text(max_size=30), PARAMS, TAGS),
    st.builds(lambda t, s: Event("run_finished", t, {"status": s}), TIMES, st.sampled_from(RUN_STATUSES)),
    st.builds(lambda t, p: Event("params", t, {"params": p}), TIMES, PARAMS),
    st.builds(lambda t, g: Event("tags", t, {"tags": g}), TIMES, TAGS),
    st.builds(lambda t, m: Event("overwrite", t, {"metric": m}), TIMES, METRIC_NAMES),
)


@st.composite
def envelopes(draw: st.DrawFn) -> Envelope:
    world_size = draw(st.integers(1, 4096))
    return Envelope(
        producer_id=draw(st.text(min_size=1, max_size=40)), seq=draw(st.integers(0, 2**63 - 1)),
        sent_ns=draw(INT64), entity=draw(ENTITIES), rank=draw(st.integers(0, world_size - 1)),
        world_size=world_size, host=draw(st.text(max_size=40)),
        metrics=draw(st.lists(batches(), max_size=5)), events=draw(st.lists(EVENTS, max_size=4)),
    )


def bits(values: list[float]) -> list[int]:
    return [float_to_bits(value) for value in values]


def comparable(envelope: Envelope) -> tuple[Any, ...]:
    """Everything an envelope holds, with values as IEEE-754 bit patterns (NaN != NaN otherwise)."""
    metrics = [(m.name, m.kind, m.steps, m.times_ns, bits(m.values)) for m in envelope.metrics]
    events = [(e.type, e.time_ns, orjson.dumps(e.data, option=orjson.OPT_SORT_KEYS)) for e in envelope.events]
    return (
        envelope.version, envelope.producer_id, envelope.seq, envelope.sent_ns, envelope.entity,
        envelope.rank, envelope.world_size, envelope.host, metrics, events,
    )


@settings(max_examples=300, deadline=None)
@given(envelopes())
def test_encode_decode_round_trip(envelope: Envelope) -> None:
    assert comparable(decode(encode(envelope))) == comparable(envelope)


@settings(max_examples=300, deadline=None)
@given(envelopes())
def test_encode_validate_round_trip(envelope: Envelope) -> None:
    result = validate(encode(envelope))
    assert result.bad == []
    assert comparable(result.envelope) == comparable(envelope)


@settings(max_examples=500, deadline=None)
@given(st.lists(VALUES, min_size=1, max_size=50))
def test_every_float64_bit_pattern_survives(values: list[float]) -> None:
    batch = MetricBatch("m", "series", list(range(len(values))), list(range(len(values))), values)
    envelope = Envelope("p", 0, 0, EntityRef("p", "run", "r"), metrics=[batch])
    assert bits(decode(encode(envelope)).metrics[0].values) == bits(values)
    assert bits(validate(encode(envelope)).envelope.metrics[0].values) == bits(values)


def test_special_floats_travel_as_nonfinite_entries() -> None:
    values = [1.5, math.nan, -math.inf, -0.0, bits_to_float(0xFFF8000000000123)]
    batch = MetricBatch("m", "series", steps=[0, 1, 2, 3, 4], times_ns=[0, 1, 2, 3, 4], values=values)
    envelope = Envelope("p", 0, 0, EntityRef("p", "run", "r"), metrics=[batch])
    group = orjson.loads(encode(envelope))["metrics"][0]
    assert group["values"] == [1.5, None, None, -0.0, None]
    assert group["nonfinite"] == [[1, float_to_bits(math.nan)], [2, float_to_bits(-math.inf)],
                                  [4, 0xFFF8000000000123]]
    assert "nonfinite" not in orjson.loads(encode(Envelope("p", 0, 0, EntityRef("p", "run", "r"), metrics=[
        MetricBatch("m", "series", [0], [0], [1.0])])))["metrics"][0]


def test_finite_sum_overflow_still_round_trips() -> None:
    """The all-finite fast path sums values; an overflowing sum must not lose the finite values."""
    values = [sys.float_info.max, sys.float_info.max, -sys.float_info.max]
    envelope = Envelope("p", 0, 0, EntityRef("p", "run", "r"),
                        metrics=[MetricBatch("m", "series", [0, 1, 2], [0, 1, 2], values)])
    assert bits(validate(encode(envelope)).envelope.metrics[0].values) == bits(values)


@pytest.mark.parametrize("points", [100_000])
def test_large_batch_round_trips(points: int) -> None:
    rng = random.Random(7)
    values = [rng.choice(SPECIAL_FLOATS) if rng.random() < 0.01 else rng.uniform(-1e6, 1e6)
              for _ in range(points)]
    steps = list(range(points))
    times = [1_700_000_000_000_000_000 + 1000 * step for step in steps]
    envelope = Envelope("p", 1, 2, EntityRef("p", "run", "r"), metrics=[
        MetricBatch("train/loss", "series", steps, times, values),
        MetricBatch("lr", "series", steps[:10], times[:10], values[:10]),
    ])
    raw = encode(envelope)
    assert comparable(decode(raw)) == comparable(envelope)
    validated = validate(raw, max_bytes=len(raw))
    assert comparable(validated.envelope) == comparable(envelope)
    assert validated.envelope.point_count() == points + 10


@settings(max_examples=200, deadline=None)
@given(st.lists(EVENTS, min_size=1, max_size=6))
def test_events_round_trip_in_order(events: list[Event]) -> None:
    envelope = Envelope("p", 0, 0, EntityRef("p", "run", "r"), events=events)
    expected = [(e.type, e.time_ns, e.data) for e in events]
    for decoded in (decode(encode(envelope)), validate(encode(envelope)).envelope):
        assert [(e.type, e.time_ns, e.data) for e in decoded.events] == expected


def test_entity_key_is_stable() -> None:
    entity = EntityRef("vision", "run", 'run/"7"')
    assert entity.key() == EntityRef("vision", "run", 'run/"7"').key()
    assert entity.key() == b'["vision","run","run/\\"7\\""]'


@pytest.mark.parametrize(("first", "second"), [
    (EntityRef("a/b", "run", "c"), EntityRef("a", "run", "b/c")),
    (EntityRef("a", "run", "x"), EntityRef("a", "model", "x")),
    (EntityRef('a","run","b', "run", "c"), EntityRef("a", "run", 'b","run","c')),
    (EntityRef("a", "run", 'x"'), EntityRef("a", "run", "x\\")),
    (EntityRef("a", "model", "m:1"), EntityRef("a:m", "model", "1")),
])
def test_entity_keys_of_tricky_ids_differ(first: EntityRef, second: EntityRef) -> None:
    assert first.key() != second.key()


@settings(max_examples=300)
@given(ENTITIES, ENTITIES)
def test_entity_key_distinct_exactly_for_distinct_entities(first: EntityRef, second: EntityRef) -> None:
    assert (first.key() == second.key()) == (first == second)
    assert orjson.loads(first.key()) == [first.project, first.type, first.id]


@pytest.mark.parametrize(("raw", "reason"), [
    (b'{"v": 2}', "unsupported_version"),
    (b'{"v": true}', "unsupported_version"),
    (b'{"v": 1.0}', "unsupported_version"),
    (b"{}", "unsupported_version"),
    (b"{", "malformed"),
    (b"[]", "malformed"),
    (b'{"v": 1}', "malformed"),
])
def test_decode_names_what_is_wrong(raw: bytes, reason: str) -> None:
    with pytest.raises(WireFormatError) as info:
        decode(raw)
    assert info.value.reason == reason
