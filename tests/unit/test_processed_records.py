"""Processed-topic records round-trip exactly, non-finite floats and nested params included."""

from __future__ import annotations

import math
import sys
from dataclasses import astuple, fields
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trackstream.schemas import EntityRef, MetricBatch, bits_to_float, float_to_bits
from trackstream.schemas.processed import (
    EntityState,
    PointBlock,
    StepAggregate,
    decode_entity_states,
    decode_point_block,
    decode_step_aggregates,
    encode_point_block,
    encode_records,
)

RUN = EntityRef("proj", "run", 'r/"1"')
MODEL = EntityRef("proj", "model", "resnet:3")
NAN_PAYLOAD = bits_to_float(0xFFF80000DEADBEEF)
ODD_FLOATS = [math.nan, -math.inf, math.inf, -0.0, 5e-324, sys.float_info.max, NAN_PAYLOAD]


def exact(value: Any) -> Any:
    """A comparable form: floats as bit patterns, recursively (NaN != NaN otherwise)."""
    if isinstance(value, float):
        return ("f64", float_to_bits(value))
    if isinstance(value, dict):
        return {key: exact(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [exact(item) for item in value]
    if isinstance(value, MetricBatch):
        return [value.name, value.kind, value.steps, value.times_ns, exact(value.values)]
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: exact(getattr(value, f.name)) for f in fields(value)}
    return value


def test_point_block_round_trip() -> None:
    block = PointBlock(
        entity=RUN, rank=3, producer_id="p", seq=9,
        metrics=[MetricBatch("loss", "series", [0, 1, 2, 3, 4, 5, 6], [10] * 7, ODD_FLOATS),
                 MetricBatch("acc", "single", [2**63 - 1], [-(2**63)], [0.5])],
        generations=[0, 4], incarnation=2,
    )
    decoded = decode_point_block(encode_point_block(block))
    assert exact(decoded) == exact(block)
    assert decoded.point_count() == 8


def test_point_block_without_incarnation_decodes_as_first() -> None:
    wire = orjson.loads(encode_point_block(PointBlock(RUN, 0, "p", 1, [MetricBatch("m", "series", [0], [0], [1.0])],
                                                      [0], incarnation=5)))
    del wire["incarnation"]
    assert decode_point_block(orjson.dumps(wire)).incarnation == 0


@pytest.mark.parametrize(("mean", "low", "high"), [(1.5, -2.0, 3.0), (math.nan, -math.inf, math.inf),
                                                   (NAN_PAYLOAD, -0.0, 5e-324)])
def test_step_aggregate_round_trip(mean: float, low: float, high: float) -> None:
    records = [StepAggregate(RUN, "loss", 2, 100, mean, low, high, 4, 8, 1_700_000_000_000_000_000),
               StepAggregate(MODEL, "acc", 0, -5, 0.0, 0.0, 0.0, 1, 1, 0)]
    decoded = decode_step_aggregates(encode_records(records))
    assert exact(decoded) == exact(records)
    assert all(type(r.mean) is float for r in decoded)


def test_entity_state_round_trip_with_nested_params() -> None:
    params = {"lr": 3e-4, "optimizer": {"name": "adamw", "betas": [0.9, 0.999], "eps": 1e-8},
              "layers": [{"width": 512, "act": "gelu"}, {"width": 256, "act": None}], "debug": False,
              "seed": 2**63 - 1, "neg_zero": -0.0}
    records = [
        EntityState(RUN, "run one", "running", params=params, tags={"team": "vision", "": "empty key"},
                    started_ns=1, producers=[{"producer_id": "p", "rank": 0, "world_size": 2, "host": "h"}],
                    lost_points=3, version=12),
        EntityState(MODEL, "resnet", "completed"),
    ]
    decoded = decode_entity_states(encode_records(records))
    assert exact(decoded) == exact(records)


def test_record_fields_that_look_like_float_markers_stay_dicts() -> None:
    """User params/tags that happen to be shaped like the ``$f64`` marker are data, not floats."""
    state = EntityState(RUN, "r", "running", params={"$f64": 9218868437227405312})
    assert decode_entity_states(encode_records([state]))[0].params == {"$f64": 9218868437227405312}


def test_non_finite_record_fields_travel_as_markers() -> None:
    wire = orjson.loads(encode_records([StepAggregate(RUN, "m", 0, 0, math.nan, 1.0, math.inf, 1, 1, 0)]))
    record = wire["records"][0]
    assert record["mean"] == {"$f64": float_to_bits(math.nan)}
    assert record["max"] == {"$f64": float_to_bits(math.inf)}
    assert record["min"] == 1.0
    assert record["entity"] == ["proj", "run", 'r/"1"']
    assert wire["v"] == 1


FLOATS = st.one_of(st.floats(), st.integers(0, 2**64 - 1).map(bits_to_float))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(FLOATS, FLOATS, FLOATS), min_size=1, max_size=20))
def test_step_aggregates_keep_every_bit_pattern(triples: list[tuple[float, float, float]]) -> None:
    records = [StepAggregate(RUN, "m", 0, step, mean, low, high, 1, 1, step)
               for step, (mean, low, high) in enumerate(triples)]
    decoded = decode_step_aggregates(encode_records(records))
    assert [exact(astuple(r)) for r in decoded] == [exact(astuple(r)) for r in records]
