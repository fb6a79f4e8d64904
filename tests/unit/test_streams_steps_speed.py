"""Cross-rank steps held as columns (trackstream.streams.step_columns) against one accumulator per step.

The reference below is the semantics written plainly: one dict per step, one dict operation per point, the
aggregate computed from the step's values after the whole batch. Every test compares the emitted aggregates bit for
bit (a signed zero, a NaN payload or a differently rounded mean would fail) and the steps held, in arrival order.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_streams_fastpath import RefAcc, RefTracker, ref_aggregate

from trackstream.schemas import EntityRef, float_to_bits
from trackstream.schemas.floats import exact_float
from trackstream.schemas.processed import StepAggregate
from trackstream.streams.aggregate import COLUMNS, StepTracker, aggregate_steps

RUN = EntityRef("p", "run", "columns")
SPECIALS = (math.nan, -math.nan, math.inf, -math.inf, 0.0, -0.0, 5e-324, 1.7e308, -1.7e308, 1.5)
TIMEOUT, RETENTION = 1_000, 3_000


# --- reference ------------------------------------------------------------------------------------------------


class Reference(RefTracker):
    """test_streams_fastpath's plain tracker, with this module's timeouts, emitting aggregates."""

    def add(self, rank: int, steps: list[int], times: list[int], values: list[float], *,  # type: ignore[override]
            world_size: int, now_ns: int) -> list[StepAggregate]:
        emitted = super().add(rank, steps, times, values, world_size=world_size, now_ns=now_ns)
        return [aggregate(step, acc, world_size) for step, acc in emitted]  # read after the whole batch

    def expire(self, now_ns: int, world_size: int) -> list[StepAggregate]:  # type: ignore[override]
        return [aggregate(step, acc, world_size) for step, acc in super().expire(now_ns, TIMEOUT, RETENTION)]

    def legacy_wire(self) -> list[Any]:
        """The checkpoint as state versions 2 and 3 wrote it: ``{step: [first, time, emitted, {rank: value}]}``."""
        def part(accs: dict[int, RefAcc]) -> dict[str, Any]:
            return {str(step): [acc.first_seen_ns, acc.time_ns, acc.emitted,
                                {str(rank): exact_float(v) for rank, v in acc.values.items()}]
                    for step, acc in accs.items()}
        return [0, part(self.pending), part(self.late)]


def aggregate(step: int, acc: RefAcc, world_size: int) -> StepAggregate:
    return dataclasses.replace(ref_aggregate(step, acc, world_size), entity=RUN)


# --- the two side by side ----------------------------------------------------------------------------------------


def bits(records: list[StepAggregate]) -> list[tuple[Any, ...]]:
    return [(r.step, float_to_bits(r.mean), float_to_bits(r.min), float_to_bits(r.max), r.count, r.world_size,
             r.time_ns) for r in records]


def held(tracker: StepTracker) -> list[list[Any]]:
    return [[(step, a[0], a[1], a[2], [(rank, float_to_bits(v)) for rank, v in a[3].items()])
             for step, a in view.items()] for view in (tracker.pending, tracker.late)]


def ref_held(reference: Reference) -> list[list[Any]]:
    return [[(step, a.first_seen_ns, a.time_ns, a.emitted, [(rank, float_to_bits(v)) for rank, v in a.values.items()])
             for step, a in part.items()] for part in (reference.pending, reference.late)]


@dataclass
class Pair:
    world_size: int
    tracker: StepTracker = field(default_factory=lambda: StepTracker(0))
    reference: Reference = field(default_factory=Reference)
    now: int = 0

    def add(self, rank: int, steps: list[int], values: list[float], times: list[int] | None = None) -> list[Any]:
        times = [self.now + step % 7 + rank for step in steps] if times is None else times
        emit: list[Any] = []
        self.tracker.add(rank, steps, times, values, world_size=self.world_size, now_ns=self.now, emit=emit)
        got: list[StepAggregate] = []
        aggregate_steps(emit, RUN, "m", generation=0, world_size=self.world_size, into=got)
        expected = self.reference.add(rank, steps, times, values, world_size=self.world_size, now_ns=self.now)
        assert bits(got) == bits(expected)
        self.check()
        return bits(got)

    def expire(self) -> list[Any]:
        emit: list[Any] = []
        changed = self.tracker.expire(self.now, TIMEOUT, RETENTION, emit)
        before = ref_held(self.reference)
        got: list[StepAggregate] = []
        aggregate_steps(emit, RUN, "m", generation=0, world_size=self.world_size, into=got)
        expected = self.reference.expire(self.now, self.world_size)
        assert bits(got) == bits(expected)
        assert changed == (ref_held(self.reference) != before)
        self.check()
        return bits(got)

    def restore(self, *, legacy: bool = False) -> None:
        wire = self.reference.legacy_wire() if legacy else self.tracker.to_wire()
        blob = orjson.dumps(wire, option=orjson.OPT_NON_STR_KEYS)
        self.tracker = StepTracker.from_wire(orjson.loads(blob))
        if not legacy:
            assert orjson.dumps(self.tracker.to_wire()) == blob  # a restored tracker writes the same checkpoint
        self.check()

    def check(self) -> None:
        assert held(self.tracker) == ref_held(self.reference)
        assert bool(self.tracker.pending) == bool(self.reference.pending)
        assert bool(self.tracker.late) == bool(self.reference.late)
        assert len(self.tracker.pending) == len(self.reference.pending)


# --- the property ----------------------------------------------------------------------------------------------

values_st = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(SPECIALS),
                      st.floats(-10, 10))


@st.composite
def batch_steps(draw: st.DrawFn) -> list[int]:
    kind = draw(st.sampled_from(["block", "range", "strided", "reversed", "repeated", "random"]))
    if kind == "block":  # every rank flushing the same blocks: the common case
        size = draw(st.sampled_from([4, 8]))
        start = draw(st.integers(0, 6)) * size
        return list(range(start, start + size))
    start = draw(st.integers(0, 48))
    if kind == "range":
        return list(range(start, start + draw(st.integers(1, 20))))
    if kind == "strided":
        return list(range(start, start + 40, draw(st.integers(2, 5))))
    if kind == "reversed":
        return list(range(start + draw(st.integers(1, 12)), start, -1))
    if kind == "repeated":  # a run, then part of it again
        steps = list(range(start, start + draw(st.integers(1, 12))))
        return steps + steps[draw(st.integers(0, len(steps) - 1)):][:draw(st.integers(1, 4))]
    return draw(st.lists(st.integers(0, 40), max_size=16))  # repeats, gaps, any order


@st.composite
def operations(draw: st.DrawFn, world_size: int) -> list[tuple[Any, ...]]:
    ops: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(1, 30))):
        op = draw(st.sampled_from(["add"] * 6 + ["expire", "restore", "legacy"]))
        advance = draw(st.sampled_from([0, 0, 100, 700, 1_500, 4_000]))
        if op == "add":
            steps = draw(batch_steps())
            values = draw(st.lists(values_st, min_size=len(steps), max_size=len(steps)))
            ops.append((op, advance, draw(st.integers(0, world_size - 1)), steps, values))
        else:
            ops.append((op, advance))
    return ops


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_any_interleaving_emits_what_one_accumulator_per_step_emits(data: st.DataObject) -> None:
    pair = Pair(world_size=data.draw(st.integers(1, 4)))
    for op in data.draw(operations(pair.world_size)):
        pair.now += op[1]
        if op[0] == "add":
            pair.add(op[2], op[3], op[4])
        elif op[0] == "expire":
            pair.expire()
        else:
            pair.restore(legacy=op[0] == "legacy")


@pytest.mark.parametrize("seed", range(12))
def test_ranks_flushing_at_their_own_boundaries(seed: int) -> None:
    """Eight ranks, each flushing blocks of its own sizes, arriving in any order; some lag past the timeout."""
    rng = random.Random(seed)
    pair = Pair(world_size=8)
    cursors = [0] * 8
    for _ in range(120):
        pair.now += rng.choice([0, 10, 300, 1_200])
        rank = rng.randrange(8)
        if rng.random() < 0.1:
            pair.expire()
            continue
        if rank == 7 and rng.random() < 0.7:  # the slow rank: the others time out waiting for it
            continue
        size = rng.choice([1, 50, 100, 128, 250, 333])
        stride = 3 if seed % 3 == 0 else 1
        steps = list(range(cursors[rank], cursors[rank] + size * stride, stride))
        cursors[rank] += size * stride
        if rng.random() < 0.1:  # a rank re-logs what it sent (a restart from a checkpoint)
            steps = steps[: size // 2] + steps[: size // 2]
        values = [rng.choice(SPECIALS) if rng.random() < 0.02 else rng.uniform(-1, 1) for _ in steps]
        pair.add(rank, steps, values)
        if rng.random() < 0.05:
            pair.restore()


# --- edge cases, one by one ---------------------------------------------------------------------------------------


def test_a_complete_step_is_emitted_once_all_ranks_reported() -> None:
    pair = Pair(world_size=3)
    assert pair.add(0, [0, 1, 2], [1.0, 2.0, 3.0]) == []
    assert pair.add(2, [0, 1, 2], [3.0, 4.0, 5.0]) == []
    emitted = pair.add(1, [0, 1, 2], [2.0, 3.0, 4.0])
    assert [(step, count) for step, _m, _lo, _hi, count, _ws, _t in emitted] == [(0, 3), (1, 3), (2, 3)]
    assert not pair.tracker.pending
    assert not pair.tracker.late


def test_a_relogged_pending_step_takes_the_last_value_and_keeps_the_rank_order() -> None:
    pair = Pair(world_size=2)
    pair.add(0, [0, 1], [0.0, 5.0], times=[10, 10])
    pair.add(0, [0, 1], [-0.0, 6.0], times=[3, 20])  # replaces rank 0's values; the time stays the highest seen
    assert pair.tracker.pending[0] == [0, 10, 0, {0: -0.0}]
    for time_ns in range(30, 90, 10):  # re-sent again and again: the times do not pile up
        pair.add(0, [0, 1], [-0.0, 6.0], times=[3, time_ns])
    assert len(pair.tracker.to_wire()[1][0][4]) == 1
    ((_step, _mean, low, high, count, _ws, time_ns), _) = pair.add(1, [0, 1], [0.0, 7.0], times=[5, 5])
    assert (count, time_ns) == (2, 10)
    assert (low, high) == (float_to_bits(-0.0), float_to_bits(-0.0))  # min/max keep the first of equal values


def test_a_timed_out_step_is_emitted_late_and_again_for_each_late_rank() -> None:
    pair = Pair(world_size=3)
    pair.add(0, [0, 1], [1.0, 1.0], times=[5, 6])
    pair.now = TIMEOUT
    assert [count for *_, count, _ws, _t in pair.expire()] == [1, 1]
    assert list(pair.tracker.late) == [0, 1]
    pair.now += 10
    ((step, _m, _lo, _hi, count, _ws, time_ns),) = pair.add(1, [1], [3.0], times=[99])
    assert (step, count, time_ns) == (1, 2, 6)  # a late rank does not move the step's time
    assert pair.add(1, [1], [4.0]) == []  # a rank it has: the value changes, nothing is emitted
    assert [count for *_, count, _ws, _t in pair.add(2, [0, 1], [2.0, 2.0])] == [2, 3]
    assert list(pair.tracker.late) == [0]  # step 1 is complete: forgotten
    pair.now = RETENTION
    assert pair.expire() == []
    assert not pair.tracker.late
    assert pair.add(1, [0], [1.0]) == []  # past the retention: a new pending step
    assert list(pair.tracker.pending) == [0]


def test_a_step_repeated_in_one_batch_is_emitted_with_its_last_value() -> None:
    pair = Pair(world_size=3)
    pair.add(0, [0, 1, 2, 3, 4, 5], [1.0] * 6)
    pair.now = TIMEOUT
    pair.expire()
    (first, *_rest) = pair.add(1, [1, 2, 1, 3, 1], [2.0, 2.0, 8.0, 2.0, 5.0])
    assert first[:2] == (1, float_to_bits(3.0))  # step 1: the mean of 1.0 and the batch's last 5.0
    ((step, mean, *_),) = pair.add(2, [4, 5, 4], [1.0, 1.0, 7.0])[:1]  # emitted with [4, 5], then 4 alone changes
    assert (step, mean) == (4, float_to_bits(4.0))
    assert pair.add(0, [2, 2], [4.0, 6.0]) == []  # a rank the late step has: its value changes twice
    ((step, _m, _lo, high, count, _ws, _t),) = pair.add(2, [2, 2], [7.0, 9.0])
    assert (step, count, high) == (2, 3, float_to_bits(7.0))  # complete at the first point: forgotten, and ...
    assert pair.tracker.pending[2][3] == {2: 9.0}  # ... the second point starts step 2 over


def test_batches_that_cover_parts_of_pieces() -> None:
    pair = Pair(world_size=2)
    pair.add(0, list(range(0, 100)), [float(i) for i in range(100)])
    pair.add(0, list(range(100, 200)), [float(i) for i in range(100)])
    emitted = pair.add(1, list(range(50, 150)), [1.0] * 100)  # the end of one piece and the start of the next
    assert [r[0] for r in emitted] == list(range(50, 150))
    assert list(pair.tracker.pending) == [*range(0, 50), *range(150, 200)]
    assert pair.add(1, list(range(198, 160, -2)), [2.0] * 19) != []  # backwards, every other step
    assert pair.add(1, [5, 300, 7, 301, 9], [3.0] * 5) != []  # held steps and new ones, interleaved
    assert list(pair.tracker.pending)[-2:] == [300, 301]
    pair.restore()
    pair.add(1, list(range(0, 400)), [4.0] * 400)  # completes what rank 0 holds, re-logs 300 and 301, starts the rest
    assert list(pair.tracker.pending)[:3] == [300, 301, 5]


def test_nonfinite_values() -> None:
    pair = Pair(world_size=3)
    pair.add(0, [0, 1, 2, 3], [math.inf, math.nan, 1.7e308, math.nan])
    pair.add(1, [0, 1, 2, 3], [-math.inf, 2.0, 1.7e308, math.nan])
    rows = pair.add(2, [0, 1, 2, 3], [1.0, 4.0, 1.7e308, math.nan])
    means = [bits_ for _s, bits_, *_ in rows]
    assert math.isnan(_float(means[0]))  # +inf and -inf
    assert math.isnan(_float(means[1]))  # NaN is data: the mean is NaN ...
    assert (_float(rows[1][2]), _float(rows[1][3])) == (2.0, 4.0)  # ... and min/max ignore it
    assert _float(means[2]) == pytest.approx(1.7e308)  # the sum overflows, the mean does not
    assert math.isnan(_float(rows[3][2]))  # nothing but NaN
    assert math.isnan(_float(rows[3][3]))


def test_checkpoints_of_every_layout_load() -> None:
    pair = Pair(world_size=3)
    pair.add(0, [0, 1, 2], [math.nan, -math.inf, -0.0])
    pair.add(1, [1, 2], [1.0, 2.0])
    pair.now = TIMEOUT
    pair.expire()
    pair.add(0, [5, 6], [1.0, 2.0])
    wire = orjson.loads(orjson.dumps(pair.tracker.to_wire()))
    assert wire[3] == COLUMNS
    assert wire[2][0][:4] == [0, 1, [0], [0]]  # late: first seen at 0, emitted with one rank, rank 0, step 0
    pair.restore(legacy=True)  # the map of state versions 2 and 3
    v1 = [0, [[5, TIMEOUT, 0, 0, [0], [1.0], []], [6, TIMEOUT, 0, 0, [0], [2.0], []]], []]  # version 1: lists
    tracker = StepTracker.from_wire(v1)
    assert tracker.pending == {5: [TIMEOUT, 0, 0, {0: 1.0}], 6: [TIMEOUT, 0, 0, {0: 2.0}]}
    with pytest.raises(ValueError, match="layout"):
        StepTracker.from_wire([0, [], [], "rows"])


def test_an_adversarial_batch_against_a_large_piece() -> None:
    """Every other step of a 20,000-step piece backwards, then held and new steps in turn: one step per run."""
    pair = Pair(world_size=3)
    pair.add(0, list(range(0, 40_000, 2)), [1.0] * 20_000)
    pair.add(1, list(range(39_998, -1, -4)), [2.0] * 10_000)
    mixed = [step for two in zip(range(2, 40_000, 8), range(3, 40_000, 8), strict=True) for step in two]
    assert len(pair.add(2, mixed, [3.0] * len(mixed))) == 5_000
    assert len(pair.tracker.pending) == 20_000 - 5_000 + 5_000


def _float(value_bits: int) -> float:
    from trackstream.schemas import bits_to_float

    return bits_to_float(value_bits)
