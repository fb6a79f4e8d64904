"""Alert rules evaluated over metric columns as they stream by (issue 15): pure, deterministic, no clock reads.

:class:`AlertEvaluator` holds the rules; :class:`~trackstream.streams.alert_state.RunAlerts` is what one entity
(run or model) remembers about them, checkpointed with the entity. The stream calls
:meth:`AlertEvaluator.observe` for each metric group of each accepted envelope, and
:meth:`AlertEvaluator.sweep` now and then for ``stalled`` rules; both append :class:`Alert` records to ``into``.

One alert per rule and entity until it resolves. The condition of a point rule is kept per (metric, rank): the rule
fires when the first of them enters its condition and resolves when the last one leaves it, so ranks (and the
metrics of a ``"*"`` rule) do not resolve each other's alerts. What enters and leaves:

- ``nan``: enters at a NaN, leaves at the next value that is not NaN;
- ``inf``: enters at +inf or -inf, leaves at the next finite value (NaN does neither);
- ``above`` / ``below``: enters above / below the threshold, leaves at or below / at or above it (NaN does neither);
- ``diverge``: enters above k x the running minimum of the finite points before it, once ``after_steps`` finite points
  were seen; leaves at or below it. The minimum and the count are per (metric, rank): ranks arrive in any order, and
  one rank's late minimum must not make another's first steps look diverged. NaN does neither and ±inf do not count
  as points nor move the minimum. Meant for positive metrics (losses): while the minimum is <= 0 the rule is idle;
- ``stalled`` (:meth:`~AlertEvaluator.sweep`): a running run whose last matching point is more than ``value``
  seconds old fires; a new point or the run's end resolves it.

Batches are checked by C-level passes (``sum``, ``min``/``max``, ``map`` and ``list.index`` over flag columns); a
Python loop runs only for ``diverge`` rules in batches that may cross their threshold.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import filterfalse
from typing import Final

from trackstream.schemas.alerts import ANY_METRIC, Alert, AlertRule, rule_problem
from trackstream.schemas.envelope import EntityRef
from trackstream.streams.alert_state import RuleState, RunAlerts

__all__ = ["AlertEvaluator"]

log = logging.getLogger(__name__)

_CACHE_MAX: Final = 65_536
_NS: Final = 1_000_000_000


@dataclass(slots=True)
class _Batch:
    """One metric group of one rank, and whether all its values are finite (computed once, on first need)."""

    entity: EntityRef
    rank: int
    metric: str
    steps: Sequence[int]
    times_ns: Sequence[int]
    values: Sequence[float]
    _finite: bool | None = None

    @property
    def finite(self) -> bool:
        if self._finite is None:
            # sum() is finite only if every term is (an overflow only sends the batch down the slow path)
            self._finite = math.isfinite(sum(self.values))
        return self._finite


# (point index, entered: True when the key entered the condition there, left it when False, threshold or None)
_Transition = tuple[int, bool, float | None]


def _flag_transitions(enter: list[bool], leave: Callable[[], list[bool]], leave_on: bool,
                      inside: bool) -> list[_Transition]:
    """Where a key enters (``enter[i]`` true) and leaves (``leave()[i] == leave_on``) its condition, from ``inside``;
    ``leave`` is built only when needed."""
    found: list[_Transition] = []
    leaving: list[bool] | None = None
    index, count = 0, len(enter)
    while index < count:
        try:
            if inside:
                leaving = leave() if leaving is None else leaving
                index = leaving.index(leave_on, index)
            else:
                index = enter.index(True, index)
        except ValueError:
            break
        inside = not inside
        found.append((index, inside, None))
        index += 1
    return found


def _nan_transitions(rule: AlertRule, rs: RuleState, batch: _Batch, inside: bool) -> list[_Transition]:
    if batch.finite:
        return [(0, False, None)] if inside else []
    flags = list(map(math.isnan, batch.values))
    return _flag_transitions(flags, lambda: flags, False, inside)


def _inf_transitions(rule: AlertRule, rs: RuleState, batch: _Batch, inside: bool) -> list[_Transition]:
    if batch.finite:
        return [(0, False, None)] if inside else []
    values = batch.values
    return _flag_transitions(list(map(math.isinf, values)), lambda: list(map(math.isfinite, values)), True, inside)


def _threshold_transitions(rule: AlertRule, rs: RuleState, batch: _Batch, inside: bool) -> list[_Transition]:
    values, limit = batch.values, float(rule.value or 0.0)
    above = rule.when == "above"
    present = values if batch.finite else list(filterfalse(math.isnan, values))  # NaN neither enters nor leaves
    if inside == above:  # above and firing: only a value <= limit leaves; below and not: only one < limit enters
        quiet = min(present, default=math.inf) > limit if above else min(present, default=math.inf) >= limit
    else:
        quiet = max(present, default=-math.inf) < limit if inside else max(present, default=-math.inf) <= limit
    if quiet:
        return []
    # limit.__lt__(v) is v > limit, in C; False for NaN
    enter = list(map(limit.__lt__ if above else limit.__gt__, values))
    leave = limit.__ge__ if above else limit.__le__
    return [(index, entered, limit)
            for index, entered, _ in _flag_transitions(enter, lambda: list(map(leave, values)), True, inside)]


def _diverge_transitions(rule: AlertRule, rs: RuleState, batch: _Batch, inside: bool) -> list[_Transition]:
    factor, after, values = float(rule.value or 0.0), rule.after_steps, batch.values
    key = (batch.metric, batch.rank)
    minimum, seen = rs.minimums.get(key, (None, 0))
    finite = values if batch.finite else list(filter(math.isfinite, values))
    low = lowest = math.inf
    if finite:
        low = min(finite)
        lowest = low if minimum is None or low < minimum else minimum
    if inside:  # the minimum holds through the batch and no value gets back to its threshold: still firing
        quiet = (batch.finite or -math.inf not in values) and (
            not finite or (minimum is not None and minimum <= low and low > factor * minimum))
    else:  # thresholds only fall as the minimum does: nothing above the last one crossed any of them
        quiet = (batch.finite or math.inf not in values) and (
            not finite or seen + len(finite) <= after or (lowest > 0 and max(finite) <= factor * lowest))
    if quiet:
        if finite:
            rs.minimums[key] = (lowest, seen + len(finite))
        return []
    found: list[_Transition] = []
    for index, value in enumerate(values):
        if value != value:  # noqa: PLR0124 - NaN: neither enters nor leaves, not a point of the minimum
            continue
        if minimum is not None and minimum > 0:
            threshold = factor * minimum
            if inside and value <= threshold:
                inside = False
                found.append((index, False, threshold))
            elif not inside and value > threshold and seen >= after:
                inside = True
                found.append((index, True, threshold))
        if value - value == 0:  # finite
            seen += 1
            if minimum is None or value < minimum:
                minimum = value
    rs.minimums[key] = (minimum, seen)
    return found


_TRANSITIONS: Final = {"nan": _nan_transitions, "inf": _inf_transitions, "above": _threshold_transitions,
                       "below": _threshold_transitions, "diverge": _diverge_transitions}


def _num(value: float) -> str:
    return f"{value:.6g}"


def _where(entity: EntityRef) -> str:
    return f"{entity.type} {entity.id} of project {entity.project}"


def _point_message(rule: AlertRule, batch: _Batch, index: int, entered: bool, threshold: float | None) -> str:
    metric, value = batch.metric, batch.values[index]
    at = f"at step {batch.steps[index]} (rank {batch.rank}) in {_where(batch.entity)}"
    when, limit = rule.when, f"{rule.value:.15g}" if rule.value is not None else ""
    if when == "nan":
        return f"{metric} is NaN {at}" if entered else f"{metric} is no longer NaN {at}: {_num(value)}"
    if when == "inf":
        return f"{metric} is {_num(value)} {at}" if entered else f"{metric} is finite again {at}: {_num(value)}"
    if when == "diverge":
        bound = f"{limit} x its minimum {_num((threshold or 0.0) / float(rule.value or 1.0))}"
        if entered:
            return f"{metric} diverged {at}: {_num(value)} is above {bound}"
        return f"{metric} is back within {bound} {at}: {_num(value)}"
    if entered:
        return f"{metric} is {when} {limit} {at}: {_num(value)}"
    return f"{metric} is back at or {'below' if when == 'above' else 'above'} {limit} {at}: {_num(value)}"


def _alert(rule: AlertRule, entity: EntityRef, *, metric: str, firing: bool, step: int | None, value: float | None,
           rank: int | None, time_ns: int, message: str, threshold: float | None) -> Alert:
    return Alert(rule_id=rule.id, when=rule.when, project=entity.project, entity_type=entity.type,
                 entity_id=entity.id, metric=metric, state="firing" if firing else "resolved", step=step, value=value,
                 rank=rank, time_ns=time_ns, message=message, threshold=threshold)


class AlertEvaluator:
    """The rules in force, matched to metric groups by (project, entity type, metric) with one dict lookup.

    ``rules``: any iterable of :class:`AlertRule`; of several with one id the highest ``version`` wins, and a winner
    marked ``deleted`` removes the rule. Invalid rules are skipped with a warning.
    """

    def __init__(self, rules: Iterable[AlertRule] = ()) -> None:
        self._rules: dict[str, AlertRule] = {}
        self._exact: dict[tuple[str, str, str], list[AlertRule]] = {}
        self._any: dict[tuple[str, str], list[AlertRule]] = {}
        self._stalled: dict[tuple[str, str], list[AlertRule]] = {}
        self._cache: dict[tuple[str, str, str], list[AlertRule]] = {}
        self._ids: frozenset[str] = frozenset()
        self.set_rules(rules)

    @property
    def rules(self) -> list[AlertRule]:
        """The rules in force, sorted by id."""
        return [self._rules[rule_id] for rule_id in sorted(self._rules)]

    def set_rules(self, rules: Iterable[AlertRule]) -> None:
        """Replace every rule (see the class docstring); states forget the rules that are gone on their next use."""
        newest: dict[str, AlertRule] = {}
        for rule in rules:
            if rule.id not in newest or rule.version > newest[rule.id].version:
                newest[rule.id] = rule
        self._rules = {}
        for rule_id in sorted(newest):
            rule = newest[rule_id]
            problem = None if rule.deleted else rule_problem(rule)
            if problem is not None:
                log.warning("alert rule %s skipped: %s", rule.id, problem)
            elif not rule.deleted:
                self._rules[rule_id] = rule
        self._exact, self._any, self._stalled, self._cache = {}, {}, {}, {}
        for rule in self._rules.values():
            where = (rule.project, rule.entity_type)
            if rule.metric == ANY_METRIC:
                self._any.setdefault(where, []).append(rule)
            else:
                self._exact.setdefault((*where, rule.metric), []).append(rule)
            if rule.when == "stalled":
                self._stalled.setdefault(where, []).append(rule)
        self._ids = frozenset(self._rules)

    def rules_for(self, project: str, entity_type: str, metric: str) -> list[AlertRule]:
        """The rules that watch ``metric`` of the entities of this type in ``project`` (sorted by id; do not
        mutate the list). One dict lookup once a key was asked for."""
        key = (project, entity_type, metric)
        found = self._cache.get(key)
        if found is None:
            found = sorted([*self._exact.get(key, ()), *self._any.get(key[:2], ())], key=lambda rule: rule.id)
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[key] = found
        return found

    def observe(self, state: RunAlerts, entity: EntityRef, rank: int, metric: str,  # noqa: PLR0917
                steps: Sequence[int], times_ns: Sequence[int], values: Sequence[float], *, into: list[Alert],
                now_ns: int | None = None) -> None:
        """Evaluate the points of one metric group of one rank, in order, and append the alerts they cause.

        ``steps``, ``times_ns`` (ns since the epoch) and ``values`` are parallel columns. A rule fires at the first
        point that enters its condition (that point's step, value, rank and time) and resolves at the point where
        the condition stops holding; alerts are appended in point order (rules in :meth:`rules_for` order at one
        point). Matching ``stalled`` rules note the points' time (``now_ns`` when given, e.g. the processor's clock
        that :meth:`sweep` will be given, else the newest of ``times_ns``) and resolve at the first point.
        """
        rules = self.rules_for(entity.project, entity.type, metric)
        if not rules or not values:
            return
        state.prune_to(self._ids)
        batch = _Batch(entity, rank, metric, steps, times_ns, values)
        key = (metric, rank)
        found: list[tuple[int, Alert]] = []
        for rule in rules:
            rs = state.rule_state(rule.id)
            if rule.when == "stalled":
                latest = max(times_ns) if now_ns is None else now_ns
                rs.last_ns = latest if rs.last_ns is None else max(rs.last_ns, latest)
                if rs.stalled:
                    rs.stalled = False
                    message = f"{_where(entity)} logs points again: {metric} at step {steps[0]} (rank {rank})"
                    found.append((0, _alert(rule, entity, metric=metric, firing=False, step=steps[0], value=values[0],
                                            rank=rank, time_ns=times_ns[0], message=message, threshold=rule.value)))
                continue
            inside = key in rs.breaching
            transitions = _TRANSITIONS[rule.when](rule, rs, batch, inside)
            if not transitions:
                continue
            if len(rs.breaching) - inside == 0:  # no other (metric, rank) holds the rule firing
                for index, entered, threshold in transitions:
                    found.append((index, _alert(
                        rule, entity, metric=metric, firing=entered, step=steps[index], value=values[index],
                        rank=rank, time_ns=times_ns[index], threshold=threshold,
                        message=_point_message(rule, batch, index, entered, threshold))))
            if transitions[-1][1]:
                rs.breaching.add(key)
            else:
                rs.breaching.discard(key)
        found.sort(key=lambda item: item[0])  # stable: rules keep their order at one point
        into.extend(alert for _, alert in found)

    def sweep(self, state: RunAlerts, entity: EntityRef, *, status: str, last_point_ns: int | None, now_ns: int,
              into: list[Alert]) -> None:
        """Evaluate the ``stalled`` rules of ``entity`` at ``now_ns`` and append the alerts they cause.

        A rule fires when ``status == "running"`` and its last point is more than ``value`` seconds before
        ``now_ns``. Its last point: the newest that :meth:`observe` matched to it, or ``last_point_ns`` (the
        entity's last point, on the clock of ``now_ns``) when that is newer and the rule watches ``"*"``; a run
        without one never stalls. It resolves (``time_ns=now_ns``, no step) when a newer point is known or the run
        is no longer running. The alert's ``value`` is the silence in seconds.
        """
        rules = self._stalled.get((entity.project, entity.type))
        if not rules:
            return
        state.prune_to(self._ids)
        for rule in rules:
            rs = state.rule_state(rule.id)
            last = rs.last_ns
            if rule.metric == ANY_METRIC and last_point_ns is not None and (last is None or last_point_ns > last):
                last = last_point_ns
            limit = float(rule.value or 0.0)
            silence = None if last is None else now_ns - last
            silent = silence is not None and silence > limit * _NS
            metric = "" if rule.metric == ANY_METRIC else rule.metric
            if not rs.stalled and status == "running" and silence is not None and silent:
                seconds: float | None = silence / _NS
                points = f"{metric} points" if metric else "points"
                message = f"{_where(entity)} has logged no {points} for {seconds:.0f} s (limit {limit:g} s)"
            elif rs.stalled and (status != "running" or not silent):
                seconds = None
                again = f"is no longer running ({status})" if status != "running" else "logs points again"
                message = f"{_where(entity)} {again}"
            else:
                continue
            rs.stalled = not rs.stalled
            into.append(_alert(rule, entity, metric=metric, firing=rs.stalled, step=None, value=seconds, rank=None,
                               time_ns=now_ns, message=message, threshold=limit))
