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

from schemas.envelope import EntityRef
from schemas.processed import MetricSummary, StepAggregate
from streams.floats import float_from_wire, float_to_wire, floats_from_wire, floats_to_wire

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
        return MetricSummary(
            entity=entity, metric=metric, generation=self.generation, kind=self.kind, count=self.count,
            last=self.last, last_step=self.last_step, min=self.min, min_step=self.min_step, max=self.max,
            max_step=self.max_step, first_time_ns=self.first_time_ns, last_time_ns=max(self.last_time_ns, 0),
            version=self.version,
        )

    def to_wire(self) -> list[Any]:
        return [self.kind, self.generation, self.count, float_to_wire(self.last), self.last_step,
                self.last_time_ns, float_to_wire(self.min), self.min_step, float_to_wire(self.max), self.max_step,
                self.first_time_ns, self.version]

    @classmethod
    def from_wire(cls, wire: list[Any]) -> Summary:
        kind, gen, count, last, last_step, last_time, low, low_step, high, high_step, first, version = wire
        return cls(kind=kind, generation=gen, count=count, last=float_from_wire(last), last_step=last_step,
                   last_time_ns=last_time, min=float_from_wire(low), min_step=low_step,
                   max=float_from_wire(high), max_step=high_step, first_time_ns=first, version=version)


@dataclass(slots=True)
class StepAcc:
    """One (metric, step) waiting for ranks: arrival time of its first point, latest point time, values by rank."""

    first_seen_ns: int
    time_ns: int
    values: dict[int, float]
    emitted: int = 0

    def aggregate(self, entity: EntityRef, metric: str, generation: int, step: int, world_size: int,
                  ) -> StepAggregate:
        values = list(self.values.values())
        present = [v for v in values if v == v]  # noqa: PLR0124
        return StepAggregate(
            entity=entity, metric=metric, generation=generation, step=step,
            mean=math.fsum(values) / len(values),
            min=min(present) if present else NAN, max=max(present) if present else NAN,
            count=len(values), world_size=world_size, time_ns=self.time_ns,
        )

    def to_wire(self, step: int) -> list[Any]:
        ranks = list(self.values)
        values, nonfinite = floats_to_wire(list(self.values.values()))
        return [step, self.first_seen_ns, self.time_ns, self.emitted, ranks, values, nonfinite]

    @classmethod
    def from_wire(cls, wire: list[Any]) -> tuple[int, StepAcc]:
        step, first_seen, time_ns, emitted, ranks, values, nonfinite = wire
        return step, cls(first_seen_ns=first_seen, time_ns=time_ns, emitted=emitted,
                         values=dict(zip(ranks, floats_from_wire(values, nonfinite), strict=True)))


@dataclass(slots=True)
class StepTracker:
    """Cross-rank accumulators of one (entity, metric, generation).

    ``pending`` holds steps not yet emitted, in arrival order (so timeouts scan from the front and stop
    early); ``late`` holds steps emitted on timeout with fewer than ``world_size`` ranks, kept for
    ``retention`` so that a late rank re-emits the step with a higher count.
    """

    generation: int
    pending: dict[int, StepAcc]
    late: dict[int, StepAcc]

    def add(self, rank: int, steps: list[int], times_ns: list[int], values: list[float], *, world_size: int,
            now_ns: int, emit: list[tuple[int, StepAcc]]) -> None:
        """Record one rank's points; steps that became complete (or grew after a timeout) go to ``emit``."""
        pending, late = self.pending, self.late
        for step, time_ns, value in zip(steps, times_ns, values, strict=True):
            acc = pending.get(step)
            if acc is None:
                acc = late.get(step)
                if acc is None:
                    pending[step] = StepAcc(now_ns, time_ns, {rank: value})
                    continue
                acc.values[rank] = value
                if len(acc.values) > acc.emitted:
                    acc.emitted = len(acc.values)
                    emit.append((step, acc))
                    if len(acc.values) >= world_size:
                        del late[step]
                continue
            acc.values[rank] = value
            acc.time_ns = max(acc.time_ns, time_ns)
            if len(acc.values) >= world_size:
                del pending[step]
                emit.append((step, acc))

    def expire(self, now_ns: int, timeout_ns: int, retention_ns: int, emit: list[tuple[int, StepAcc]]) -> bool:
        """Emit steps that waited ``timeout_ns``; forget late ones after ``retention_ns``. True if changed."""
        changed = False
        for step in list(self.late):
            acc = self.late[step]
            if acc.first_seen_ns + retention_ns > now_ns:
                break
            del self.late[step]
            changed = True
        for step in list(self.pending):
            acc = self.pending[step]
            if acc.first_seen_ns + timeout_ns > now_ns:
                break
            del self.pending[step]
            acc.emitted = len(acc.values)
            self.late[step] = acc
            emit.append((step, acc))
            changed = True
        return changed

    def to_wire(self) -> list[Any]:
        return [self.generation, [acc.to_wire(step) for step, acc in self.pending.items()],
                [acc.to_wire(step) for step, acc in self.late.items()]]

    @classmethod
    def from_wire(cls, wire: list[Any]) -> StepTracker:
        generation, pending, late = wire
        return cls(generation=generation, pending=dict(StepAcc.from_wire(w) for w in pending),
                   late=dict(StepAcc.from_wire(w) for w in late))
