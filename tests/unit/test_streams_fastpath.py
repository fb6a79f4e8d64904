"""Fast paths of cross-rank aggregation and output encoding against straightforward reference computations.

Randomized inputs: NaN, ±Inf, ±0.0, missing ranks, duplicate steps, out-of-order steps, timeouts and late
ranks. Floats are compared by their bits, so a signed zero or a differently rounded mean would fail.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from trackstream.schemas import EntityRef, float_to_bits
from trackstream.schemas.processed import (
    EntityState,
    StepAggregate,
    decode_step_aggregates,
    encode_records,
)
from trackstream.schemas.topics import Topics
from trackstream.streams import Output, Processor, SourcePosition, output_messages
from trackstream.streams.aggregate import VALUES, StepTracker, aggregate_steps, step_mean
from trackstream.streams.entity import EntityCtx
from trackstream.streams.records import encode_step_aggregates

RUN = EntityRef("p", "run", "fast")
SPECIALS = (math.nan, math.inf, -math.inf, 0.0, -0.0, 5e-324, 1.5)


# --- reference: one object per step, one dict operation per point, nothing clever ------------------------


@dataclass
class RefAcc:
    first_seen_ns: int
    time_ns: int
    values: dict[int, float]
    emitted: int = 0


@dataclass
class RefTracker:
    pending: dict[int, RefAcc] = field(default_factory=dict)
    late: dict[int, RefAcc] = field(default_factory=dict)

    def add(self, rank: int, steps: list[int], times: list[int], values: list[float], *, world_size: int,
            now_ns: int) -> list[tuple[int, RefAcc]]:
        emit = []
        for step, time_ns, value in zip(steps, times, values, strict=True):
            if step in self.pending:
                acc = self.pending[step]
                acc.values[rank] = value
                acc.time_ns = max(acc.time_ns, time_ns)
                if len(acc.values) >= world_size:
                    del self.pending[step]
                    emit.append((step, acc))
            elif step in self.late:
                acc = self.late[step]
                acc.values[rank] = value
                if len(acc.values) > acc.emitted:
                    acc.emitted = len(acc.values)
                    emit.append((step, acc))
                    if len(acc.values) >= world_size:
                        del self.late[step]
            else:
                self.pending[step] = RefAcc(now_ns, time_ns, {rank: value})
        return emit

    def expire(self, now_ns: int, timeout_ns: int, retention_ns: int) -> list[tuple[int, RefAcc]]:
        for step in list(self.late):
            if self.late[step].first_seen_ns + retention_ns > now_ns:
                break
            del self.late[step]
        emit = []
        for step in list(self.pending):
            acc = self.pending[step]
            if acc.first_seen_ns + timeout_ns > now_ns:
                break
            del self.pending[step]
            acc.emitted = len(acc.values)
            self.late[step] = acc
            emit.append((step, acc))
        return emit


def ref_aggregate(step: int, acc: RefAcc, world_size: int) -> StepAggregate:
    values = list(acc.values.values())
    present = [v for v in values if not math.isnan(v)]
    return StepAggregate(RUN, "m", 0, step, step_mean(values), min(present) if present else math.nan,
                         max(present) if present else math.nan, len(values), world_size, acc.time_ns)


def exact(records: list[StepAggregate]) -> list[tuple[Any, ...]]:
    return [(r.step, float_to_bits(r.mean), float_to_bits(r.min), float_to_bits(r.max), r.count, r.time_ns)
            for r in records]


def state_of(tracker: StepTracker) -> list[Any]:
    return [{step: (a[0], a[1], a[2], [(rank, float_to_bits(v)) for rank, v in a[VALUES].items()])
             for step, a in part.items()} for part in (tracker.pending, tracker.late)]


def ref_state_of(tracker: RefTracker) -> list[Any]:
    return [{step: (a.first_seen_ns, a.time_ns, a.emitted, [(rank, float_to_bits(v)) for rank, v in a.values.items()])
             for step, a in part.items()} for part in (tracker.pending, tracker.late)]


def random_batch(rng: random.Random, base: int) -> tuple[list[int], list[int], list[float]]:
    size = rng.randint(0, 12)
    contiguous = rng.random() < 0.4  # the common case, with its own fast path; else duplicates, gaps, disorder
    steps = list(range(base, base + size)) if contiguous else [base + rng.randint(-4, 12) for _ in range(size)]
    times = [rng.randint(0, 50) for _ in steps]
    values = [rng.choice(SPECIALS) if rng.random() < 0.25 else rng.uniform(-5, 5) for _ in steps]
    return steps, times, values


@pytest.mark.parametrize("seed", range(40))
def test_step_tracker_matches_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    world_size = rng.randint(2, 5)
    tracker, reference = StepTracker(generation=0, pending={}, late={}), RefTracker()
    now = 0
    for _round in range(60):
        now += rng.randint(0, 400)
        if rng.random() < 0.2:
            emit: list[Any] = []
            tracker.expire(now, 1_000, 3_000, emit)
            expected = reference.expire(now, 1_000, 3_000)
        else:
            rank = rng.randrange(world_size - (rng.random() < 0.3))  # sometimes one rank never reports
            steps, times, values = random_batch(rng, rng.randint(0, 30))
            emit = []
            tracker.add(rank, steps, times, values, world_size=world_size, now_ns=now, emit=emit)
            expected = reference.add(rank, steps, times, values, world_size=world_size, now_ns=now)
        got: list[StepAggregate] = []
        aggregate_steps(emit, RUN, "m", generation=0, world_size=world_size, into=got)
        assert exact(got) == exact([ref_aggregate(step, acc, world_size) for step, acc in expected])
        assert state_of(tracker) == ref_state_of(reference)
        restored = StepTracker.from_wire(orjson.loads(orjson.dumps(tracker.to_wire())))
        assert state_of(restored) == state_of(tracker)


def test_step_mean_where_fsum_raises() -> None:
    assert math.isnan(step_mean([math.inf, -math.inf, 1.0]))
    assert step_mean([1e308, 1e308, 1e308]) == 1e308
    assert step_mean([-1.7e308, -1.7e308, 3.0]) == pytest.approx(-1.7e308 / 3 * 2)
    assert step_mean([1.0, 2.0, 4.0]) == math.fsum([1.0, 2.0, 4.0]) / 3


def test_inf_and_minus_inf_in_one_step_do_not_fail_the_envelope() -> None:
    from trackstream.schemas import Envelope, MetricBatch, encode

    processor = Processor()
    out = Output()
    for rank, value in enumerate([math.inf, -math.inf]):
        envelope = Envelope(producer_id=f"p{rank}", seq=0, sent_ns=0, entity=RUN, rank=rank, world_size=2,
                            metrics=[MetricBatch("m", "series", [0], [0], [value])])
        out.extend(processor.process(encode(envelope), source=SourcePosition("t", 0, rank)))
    assert out.dlq == []
    (aggregate,) = out.step_aggregates
    assert math.isnan(aggregate.mean)
    assert (aggregate.min, aggregate.max, aggregate.count) == (-math.inf, math.inf, 2)


def test_version_1_state_still_loads() -> None:
    wire = [3, [[5, 10, 20, 0, [0, 2], [1.5, None], [[1, float_to_bits(-math.inf)]]]], [[6, 11, 21, 1, [1], [2.0], []]]]
    tracker = StepTracker.from_wire(wire)
    assert tracker.generation == 3
    assert tracker.pending == {5: [10, 20, 0, {0: 1.5, 2: -math.inf}]}
    assert tracker.late == {6: [11, 21, 1, {1: 2.0}]}


# --- output encoding ---------------------------------------------------------------------------------------


def ref_latest(records: list[Any], *identity: str) -> dict[bytes, list[Any]]:
    latest: dict[tuple[Any, ...], Any] = {}
    for record in records:
        key = (record.entity, *(getattr(record, name) for name in identity))
        latest.pop(key, None)
        latest[key] = record
    groups: dict[bytes, list[Any]] = {}
    for record in latest.values():
        groups.setdefault(record.entity.key(), []).append(record)
    return groups


def ref_messages(out: Output, topics: Topics) -> list[tuple[str, bytes | None, bytes]]:
    messages = []
    for topic, groups in ((topics.steps, ref_latest(out.step_aggregates, "metric", "generation", "step")),
                          (topics.entities, ref_latest(out.entity_states))):
        messages += [(topic, key, encode_records(group)) for key, group in groups.items()]
    return messages


def random_output(rng: random.Random) -> Output:
    entities = [EntityRef("p", "run", f"r{i}") for i in range(3)]
    out = Output()
    for _ in range(rng.randint(0, 40)):
        entity = EntityRef(*[getattr(rng.choice(entities), name) for name in ("project", "type", "id")])
        floats = [rng.choice(SPECIALS) if rng.random() < 0.3 else rng.uniform(-1e6, 1e6) for _ in range(3)]
        out.step_aggregates.append(StepAggregate(entity, rng.choice("ab"), rng.randint(0, 1), rng.randint(0, 5),
                                                 *floats, rng.randint(1, 4), 4, rng.randint(0, 99)))
        if rng.random() < 0.3:
            out.entity_states.append(EntityState(entity, "n", "running", params={"x": [1, {"y": None}]},
                                                 version=rng.randint(0, 9)))
    return out


@pytest.mark.parametrize("seed", range(30))
def test_output_messages_equal_the_generic_encoding(seed: int) -> None:
    out = random_output(random.Random(seed))
    topics = Topics("x")
    got = [(m.topic, m.key, m.value) for m in output_messages(out, topics)]
    assert got == ref_messages(out, topics)


def test_fast_encoders_round_trip_exactly() -> None:
    out = random_output(random.Random(99))
    assert encode_step_aggregates(out.step_aggregates) == encode_records(out.step_aggregates)
    decoded = decode_step_aggregates(encode_step_aggregates(out.step_aggregates))
    assert exact(decoded) == exact(out.step_aggregates)


def test_entity_state_round_trips_with_nonfinite_pending_values() -> None:
    from trackstream.schemas import Envelope, MetricBatch

    envelope = Envelope(producer_id="p0", seq=0, sent_ns=0, entity=RUN, world_size=3,
                        metrics=[MetricBatch("m", "series", [0, 1, 2], [0, 0, 0], [math.nan, -math.inf, -0.0])])
    ctx = EntityCtx.new(envelope, 0)
    emit: list[Any] = []
    ctx.steps_for("m").add(0, [0, 1, 2], [0, 0, 0], [math.nan, -math.inf, -0.0], world_size=3, now_ns=0, emit=emit)
    restored = EntityCtx.from_bytes(ctx.to_bytes())
    assert state_of(restored.steps["m"]) == state_of(ctx.steps["m"])
    assert restored.to_bytes() == ctx.to_bytes()
