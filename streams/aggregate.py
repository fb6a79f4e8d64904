"""Running summaries and cross-rank step aggregation over metric columns.

Per-point work stays in builtins (``min``/``max``/``sum``/``zip`` over lists): a summary update is a handful of
C-level passes over an envelope's columns. Cross-rank aggregation needs one dict operation per point, and
only for entities with ``world_size > 1``: with one rank the step aggregate would equal the point, so none is
emitted (readers take the points of rank 0 directly).

NaN is data: it counts in ``count`` and in a step's ``count``, makes a step ``mean`` NaN, and is ignored by
``min``/``max`` (which stay NaN while no other value was seen).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from trackstream.schemas.envelope import EntityRef
from trackstream.schemas.floats import bits_to_float, exact_float, inexact_float, join_nonfinite
from trackstream.schemas.processed import MetricSummary, StepAggregate

NAN = math.nan


@dataclass(slots=True)
class Summary:
    """Running summary of one (entity, metric, generation)."""

    kind: str
    generation: int
    count: int = 0
    last: float = NAN
    last_step: int = 0
    last_time_ns: int = -1
    min: float = NAN
    min_step: int = 0
    max: float = NAN
    max_step: int = 0
    first_time_ns: int = 0
    version: int = 0

    def update(self, steps: list[int], times_ns: list[int], values: list[float]) -> None:
        """Fold one column batch in; ``last`` is the point with the highest (step, time), later wins ties."""
        n = len(values)
        if n == 0:
            return
        top = max(steps)
        if steps[-1] == top and steps.count(top) == 1:
            index = n - 1
        else:
            _step, _time, index = max(zip(steps, times_ns, range(n), strict=True))
        if self.count == 0 or (steps[index], times_ns[index]) >= (self.last_step, self.last_time_ns):
            self.last, self.last_step, self.last_time_ns = values[index], steps[index], times_ns[index]
        self._update_extremes(steps, values)
        first = min(times_ns)
        if self.count == 0 or first < self.first_time_ns:
            self.first_time_ns = first
        self.count += n

    def _update_extremes(self, steps: list[int], values: list[float]) -> None:
        if math.isnan(sum(values)):
            present = [v for v in values if v == v]  # noqa: PLR0124 - NaN is the one value unequal to itself
            if not present:
                return
        else:
            present = values
        low, high = min(present), max(present)
        if not self.min <= low:  # also true while self.min is NaN
            self.min, self.min_step = low, steps[values.index(low)]
        if not self.max >= high:
            self.max, self.max_step = high, steps[values.index(high)]

    def record(self, entity: EntityRef, metric: str) -> MetricSummary:
        """The summary as the processed-topic record of (``entity``, ``metric``, generation).

        ``last_time_ns`` is clamped to 0 while no point was folded in (it starts at -1).
        """
        return MetricSummary(
            entity=entity, metric=metric, generation=self.generation, kind=self.kind, count=self.count,
            last=self.last, last_step=self.last_step, min=self.min, min_step=self.min_step, max=self.max,
            max_step=self.max_step, first_time_ns=self.first_time_ns, last_time_ns=max(self.last_time_ns, 0),
            version=self.version,
        )

    def to_wire(self) -> list[Any]:
        """The summary as a JSON-ready list of 12 in field order (``kind`` ... ``version``).

        Floats go through :func:`~trackstream.schemas.floats.exact_float`: non-finite ones as ``{"$f64": bits}``.
        """
        return [self.kind, self.generation, self.count, exact_float(self.last), self.last_step,
                self.last_time_ns, exact_float(self.min), self.min_step, exact_float(self.max), self.max_step,
                self.first_time_ns, self.version]

    @classmethod
    def from_wire(cls, wire: list[Any]) -> Summary:
        """Rebuild a summary from :meth:`to_wire`'s 12-element list (``{"$f64": bits}`` back to floats)."""
        kind, gen, count, last, last_step, last_time, low, low_step, high, high_step, first, version = wire
        return cls(kind=kind, generation=gen, count=count, last=_state_float(last), last_step=last_step,
                   last_time_ns=last_time, min=_state_float(low), min_step=low_step,
                   max=_state_float(high), max_step=high_step, first_time_ns=first, version=version)


# A pending step is a plain list ``[first_seen_ns, time_ns, emitted, {rank: value}]``, not an object: there is
# one per (metric, step) of a multi-rank run, and a list is cheap to build and serializes in one orjson call.
FIRST_SEEN, TIME, EMITTED, VALUES = 0, 1, 2, 3
StepAcc = list[Any]
Emitted = list[tuple[int, StepAcc]]


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
    """Append the aggregate of every emitted step: mean, min/max ignoring NaN, count, latest point time."""
    fsum, append = math.fsum, into.append
    for step, acc in emit:
        values = list(acc[VALUES].values())
        count = len(values)
        try:
            total = fsum(values)
        except (ValueError, OverflowError):
            total = NAN
        if total == total:  # noqa: PLR0124 - no NaN among the values: min/max see them all
            append(StepAggregate(entity, metric, generation, step, total / count, min(values), max(values),
                                 count, world_size, acc[TIME]))
            continue
        present = [v for v in values if v == v]  # noqa: PLR0124
        append(StepAggregate(entity, metric, generation, step, step_mean(values),
                             min(present) if present else NAN, max(present) if present else NAN, count,
                             world_size, acc[TIME]))


@dataclass(slots=True)
class StepTracker:
    """Cross-rank accumulators of one (entity, metric, generation).

    ``pending`` holds steps not yet emitted, in arrival order (so timeouts scan from the front and stop
    early); ``late`` holds steps emitted on timeout with fewer than ``world_size`` ranks, kept for
    ``retention`` so that a late rank re-emits the step with a higher count. Both map step to a
    :data:`StepAcc` list.
    """

    generation: int
    pending: dict[int, StepAcc]
    late: dict[int, StepAcc]

    def add(self, rank: int, steps: list[int], times_ns: list[int], values: list[float], *, world_size: int,
            now_ns: int, emit: Emitted) -> None:
        """Record one rank's points; steps that became complete (or grew after a timeout) go to ``emit``."""
        if self.late:
            self._add_with_late(rank, steps, times_ns, values, world_size=world_size, now_ns=now_ns, emit=emit)
            return
        pending = self.pending
        if not pending and _contiguous(steps):  # the first rank of a flush: every step is new
            pending.update(zip(steps, [[now_ns, time_ns, 0, {rank: value}]
                                       for time_ns, value in zip(times_ns, values, strict=True)], strict=True))
            return
        get, append = pending.get, emit.append
        for step, time_ns, value in zip(steps, times_ns, values, strict=True):
            acc = get(step)
            if acc is None:
                pending[step] = [now_ns, time_ns, 0, {rank: value}]
                continue
            ranks = acc[VALUES]
            ranks[rank] = value
            if time_ns > acc[TIME]:  # noqa: PLR1730 - a comparison is cheaper than a max() call per point
                acc[TIME] = time_ns
            if len(ranks) >= world_size:
                del pending[step]
                append((step, acc))

    def _add_with_late(self, rank: int, steps: list[int], times_ns: list[int], values: list[float], *,
                       world_size: int, now_ns: int, emit: Emitted) -> None:
        pending, late = self.pending, self.late
        for step, time_ns, value in zip(steps, times_ns, values, strict=True):
            acc = pending.get(step)
            if acc is None:
                acc = late.get(step)
                if acc is None:
                    pending[step] = [now_ns, time_ns, 0, {rank: value}]
                    continue
                ranks = acc[VALUES]
                ranks[rank] = value
                if len(ranks) > acc[EMITTED]:
                    acc[EMITTED] = len(ranks)
                    emit.append((step, acc))
                    if len(ranks) >= world_size:
                        del late[step]
                continue
            ranks = acc[VALUES]
            ranks[rank] = value
            if time_ns > acc[TIME]:  # noqa: PLR1730 - a comparison is cheaper than a max() call per point
                acc[TIME] = time_ns
            if len(ranks) >= world_size:
                del pending[step]
                emit.append((step, acc))

    def expire(self, now_ns: int, timeout_ns: int, retention_ns: int, emit: Emitted) -> bool:
        """Emit steps that waited ``timeout_ns``; forget late ones after ``retention_ns``. True if changed."""
        changed = False
        late, pending = self.late, self.pending
        for step in list(late):
            if late[step][FIRST_SEEN] + retention_ns > now_ns:
                break
            del late[step]
            changed = True
        for step in list(pending):
            acc = pending[step]
            if acc[FIRST_SEEN] + timeout_ns > now_ns:
                break
            del pending[step]
            acc[EMITTED] = len(acc[VALUES])
            late[step] = acc
            emit.append((step, acc))
            changed = True
        return changed

    def to_wire(self) -> list[Any]:
        """``[generation, pending, late]``; each map is ``{step: [first_seen_ns, time_ns, emitted, {rank: value}]}``.

        The maps are orjson fragments; non-finite values are written as ``{"$f64": bits}``.
        """
        return [self.generation, _accs_to_wire(self.pending), _accs_to_wire(self.late)]

    @classmethod
    def from_wire(cls, wire: list[Any]) -> StepTracker:
        """Rebuild a tracker from :meth:`to_wire`'s ``[generation, pending, late]``; version-1 state loads too."""
        generation, pending, late = wire
        if isinstance(pending, list):  # state version 1: one list per step
            return cls(generation=generation, pending=dict(_acc_from_v1(w) for w in pending),
                       late=dict(_acc_from_v1(w) for w in late))
        return cls(generation=generation, pending=_accs_from_wire(pending), late=_accs_from_wire(late))


def _contiguous(steps: list[int]) -> bool:
    """True when ``steps`` is ``first, first + 1, ..., last`` (so no step repeats)."""
    return not steps or (steps[-1] - steps[0] == len(steps) - 1 and steps == list(range(steps[0], steps[-1] + 1)))


def _accs_to_wire(accs: dict[int, StepAcc]) -> orjson.Fragment:
    """``{step: [first_seen, time, emitted, {rank: value}]}`` as JSON, in one orjson call when all finite.

    orjson writes non-finite floats as ``null``, and nothing else in the structure can be null: when
    ``null`` shows up, the values are written again with non-finite ones as ``{"$f64": bits}``.
    """
    blob = orjson.dumps(accs, option=orjson.OPT_NON_STR_KEYS)
    if b"null" in blob:
        exact = {step: [a[FIRST_SEEN], a[TIME], a[EMITTED], {rank: exact_float(v) for rank, v in a[VALUES].items()}]
                 for step, a in accs.items()}
        blob = orjson.dumps(exact, option=orjson.OPT_NON_STR_KEYS)
    return orjson.Fragment(blob)


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
