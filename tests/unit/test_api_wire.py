"""The query API's JSON form (trackstream.api.wire): exact non-finite floats, entity references, and no copy of
what needs no change."""

from __future__ import annotations

import math
import struct
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from trackstream.api.wire import from_wire, to_wire
from trackstream.schemas import EntityRef

LOW_NAN = struct.unpack(">d", bytes.fromhex("7ff0000000000001"))[0]  # a NaN whose payload is not the usual one


def bits(value: float) -> bytes:
    return struct.pack(">d", value)


def test_non_finite_floats_travel_as_their_bits_at_any_depth() -> None:
    value = {"a": [1.5, (math.inf, {"b": LOW_NAN})], "c": -math.inf, "d": EntityRef("p", "model", "m:1")}
    wired = to_wire(value)
    assert wired["a"][1][0] == {"$f64": 0x7FF0000000000000}
    assert wired["a"][1][1]["b"] == {"$f64": 0x7FF0000000000001}
    assert wired["d"] == {"$entity": ["p", "model", "m:1"]}
    back = from_wire(orjson.loads(orjson.dumps(wired)))
    assert bits(back["a"][1][1]["b"]) == bits(LOW_NAN)
    assert back["c"] == -math.inf
    assert back["d"] == EntityRef("p", "model", "m:1")


def test_what_needs_no_change_is_shared_and_the_input_is_never_changed() -> None:
    plain = {"id": "r0", "metrics": {"loss": {"last": 0.5, "count": 3, "first_nan_step": None}}, "ranks": []}
    rows = [plain, {"id": "r1", "metrics": {"loss": {"last": math.nan}}}]
    wired = to_wire(rows)
    assert wired[0] is plain  # a result of plain values costs one walk, no copy
    assert wired[1]["metrics"]["loss"]["last"] == {"$f64": 0x7FF8000000000000}
    assert math.isnan(rows[1]["metrics"]["loss"]["last"])  # the caller's row is untouched


def test_subclasses_are_written_as_their_base() -> None:
    class Score(float):
        pass

    class Row(dict[str, Any]):
        pass

    assert to_wire(Row(v=Score(math.inf))) == {"v": {"$f64": 0x7FF0000000000000}}
    assert type(to_wire(Score(2.5))) is float


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=30,
)


@given(json_values)
def test_a_round_trip_keeps_every_value_bit_for_bit(value: Any) -> None:
    back = from_wire(orjson.loads(orjson.dumps(to_wire(value))))
    assert orjson.dumps(to_wire(back)) == orjson.dumps(to_wire(value))
