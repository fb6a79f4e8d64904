"""``<prefix>.steps`` messages read column-wise (:func:`trackstream.sinks.checks.step_runs`) give the very tables of
the record-by-record decode, and anything that path would reject or treat specially goes to it instead."""

from __future__ import annotations

import math
import random
from typing import Any

import orjson
import pytest

from trackstream.schemas.envelope import EntityRef
from trackstream.schemas.processed import StepAggregate, encode_records
from trackstream.sinks.batch import PointColumns
from trackstream.sinks.checks import decode_records, step_runs
from trackstream.sinks.sink import Sink

E = EntityRef("p", "run", "r1")
T0 = 1_700_000_000_000_000_000


def records(seed: int) -> list[StepAggregate]:
    """Runs of steps of a few metrics and generations, as the stream emits them (steps may repeat: re-emissions)."""
    rng = random.Random(seed)
    out = []
    for _ in range(rng.randint(1, 5)):
        metric, generation = rng.choice(["loss", "acc", "grad"]), rng.randint(0, 2)
        for step in sorted(rng.sample(range(200), rng.randint(1, 30))):
            values = [rng.uniform(-5, 5) for _ in range(rng.randint(1, 4))]
            out.append(StepAggregate(E, metric, generation, step, math.fsum(values) / len(values), min(values),
                                     max(values), len(values), 4, T0 + step * 1_000_000 + rng.randint(0, 999)))
    return out


def tables(columns: PointColumns, steps: list[StepAggregate] | None = None) -> dict[str, Any]:
    prepared = Sink.prepare(columns, steps or [])
    return {name: table.to_pylist() for name, table in prepared.tables}


@pytest.mark.parametrize("seed", range(20))
def test_column_wise_decode_builds_the_tables_of_the_record_decode(seed: int) -> None:
    raw = encode_records(records(seed))
    fast = PointColumns()
    assert fast.add_steps_raw(raw) == len(records(seed)) == fast.steps
    slow = decode_records("steps", raw)
    assert slow.rejected == []
    assert tables(fast) == tables(PointColumns(), slow.records)


def wire(**changes: Any) -> bytes:
    record = orjson.loads(encode_records(records(1)))["records"]
    record[0].update(changes)
    return orjson.dumps({"v": 1, "records": record})


@pytest.mark.parametrize("raw", [
    wire(mean={"$f64": 0x7FF8000000000001}),  # a non-finite mean travels as its bits
    wire(generation=2**32), wire(count=-1), wire(world_size=0), wire(step=2**63),  # out of their columns
    wire(step=1.5), wire(count=True), wire(time_ns="1"), wire(mean="1.0"), wire(min=None),  # wrong types
    wire(metric=7), wire(entity=["p", "run"]), wire(entity=["p", "run", "other"]),  # a second entity
    wire(extra=1), orjson.dumps({"v": 1, "records": [{"step": 1}]}), orjson.dumps({"v": 2, "records": []}),
    b"not json", orjson.dumps([1, 2]),
], ids=lambda raw: raw[:60].decode(errors="replace"))
def test_what_the_record_decode_must_judge_is_left_to_it(raw: bytes) -> None:
    columns = PointColumns()
    assert step_runs(raw) is None
    assert columns.add_steps_raw(raw) is None
    assert (columns.steps, columns.segments.points) == (0, 0)  # nothing added


def test_an_empty_message_adds_nothing() -> None:
    columns = PointColumns()
    assert columns.add_steps_raw(orjson.dumps({"v": 1, "records": []})) == 0
    assert tables(columns) == {}
