"""Cross-rank step aggregation over metric columns: the per-step mean over the ranks of a distributed run.

Its output (``<prefix>.steps``) is what the sink stores as the cross-rank rows of a series, which reads use
instead of scanning every rank (docs/storage.md). Steps wait for their ranks as columns
(:mod:`~trackstream.streams.step_columns`): a rank's batch is a few list operations, not one dict operation per
point, and a completed run of steps is aggregated by C-level passes over its columns. Only entities with
``world_size > 1`` are aggregated: with one rank the step aggregate would equal the point, so none is emitted
(readers take the points of rank 0 directly).

NaN is data: it counts in ``count`` and in a step's ``count``, makes a step ``mean`` NaN, and is ignored by
``min``/``max`` (which stay NaN while no other value was seen).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from itertools import repeat
from typing import Any, Final

from trackstream.schemas.envelope import EntityRef
from trackstream.schemas.floats import bits_to_float, inexact_float, join_nonfinite
from trackstream.schemas.processed import StepAggregate
from trackstream.streams.step_columns import Emitted, EmittedSteps, Piece, StepAcc, StepColumns

__all__ = ["COLUMNS", "EMITTED", "FIRST_SEEN", "TIME", "VALUES", "Emitted", "EmittedSteps", "StepAcc", "StepTracker",
           "StepView", "aggregate_steps", "step_mean"]

NAN = math.nan


# One step as ``[first_seen_ns, time_ns, emitted, {rank: value}]``: how the tracker held steps before columns (and
# checkpoints of state versions 1 to 3 hold them), and how :attr:`StepTracker.pending` and ``late`` still show them.
FIRST_SEEN, TIME, EMITTED, VALUES = 0, 1, 2, 3
COLUMNS: Final = "columns"  # the last element of a tracker's wire list since steps are held as columns


def step_mean(values: list[float]) -> float:
    """``fsum(values) / len(values)``, also where fsum raises: ``+inf`` with ``-inf`` gives NaN, and finite
    values whose sum overflows are summed scaled down by a power of two (exact), so their mean stays finite."""
    count = len(values)
    try:
        return math.fsum(values) / count
    except ValueError:
        return NAN
    except OverflowError:
        shift = count.bit_length()
        return math.ldexp(math.fsum([math.ldexp(v, -shift) for v in values]) / count, shift)


def aggregate_steps(emit: Emitted, entity: EntityRef, metric: str, *, generation: int, world_size: int,
                    into: list[StepAggregate]) -> None:
    """Append the aggregate of every emitted step: mean, min/max ignoring NaN, count, latest point time.

    Steps are emitted as columns (:data:`~trackstream.streams.step_columns.EmittedSteps`): the sums, minima, maxima
    and times of a run of steps are C-level passes over the rows of its rank columns. A run where a step holds NaN
    (or fsum fails, or sums of opposite infinities meet) goes step by step (:func:`_rows_stats`).
    """
    fsum = math.fsum
    for steps, columns, times in emit:
        count = len(columns)
        rows = list(zip(*columns, strict=True))
        try:
            totals: list[float] | None = list(map(fsum, rows))
        except (ValueError, OverflowError):
            totals = None
        if totals is not None and not math.isnan(sum(totals)):  # no NaN among the values: min/max see them all
            means = [total / count for total in totals]
            lows, highs = list(map(min, rows)), list(map(max, rows))
        else:
            means, lows, highs = _rows_stats(rows)
        latest = times[0] if len(times) == 1 else list(map(max, *times))
        into.extend(map(StepAggregate, repeat(entity), repeat(metric), repeat(generation), steps, means, lows, highs,
                        repeat(count), repeat(world_size), latest))


def _rows_stats(rows: list[tuple[float, ...]]) -> tuple[list[float], list[float], list[float]]:
    """Mean (:func:`step_mean`), min and max of each row of values, one by one; min/max ignore NaN."""
    means: list[float] = []
    lows: list[float] = []
    highs: list[float] = []
    for row in rows:
        try:
            total = math.fsum(row)
        except (ValueError, OverflowError):
            total = NAN
        if total == total:  # noqa: PLR0124 - no NaN among the values: min/max see them all
            means.append(total / len(row))
            lows.append(min(row))
            highs.append(max(row))
            continue
        present = [v for v in row if v == v]  # noqa: PLR0124
        means.append(step_mean(list(row)))
        lows.append(min(present) if present else NAN)
        highs.append(max(present) if present else NAN)
    return means, lows, highs


class StepTracker(StepColumns):
    """Cross-rank accumulators of one (entity, metric, generation): :class:`StepColumns` and its checkpoint format.

    ``pending`` holds steps not yet emitted, in arrival order (so timeouts scan from the front and stop
    early); ``late`` holds steps emitted on timeout with fewer than ``world_size`` ranks, kept for
    ``retention`` so that a late rank re-emits the step with a higher count. Both show as mappings of step to
    a :data:`StepAcc` list, and the constructor takes such mappings (steps held the way they were before columns).
    """

    __slots__ = ("generation",)

    def __init__(self, generation: int, pending: Mapping[int, StepAcc] | None = None,
                 late: Mapping[int, StepAcc] | None = None) -> None:
        super().__init__()
        self.generation = generation
        if pending:
            self.load_accs(pending, late=False)
        if late:
            self.load_accs(late, late=True)

    @property
    def pending(self) -> StepView:
        """Steps not emitted yet, in arrival order (so that timeouts scan from the front)."""
        return StepView(self._pending, self._index, late=False)

    @property
    def late(self) -> StepView:
        """Steps emitted on timeout with fewer than ``world_size`` ranks, kept for late ranks until the retention."""
        return StepView(self._late, self._index, late=True)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StepTracker):
            return NotImplemented
        return (self.generation, self.pending, self.late) == (other.generation, other.pending, other.late)

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by content

    def __repr__(self) -> str:
        return f"StepTracker(generation={self.generation}, pending={dict(self.pending)}, late={dict(self.late)})"

    def to_wire(self) -> list[Any]:
        """``[generation, pending, late, "columns"]``: pending and late as lists of pieces in arrival order, each
        ``[first_seen_ns, emitted, ranks, steps, time columns, value columns]`` (a value column per rank, in rank
        order; a step's time is the maximum of its time columns).

        The columns are orjson fragments; non-finite values are written as ``{"$f64": bits}``.
        """
        return [self.generation, self.pieces_to_wire(late=False), self.pieces_to_wire(late=True), COLUMNS]

    @classmethod
    def from_wire(cls, wire: list[Any]) -> StepTracker:
        """Rebuild a tracker from :meth:`to_wire`'s list; the ``[generation, pending, late]`` of state versions 1 to 3
        (one accumulator per step: a list per step in version 1, a map of step to accumulator since) loads too."""
        if len(wire) == 4:
            generation, pending, late, layout = wire
            if layout != COLUMNS:
                raise ValueError(f"unknown step tracker layout {layout!r}")
            tracker = cls(generation)
            tracker.load_pieces(map(_piece_from_wire, pending), late=False)
            tracker.load_pieces(map(_piece_from_wire, late), late=True)
            return tracker
        generation, pending, late = wire
        if isinstance(pending, list):  # state version 1: one list per step
            return cls(generation, dict(_acc_from_v1(w) for w in pending), dict(_acc_from_v1(w) for w in late))
        return cls(generation, _accs_from_wire(pending), _accs_from_wire(late))


class StepView(Mapping[int, StepAcc]):
    """Pending (or late) steps as ``{step: [first_seen_ns, time_ns, emitted, {rank: value}]}`` in arrival order.

    Built on access, for inspection and tests; only ``bool()`` is cheap.
    """

    __slots__ = ("_index", "_late", "_pieces")

    def __init__(self, pieces: Iterable[Piece], index: Mapping[int, Piece], *, late: bool) -> None:
        self._pieces, self._index, self._late = pieces, index, late

    def __getitem__(self, step: int) -> StepAcc:
        piece = self._index.get(step)
        if piece is None or piece.late != self._late:
            raise KeyError(step)
        return piece.acc(piece.position(step))

    def __iter__(self) -> Iterator[int]:
        for piece in self._pieces:
            yield from piece.window()

    def __len__(self) -> int:
        return sum(piece.stop - piece.start for piece in self._pieces)

    def __bool__(self) -> bool:
        return next(iter(self._pieces), None) is not None


def _piece_from_wire(wire: list[Any]) -> list[Any]:
    """A piece as :meth:`StepTracker.to_wire` wrote it, its value columns read back into floats."""
    first_seen, emitted, ranks, steps, times, values = wire
    return [first_seen, emitted, ranks, steps, times,
            [[v if isinstance(v, float) else _state_float(v) for v in column] for column in values]]


def _accs_from_wire(wire: dict[str, Any]) -> dict[int, StepAcc]:
    return {int(step): [first, time_ns, emitted, {int(rank): _state_float(v) for rank, v in ranks.items()}]
            for step, (first, time_ns, emitted, ranks) in wire.items()}


def _acc_from_v1(wire: list[Any]) -> tuple[int, StepAcc]:
    step, first_seen, time_ns, emitted, ranks, values, nonfinite = wire
    return step, [first_seen, time_ns, emitted, dict(zip(ranks, join_nonfinite(values, nonfinite), strict=True))]


def _state_float(wire: Any) -> float:
    """A float of the checkpointed state: ``{"$f64": bits}`` (the one codec), or ``[bits]`` as states written
    before it (versions 1 and 2) carry non-finite values, so that older checkpoints still load."""
    if isinstance(wire, list):
        return bits_to_float(wire[0])
    return float(inexact_float(wire))
