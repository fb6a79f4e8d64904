"""Alert evaluation over streamed metric columns: each rule fires once and resolves, per rank and metric, and the
state checkpoints mid-sequence without changing a single alert."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trackstream.schemas.alerts import Alert, AlertRule, encode_alert, make_rule
from trackstream.schemas.envelope import EntityRef
from trackstream.streams.alert_state import RunAlerts
from trackstream.streams.alerts import AlertEvaluator

NAN, INF = math.nan, math.inf
RUN = EntityRef("p", "run", "r1")
S = 1_000_000_000


def feed(evaluator: AlertEvaluator, state: RunAlerts, values: list[float], *, rank: int = 0, metric: str = "loss",
         first_step: int = 0, entity: EntityRef = RUN, now_ns: int | None = None) -> list[Alert]:
    steps = list(range(first_step, first_step + len(values)))
    out: list[Alert] = []
    evaluator.observe(state, entity, rank, metric, steps, [step * S for step in steps], values, into=out,
                      now_ns=now_ns)
    return out


def summary(alerts: list[Alert]) -> list[tuple[str, int | None]]:
    return [(a.state, a.step) for a in alerts]


def one(rule: AlertRule, values: list[float], **kwargs: object) -> list[tuple[str, int | None]]:
    return summary(feed(AlertEvaluator([rule]), RunAlerts(), values, **kwargs))  # type: ignore[arg-type]


def test_nan_fires_at_the_first_nan_resolves_at_the_next_number_and_fires_again() -> None:
    alerts = feed(AlertEvaluator([make_rule("p", "loss", "nan")]), RunAlerts(), [1, 2, NAN, NAN, 3, NAN])
    assert summary(alerts) == [("firing", 2), ("resolved", 4), ("firing", 5)]
    fired = alerts[0]
    assert (fired.when, fired.metric, fired.rank, fired.time_ns, fired.threshold) == ("nan", "loss", 0, 2 * S, None)
    assert math.isnan(fired.value or 0.0)
    assert alerts[1].value == 3
    assert (fired.project, fired.entity_type, fired.entity_id) == ("p", "run", "r1")


def test_the_message_is_one_sentence_naming_metric_step_rank_run_and_project() -> None:
    alerts = feed(AlertEvaluator([make_rule("p", "loss", "nan")]), RunAlerts(), [NAN, 0.5], rank=3, first_step=1200)
    assert [a.message for a in alerts] == ["loss is NaN at step 1200 (rank 3) in run r1 of project p",
                                           "loss is no longer NaN at step 1201 (rank 3) in run r1 of project p: 0.5"]


def test_inf_fires_at_either_infinity_and_resolves_at_the_next_finite_value_only() -> None:
    rule = make_rule("p", "loss", "inf")
    assert one(rule, [1, INF, NAN, -INF, 2, -INF]) == [("firing", 1), ("resolved", 4), ("firing", 5)]
    alerts = feed(AlertEvaluator([rule]), RunAlerts(), [-INF])
    assert alerts[0].message == "loss is -inf at step 0 (rank 0) in run r1 of project p"


def test_above_and_below_fire_past_the_threshold_and_resolve_back_at_it_nan_changes_nothing() -> None:
    above = make_rule("p", "loss", "above", value=5)
    assert one(above, [1, 6, NAN, 7, 5, NAN, 4, INF]) == [("firing", 1), ("resolved", 4), ("firing", 7)]
    below = make_rule("p", "acc", "below", value=0.5)
    assert one(below, [0.9, 0.4, NAN, 0.5, -INF], metric="acc") == [("firing", 1), ("resolved", 3), ("firing", 4)]
    alerts = feed(AlertEvaluator([above]), RunAlerts(), [6, 5])
    assert [(a.threshold, a.message) for a in alerts] == [
        (5.0, "loss is above 5 at step 0 (rank 0) in run r1 of project p: 6"),
        (5.0, "loss is back at or below 5 at step 1 (rank 0) in run r1 of project p: 5")]


def test_diverge_waits_for_after_steps_finite_points_and_compares_with_k_times_the_running_minimum() -> None:
    values = [1.0, 3.0, 0.9, 2.0, 1.7, NAN, INF, 1.0, 2.5]
    # k=2, 3 points first: 3.0 (step 1) is too early; 2.0 > 1.8 fires; 1.7 resolves; +inf fires; 1.0 resolves...
    rule = make_rule("p", "loss", "diverge", after_steps=3)
    assert one(rule, values) == [("firing", 3), ("resolved", 4), ("firing", 6), ("resolved", 7), ("firing", 8)]
    alerts = feed(AlertEvaluator([rule]), RunAlerts(), values)
    assert alerts[0].threshold == pytest.approx(1.8)
    assert alerts[0].message == ("loss diverged at step 3 (rank 0) in run r1 of project p: 2 is above 2 x its "
                                 "minimum 0.9")
    assert one(make_rule("p", "loss", "diverge", value=3, after_steps=3), values) == [("firing", 6), ("resolved", 7)]
    assert one(make_rule("p", "loss", "diverge", after_steps=0), values) == [("firing", 1), ("resolved", 2),
                                                                              ("firing", 3), ("resolved", 4),
                                                                              ("firing", 6), ("resolved", 7),
                                                                              ("firing", 8)]


def test_diverge_keeps_each_ranks_own_minimum() -> None:
    # Rank 0's whole curve arrives before rank 3's first step (ranks flush on their own schedule): rank 3 starting
    # high is no divergence; rank 3 rising to 3 x its own minimum is.
    evaluator, state = AlertEvaluator([make_rule("p", "loss", "diverge", value=3, after_steps=5)]), RunAlerts()
    assert feed(evaluator, state, [2.0 * 0.98**step for step in range(200)], rank=0) == []
    assert feed(evaluator, state, [1.65, 1.2, 0.9, 0.7, 0.6, 0.5], rank=3) == []
    fired = feed(evaluator, state, [0.6, 1.6], rank=3, first_step=6)
    assert [(a.state, a.step, a.rank) for a in fired] == [("firing", 7, 3)]
    restored = RunAlerts.from_wire(orjson.loads(orjson.dumps(state.to_wire())))
    assert restored == state
    assert feed(evaluator, restored, [0.05], rank=0, first_step=200) == []  # rank 0's minimum came along


def test_diverge_counts_only_finite_points_and_is_idle_while_the_minimum_is_not_positive() -> None:
    rule = make_rule("p", "loss", "diverge", after_steps=2)
    assert one(rule, [1.0, NAN, INF, -INF, 5.0, 5.0]) == [("firing", 5)]
    assert one(rule, [0.0, 1.0, 2.0, 3.0]) == []
    assert one(rule, [-1.0, 5.0, 9.0, 100.0]) == []


def test_a_star_rule_fires_once_per_run_across_metrics_and_resolves_when_the_last_one_recovers() -> None:
    evaluator, state = AlertEvaluator([make_rule("p", "*", "nan")]), RunAlerts()
    assert summary(feed(evaluator, state, [1, NAN], metric="loss")) == [("firing", 1)]
    assert feed(evaluator, state, [NAN], metric="acc", first_step=2) == []
    assert feed(evaluator, state, [1.0], metric="loss", first_step=3) == []
    resolved = feed(evaluator, state, [0.5], metric="acc", first_step=4)
    assert [(a.state, a.metric, a.step) for a in resolved] == [("resolved", "acc", 4)]


def test_ranks_hold_their_own_condition_and_the_alert_records_the_rank() -> None:
    evaluator, state = AlertEvaluator([make_rule("p", "loss", "nan")]), RunAlerts()
    fired = feed(evaluator, state, [1.0, NAN], rank=3)
    assert [(a.state, a.rank) for a in fired] == [("firing", 3)]
    assert feed(evaluator, state, [1.0, 2.0], rank=0) == []
    assert feed(evaluator, state, [NAN], rank=5) == []
    assert feed(evaluator, state, [1.0], rank=3) == []
    assert [(a.state, a.rank) for a in feed(evaluator, state, [NAN, 1.0], rank=5)] == [("resolved", 5)]
    assert state.firing() == []


def test_alerts_of_one_batch_come_in_point_order_across_rules() -> None:
    rules = [make_rule("p", "loss", "nan"), make_rule("p", "loss", "above", value=5)]
    alerts = feed(AlertEvaluator(rules), RunAlerts(), [9, 1, NAN, 2])
    assert [(a.when, a.state, a.step) for a in alerts] == [("above", "firing", 0), ("above", "resolved", 1),
                                                           ("nan", "firing", 2), ("nan", "resolved", 3)]


def test_rules_match_their_project_entity_type_and_metric_only() -> None:
    loss = make_rule("p", "loss", "nan")
    star = make_rule("p", "*", "inf")
    evaluator = AlertEvaluator([loss, star, make_rule("q", "loss", "nan"),
                                make_rule("p", "loss", "nan", entity_type="model")])
    assert evaluator.rules_for("p", "run", "loss") == sorted([loss, star], key=lambda r: r.id)
    assert evaluator.rules_for("p", "run", "acc") == [star]
    assert evaluator.rules_for("other", "run", "loss") == []
    assert feed(evaluator, RunAlerts(), [NAN], entity=EntityRef("other", "run", "r1")) == []
    assert [a.entity_type for a in feed(evaluator, RunAlerts(), [NAN], entity=EntityRef("p", "model", "m:1"))] == [
        "model"]


def test_the_newest_version_of_a_rule_wins_and_deleted_rules_are_gone() -> None:
    rule = make_rule("p", "loss", "nan")
    newer = dataclasses.replace(rule, version=2, webhook="https://h.example/x")
    assert AlertEvaluator([newer, rule]).rules == [newer]
    assert AlertEvaluator([rule, dataclasses.replace(rule, version=3, deleted=True), newer]).rules == []
    invalid = dataclasses.replace(rule, id="bad", when="sometimes")
    assert AlertEvaluator([invalid, rule]).rules == [rule]


def test_changed_rules_drop_the_state_of_the_rules_that_are_gone() -> None:
    nan, above = make_rule("p", "loss", "nan"), make_rule("p", "loss", "above", value=5)
    evaluator, state = AlertEvaluator([nan, above]), RunAlerts()
    assert len(feed(evaluator, state, [NAN, 9])) == 3
    assert state.firing() == [above.id]
    evaluator.set_rules([nan, dataclasses.replace(above, version=1, webhook="https://h.example/")])
    assert feed(evaluator, state, [8]) == []  # same id, same state: still firing, no second alert
    evaluator.set_rules([nan])
    feed(evaluator, state, [8])
    assert above.id not in state.to_wire()["rules"]
    evaluator.set_rules([nan, above])
    assert summary(feed(evaluator, state, [9], first_step=7)) == [("firing", 7)]


def test_stalled_fires_once_when_a_running_run_is_silent_and_resolves_at_a_point_or_at_the_end() -> None:
    rule = make_rule("p", "*", "stalled", value=60)
    evaluator, state, out = AlertEvaluator([rule]), RunAlerts(), []
    evaluator.sweep(state, RUN, status="running", last_point_ns=None, now_ns=1000 * S, into=out)
    assert out == []  # no point ever: never stalled
    feed(evaluator, state, [1.0, 2.0], first_step=10)
    evaluator.sweep(state, RUN, status="running", last_point_ns=None, now_ns=71 * S, into=out)
    assert out == []  # 60 s exactly is not more than 60 s
    evaluator.sweep(state, RUN, status="running", last_point_ns=None, now_ns=72 * S, into=out)
    evaluator.sweep(state, RUN, status="running", last_point_ns=None, now_ns=500 * S, into=out)
    assert [(a.state, a.metric, a.step, a.value, a.threshold, a.time_ns) for a in out] == [
        ("firing", "", None, 61.0, 60.0, 72 * S)]
    assert out[0].message == "run r1 of project p has logged no points for 61 s (limit 60 s)"
    resolved = feed(evaluator, state, [3.0], first_step=12, rank=1)
    assert [(a.state, a.step, a.rank, a.metric) for a in resolved] == [("resolved", 12, 1, "loss")]
    out.clear()
    evaluator.sweep(state, RUN, status="running", last_point_ns=None, now_ns=100 * S, into=out)
    evaluator.sweep(state, RUN, status="completed", last_point_ns=None, now_ns=200 * S, into=out)
    assert [(a.state, a.message) for a in out] == [
        ("firing", "run r1 of project p has logged no points for 88 s (limit 60 s)"),
        ("resolved", "run r1 of project p is no longer running (completed)")]


def test_stalled_takes_the_callers_clock_and_a_metric_rule_watches_its_metric_only() -> None:
    star, loss = make_rule("p", "*", "stalled", value=10), make_rule("p", "loss", "stalled", value=10)
    evaluator, state, out = AlertEvaluator([star, loss]), RunAlerts(), []
    feed(evaluator, state, [1.0], metric="loss", now_ns=100 * S)  # point times are 0 s, the processor saw it at 100 s
    evaluator.sweep(state, RUN, status="running", last_point_ns=None, now_ns=105 * S, into=out)
    assert out == []
    feed(evaluator, state, [1.0], metric="acc", now_ns=150 * S)
    evaluator.sweep(state, RUN, status="running", last_point_ns=None, now_ns=155 * S, into=out)
    assert [(a.rule_id, a.metric, a.message) for a in out] == [
        (loss.id, "loss", "run r1 of project p has logged no loss points for 55 s (limit 10 s)")]
    out.clear()
    evaluator.sweep(state, RUN, status="running", last_point_ns=170 * S, now_ns=175 * S, into=out)
    assert out == []  # the entity's last point is recent: "*" is not stalled
    evaluator.sweep(state, RUN, status="running", last_point_ns=170 * S, now_ns=181 * S, into=out)
    assert [a.rule_id for a in out] == [star.id]
    out.clear()
    evaluator.sweep(state, RUN, status="running", last_point_ns=200 * S, now_ns=201 * S, into=out)
    assert [(a.rule_id, a.state, a.message) for a in out] == [
        (star.id, "resolved", "run r1 of project p logs points again")]


def reference(rule: AlertRule, values: list[float]) -> list[tuple[str, int]]:
    """One point at a time, straight from the rule's definition (one rank, one metric)."""
    found, inside, minimum, seen = [], False, None, 0
    for index, value in enumerate(values):
        if rule.when == "diverge":
            enter = leave = False
            if minimum is not None and minimum > 0 and not math.isnan(value):
                enter = value > (rule.value or 0) * minimum and seen >= rule.after_steps
                leave = value <= (rule.value or 0) * minimum
            if math.isfinite(value):
                seen, minimum = seen + 1, value if minimum is None else min(minimum, value)
        elif rule.when in ("above", "below"):
            limit = rule.value or 0.0
            enter = value > limit if rule.when == "above" else value < limit
            leave = value <= limit if rule.when == "above" else value >= limit
        else:
            enter = math.isnan(value) if rule.when == "nan" else math.isinf(value)
            leave = not math.isnan(value) if rule.when == "nan" else math.isfinite(value)
        if (leave if inside else enter):
            inside = not inside
            found.append(("firing" if inside else "resolved", index))
    return found


RULES = [make_rule("p", "loss", "nan"), make_rule("p", "*", "inf"), make_rule("p", "loss", "above", value=3.0),
         make_rule("p", "loss", "below", value=0.5), make_rule("p", "loss", "diverge", value=2.5, after_steps=4)]
points = st.lists(st.sampled_from([NAN, INF, -INF, 0.0, -1.0]) | st.floats(0.1, 10.0), max_size=60)


@settings(max_examples=300)
@given(points, st.lists(st.integers(1, 60), max_size=6))
def test_batches_of_any_size_give_the_alerts_of_the_definition(values: list[float], cuts: list[int]) -> None:
    evaluator, state, alerts = AlertEvaluator(RULES), RunAlerts(), []
    bounds = sorted({0, len(values), *(c for c in cuts if c < len(values))})
    for start, stop in itertools.pairwise(bounds):
        alerts += feed(evaluator, state, values[start:stop], first_step=start)
    for rule in RULES:
        assert [(a.state, a.step) for a in alerts if a.rule_id == rule.id] == reference(rule, values), rule.when


def test_a_checkpoint_anywhere_in_the_stream_gives_the_same_alerts() -> None:
    rng = random.Random(15)
    batches = []
    for step in range(0, 400, 20):
        for rank in range(3):
            values = [rng.choice([NAN, INF, 9.0, 0.1]) if rng.random() < 0.1 else rng.uniform(0.5, 2.0)
                      for _ in range(20)]
            batches.append((rank, rng.choice(["loss", "acc"]), step, values))
    rules = [*RULES, make_rule("p", "*", "stalled", value=5)]

    def run(checkpoint_at: int | None) -> list[bytes]:
        evaluator, state, out = AlertEvaluator(rules), RunAlerts(), []
        for index, (rank, metric, step, values) in enumerate(batches):
            if index == checkpoint_at:
                state = RunAlerts.from_wire(orjson.loads(orjson.dumps(state.to_wire())))
            out += feed(evaluator, state, values, rank=rank, metric=metric, first_step=step)
            evaluator.sweep(state, RUN, status="running", last_point_ns=None, now_ns=(step + 30) * S, into=out)
        return [encode_alert(a) for a in out]  # bytes: NaN values compare bit for bit

    expected = run(None)
    assert len(expected) > 20
    for checkpoint_at in range(0, len(batches), 7):
        assert run(checkpoint_at) == expected


def test_the_state_wire_is_json_with_exact_floats_and_bad_wires_raise_value_error() -> None:
    evaluator, state = AlertEvaluator(RULES), RunAlerts()
    feed(evaluator, state, [5e-324, NAN], rank=2)
    wire = state.to_wire()
    assert wire["rules"][RULES[4].id] == {"minimums": [["loss", 2, 5e-324, 1]]}
    assert orjson.loads(orjson.dumps(wire)) == wire
    restored = RunAlerts.from_wire(orjson.loads(orjson.dumps(wire)))
    assert restored == state
    assert restored.firing() == state.firing() == sorted([RULES[0].id, RULES[3].id])
    assert RunAlerts().to_wire() == {"v": 1, "rules": {}}
    for bad in (None, [], {"v": 2, "rules": {}}, {"v": 1, "rules": {"x": {"breaching": [["loss"]]}}},
                {"v": 1, "rules": {"x": {"min": {"$f64": -5}}}}, {"v": 1, "rules": {"x": 3}},
                {"v": 1, "rules": {"x": {"minimums": [["loss", 0, {"$f64": -5}, 1]]}}}):
        with pytest.raises(ValueError, match="not an alert state"):
            RunAlerts.from_wire(bad)


def test_empty_batches_and_unmatched_metrics_cost_nothing() -> None:
    evaluator, state = AlertEvaluator(RULES), RunAlerts()
    assert feed(evaluator, state, []) == []
    assert feed(evaluator, state, [NAN], metric="unwatched", entity=EntityRef("q", "run", "x")) == []
    assert state.to_wire()["rules"] == {}
