"""What one entity (run or model) remembers about the alert rules: :class:`RunAlerts`, a :class:`RuleState` a rule.

Only :class:`~trackstream.streams.alerts.AlertEvaluator` mutates it; it is checkpointed with the entity as JSON
(:meth:`RunAlerts.to_wire`).
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from typing import Any, Final

from trackstream.schemas.floats import exact_float, inexact_float

__all__ = ["ALERTS_STATE_VERSION", "RuleState", "RunAlerts"]

ALERTS_STATE_VERSION: Final = 1


class RuleState:
    """One rule's memory for one entity: the (metric, rank) keys inside its condition, per (metric, rank) the
    running minimum and the finite points seen (diverge), the last matching point's time and whether it fires
    (stalled)."""

    __slots__ = ("breaching", "last_ns", "minimums", "stalled")

    def __init__(self) -> None:
        self.breaching: set[tuple[str, int]] = set()
        self.minimums: dict[tuple[str, int], tuple[float | None, int]] = {}  # (metric, rank) -> (minimum, seen)
        self.last_ns: int | None = None
        self.stalled = False

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {}
        if self.breaching:
            wire["breaching"] = [list(key) for key in sorted(self.breaching)]
        if self.minimums:
            wire["minimums"] = [[metric, rank, None if low is None else exact_float(low), seen]
                                for (metric, rank), (low, seen) in sorted(self.minimums.items())]
        if self.last_ns is not None:
            wire["last_ns"] = self.last_ns
        if self.stalled:
            wire["stalled"] = True
        return wire


class RunAlerts:
    """The alert state of one entity, for every rule: mutated by
    :class:`~trackstream.streams.alerts.AlertEvaluator`, checkpointed as JSON.

    Rules the evaluator no longer has are dropped from it on the evaluator's next call with it.
    """

    __slots__ = ("_rule_ids", "_rules")

    def __init__(self) -> None:
        self._rules: dict[str, RuleState] = {}
        self._rule_ids: Collection[str] | None = None  # the evaluator's rule set this state was last pruned to

    def firing(self) -> list[str]:
        """Ids of the rules firing for this entity, sorted."""
        return sorted(rule_id for rule_id, rs in self._rules.items() if rs.breaching or rs.stalled)

    def is_firing(self, rule_id: str) -> bool:
        """True while rule ``rule_id`` fires for this entity (it fired and has not resolved)."""
        rs = self._rules.get(rule_id)
        return rs is not None and (bool(rs.breaching) or rs.stalled)

    def retain(self, rule_ids: Collection[str]) -> None:
        """Forget every rule whose id is not in ``rule_ids`` (firing ones too, without a resolved alert)."""
        for rule_id in [rule_id for rule_id in self._rules if rule_id not in rule_ids]:
            del self._rules[rule_id]
        self._rule_ids = rule_ids

    def prune_to(self, rule_ids: Collection[str]) -> None:
        """:meth:`retain` ``rule_ids`` unless this very collection was the last one retained (the evaluator keeps
        one frozenset per rule set, so the check is one identity test per call)."""
        if self._rule_ids is not rule_ids:
            self.retain(rule_ids)

    def rule_state(self, rule_id: str) -> RuleState:
        """The state of rule ``rule_id``, created empty on first use."""
        rs = self._rules.get(rule_id)
        if rs is None:
            rs = self._rules[rule_id] = RuleState()
        return rs

    def to_wire(self) -> dict[str, Any]:
        """``{"v": 1, "rules": {rule_id: {"breaching": [[metric, rank], ...], "minimums": [[metric, rank, minimum,
        seen], ...], "last_ns": int, "stalled": true}}}``, each key left out at its default (and rules with nothing
        to remember); JSON-able, each minimum an exact float (:func:`~trackstream.schemas.floats.exact_float`) or
        null, in sorted order. (A state written before the minimums were per rank, with one ``min`` and ``seen``,
        reads without them: a ``diverge`` rule learns each rank's minimum again.)"""
        rules = {rule_id: wire for rule_id in sorted(self._rules) if (wire := self._rules[rule_id].to_wire())}
        return {"v": ALERTS_STATE_VERSION, "rules": rules}

    @classmethod
    def from_wire(cls, wire: Any) -> RunAlerts:
        """Inverse of :meth:`to_wire`; raises :class:`ValueError` for a mapping it did not write."""
        rules = wire.get("rules") if isinstance(wire, dict) and wire.get("v") == ALERTS_STATE_VERSION else None
        if not isinstance(rules, dict):
            raise ValueError(f"not an alert state of version {ALERTS_STATE_VERSION}: {str(wire)[:80]}")
        state = cls()
        try:
            for rule_id, item in rules.items():
                rs = state.rule_state(str(rule_id))
                rs.breaching = {(str(metric), int(rank)) for metric, rank in item.get("breaching", ())}
                for metric, rank, low_wire, seen in item.get("minimums", ()):
                    low = inexact_float(low_wire)
                    rs.minimums[(str(metric), int(rank))] = (None if low is None else float(low), int(seen))
                if "min" in item:
                    float(inexact_float(item["min"]))  # checked: a damaged state still raises
                rs.last_ns = None if item.get("last_ns") is None else int(item["last_ns"])
                rs.stalled = bool(item.get("stalled", False))
        except (AttributeError, TypeError, ValueError, OverflowError, struct.error) as exc:
            raise ValueError(f"not an alert state: {type(exc).__name__}: {exc}") from None
        return state

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RunAlerts):
            return NotImplemented
        return self.to_wire() == other.to_wire()

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by content

    def __repr__(self) -> str:
        return f"RunAlerts({self.to_wire()['rules']})"
