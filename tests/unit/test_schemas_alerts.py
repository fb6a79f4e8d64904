"""Alert rules and alerts on the wire: validation naming the problem, idempotent ids, exact floats, webhook bodies."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trackstream.schemas.alerts import (
    WHENS,
    Alert,
    alert_payload,
    decode_alert,
    decode_rule,
    encode_alert,
    encode_rule,
    make_rule,
    slack_payload,
)
from trackstream.schemas.floats import bits_to_float, float_to_bits

INF = math.inf


def alert(**changes: object) -> Alert:
    base = Alert(rule_id="abc", when="nan", project="p", entity_type="run", entity_id="r1", metric="loss",
                 state="firing", step=1200, value=math.nan, rank=3, time_ns=1_700_000_000_000_000_000,
                 message="loss is NaN at step 1200 (rank 3) in run r1 of project p", threshold=None)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def same_floats(a: float | None, b: float | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and float_to_bits(a) == float_to_bits(b))


@pytest.mark.parametrize(("args", "kwargs", "expected"), [
    (("p", "loss", "nann"), {}, "when must be one of nan, inf, diverge, stalled, above, below, not 'nann'"),
    (("p", "loss", "above"), {}, "above needs --value (the threshold)"),
    (("p", "loss", "below"), {}, "below needs --value (the threshold)"),
    (("p", "loss", "above"), {"value": math.nan}, "--value (the threshold) must be a finite number, got nan"),
    (("p", "loss", "below"), {"value": -INF}, "must be a finite number, got -inf"),
    (("p", "loss", "above"), {"value": "3"}, "--value (the threshold) must be a number, got '3'"),
    (("p", "loss", "above"), {"value": True}, "must be a number, got True"),
    (("p", "loss", "diverge"), {"value": 1.0}, "diverge needs --value (the factor k) above 1, got 1"),
    (("p", "loss", "diverge"), {"value": INF}, "the factor k) must be a finite number"),
    (("p", "*", "stalled"), {"value": 0}, "stalled needs --value (seconds without points) above 0, got 0"),
    (("p", "loss", "nan"), {"value": 1.0}, "nan takes no --value, got 1.0"),
    (("p", "loss", "inf"), {"value": 1.0}, "inf takes no --value"),
    (("p", "loss", "nan"), {"after_steps": 5}, "--after-steps applies to diverge only, not to nan"),
    (("p", "loss", "diverge"), {"after_steps": -1}, "--after-steps must be an int >= 0, got -1"),
    (("p", "loss", "diverge"), {"after_steps": 2.5}, "--after-steps must be an int >= 0, got 2.5"),
    (("p", "*", "diverge"), {}, "metric '*' (every metric) is allowed for nan, inf, stalled only; diverge needs"),
    (("p", "*", "above"), {"value": 1}, "above needs one metric name"),
    (("p", "lo$s", "nan"), {}, "metric name 'lo$s' may only hold letters, digits"),
    (("p", "", "nan"), {}, "metric name is empty (or '*' for every metric)"),
    (("p", "x" * 251, "nan"), {}, "metric name is 251 characters long, at most 250"),
    (("", "loss", "nan"), {}, "project must be a non-empty str, got ''"),
    (("p" * 251, "loss", "nan"), {}, "project name is 251 characters long, at most 250"),
    (("p", "loss", "nan"), {"entity_type": "runs"}, "entity_type must be one of run, model, not 'runs'"),
    (("p", "*", "stalled"), {"entity_type": "model"}, "stalled applies to runs only"),
    (("p", "loss", "nan"), {"webhook": "ftp://example.com/x"}, "a webhook must be an http:// or https:// URL"),
    (("p", "loss", "nan"), {"webhook": "example.com/hook"}, "a webhook must be an http:// or https:// URL"),
    (("p", "loss", "nan"), {"webhook": "https:///nohost"}, "a webhook must be an http:// or https:// URL with a host"),
    (("p", "loss", "nan"), {"webhook": "https://[::1/x"}, "a webhook must be an http:// or https:// URL"),
    (("p", "loss", "nan"), {"webhook": "https://h.example:99999/x"}, "a webhook must be an http:// or https:// URL"),
    (("p", "loss", "nan"), {"webhook": "https://h.example/a b"}, "without spaces"),
    (("p", "loss", "nan"), {"webhook": "https://h.example/" + "a" * 3000}, "at most 2048"),
    (("p", "loss", "nan"), {"slack": True}, "slack needs a webhook"),
    (("p", "loss", "nan"), {"slack": "yes", "webhook": "https://h.example/"}, "slack must be True or False"),
])
def test_make_rule_names_the_problem_and_what_is_allowed(args: tuple[str, str, str], kwargs: dict[str, object],
                                                           expected: str) -> None:
    with pytest.raises(ValueError, match=re.escape(expected)):
        make_rule(*args, **kwargs)  # type: ignore[arg-type]


def test_make_rule_fills_in_the_defaults() -> None:
    diverge = make_rule("p", "loss", "diverge")
    assert (diverge.value, diverge.after_steps) == (2.0, 10)
    stalled = make_rule("p", "*", "stalled")
    assert (stalled.value, stalled.after_steps, stalled.entity_type) == (300.0, 0, "run")
    nan = make_rule("p", "*", "nan", entity_type="model", webhook="https://hooks.example.com/x?token=t", slack=True)
    assert (nan.value, nan.after_steps, nan.slack, nan.version, nan.deleted) == (None, 0, True, 0, False)
    above = make_rule("p", "loss", "above", value=10)
    assert isinstance(above.value, float)
    assert above.value == 10.0


def test_the_id_is_deterministic_and_names_what_the_rule_watches() -> None:
    rule = make_rule("p", "loss", "above", value=10)
    assert re.fullmatch(r"[0-9a-f]{16}", rule.id)
    assert make_rule("p", "loss", "above", value=10.0, webhook="https://h.example/a", slack=True).id == rule.id
    assert make_rule("p", "loss", "above", value=-0.0).id == make_rule("p", "loss", "above", value=0.0).id
    assert make_rule("p", "loss", "diverge").id == make_rule("p", "loss", "diverge", value=2, after_steps=10).id
    others = {make_rule("p", "loss", "above", value=11).id, make_rule("p", "loss", "below", value=10).id,
              make_rule("q", "loss", "above", value=10).id, make_rule("p", "acc", "above", value=10).id,
              make_rule("p", "loss", "above", value=10, entity_type="model").id,
              make_rule("p", "loss", "diverge", after_steps=11).id, make_rule("p", "loss", "diverge").id}
    assert rule.id not in others
    assert len(others) == 7


@pytest.mark.parametrize("when", WHENS)
def test_rules_round_trip(when: str) -> None:
    value = {"above": 1e-300, "below": -2.5}.get(when)
    metric = "*" if when in ("nan", "stalled") else "train/loss"
    rule = make_rule("proj", metric, when, value=value, webhook="https://u:p@h.example:8443/a?b=c#d", slack=True)
    rule = dataclasses.replace(rule, version=7, deleted=True)
    assert decode_rule(encode_rule(rule)) == rule


def test_decode_rule_defaults_the_optional_fields() -> None:
    rule = make_rule("p", "loss", "nan")
    wire = orjson.loads(encode_rule(rule))
    for key in ("slack", "entity_type", "version", "deleted"):
        del wire[key]
    wire["added_later"] = {"ignored": True}
    assert decode_rule(orjson.dumps(wire)) == rule


def _rule_wire(**changes: object) -> bytes:
    wire = orjson.loads(encode_rule(make_rule("p", "loss", "above", value=1.0)))
    wire.update(changes)
    return json.dumps(wire).encode()  # not orjson: it refuses integers past 64 bits


@pytest.mark.parametrize(("raw", "expected"), [
    (b"", "not an alert rule: not JSON"),
    (b"\xff\xfe", "not an alert rule: not JSON"),
    (b"[1, 2]", "expected a JSON object, got list"),
    (b'{"v": 2}', "version 2, this code reads 1"),
    (b'{"v": 1}', "field 'id' is missing"),
    (_rule_wire(value="1"), "field 'value' must be float | None, got '1'"),
    (_rule_wire(after_steps=True), "field 'after_steps' must be int, got True"),
    (_rule_wire(version=1.5), "field 'version' must be int, got 1.5"),
    (_rule_wire(value={"$f64": -1}), "field 'value' holds bad float bits"),
    (_rule_wire(value={"$f64": 2**64}), "field 'value' holds bad float bits"),
    (_rule_wire(value={"$f64": float_to_bits(math.nan)}), "not a valid alert rule: --value (the threshold) must be"),
    (_rule_wire(when="sometimes"), "not a valid alert rule: when must be one of"),
    (_rule_wire(webhook="file:///etc/passwd"), "not a valid alert rule: a webhook must be an http"),
    (_rule_wire(value=None), "not a valid alert rule: above needs --value"),
])
def test_decode_rule_refuses_bad_bytes_with_a_value_error(raw: bytes, expected: str) -> None:
    with pytest.raises(ValueError, match=re.escape(expected)):
        decode_rule(raw)


@pytest.mark.parametrize("value", [math.nan, INF, -INF, -0.0, 5e-324, 1.7976931348623157e308, None,
                                   bits_to_float(0x7FF8000000000123), bits_to_float(0xFFF8000000000000)])
def test_alerts_round_trip_bit_exactly(value: float | None) -> None:
    original = alert(value=value, threshold=value)
    decoded = decode_alert(encode_alert(original))
    assert same_floats(decoded.value, value)
    assert same_floats(decoded.threshold, value)
    assert encode_alert(decoded) == encode_alert(original)


def test_decode_alert_reads_ints_as_floats_and_keeps_none() -> None:
    wire = orjson.loads(encode_alert(alert(when="stalled", step=None, rank=None, value=None, threshold=None)))
    wire["value"] = 312
    decoded = decode_alert(orjson.dumps(wire))
    assert decoded.value == 312.0
    assert isinstance(decoded.value, float)
    assert (decoded.step, decoded.rank, decoded.threshold) == (None, None, None)


@pytest.mark.parametrize(("change", "expected"), [
    ({"state": "burning"}, "state must be one of firing, resolved, not 'burning'"),
    ({"when": "nann"}, "when must be one of"),
    ({"entity_type": "runs"}, "entity_type must be one of run, model"),
    ({"step": "12"}, "field 'step' must be int | None"),
    ({"time_ns": None}, "field 'time_ns' must be int, got None"),
    ({"message": 3}, "field 'message' must be str, got 3"),
    ({"value": [1]}, "field 'value' must be float | None"),
    ({"threshold": {"$f64": "x"}}, "field 'threshold' holds bad float bits"),
])
def test_decode_alert_refuses_bad_fields(change: dict[str, object], expected: str) -> None:
    wire = orjson.loads(encode_alert(alert()))
    wire.update(change)
    with pytest.raises(ValueError, match=re.escape(expected)):
        decode_alert(orjson.dumps(wire))


finite_or_not = st.floats(allow_nan=True, allow_infinity=True) | st.none()
alerts = st.builds(
    Alert, rule_id=st.text(max_size=20), when=st.sampled_from(WHENS), project=st.text(max_size=20),
    entity_type=st.sampled_from(("run", "model")), entity_id=st.text(max_size=20), metric=st.text(max_size=20),
    state=st.sampled_from(("firing", "resolved")), step=st.integers(-(2**63), 2**63 - 1) | st.none(),
    value=finite_or_not, rank=st.integers(0, 2**24) | st.none(), time_ns=st.integers(0, 2**63 - 1),
    message=st.text(max_size=80), threshold=finite_or_not,
)


@given(alerts)
def test_every_alert_round_trips_exactly(original: Alert) -> None:
    decoded = decode_alert(encode_alert(original))
    assert same_floats(decoded.value, original.value)
    assert same_floats(decoded.threshold, original.threshold)
    assert dataclasses.replace(decoded, value=None, threshold=None) == dataclasses.replace(
        original, value=None, threshold=None)


json_values = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(
    allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12)


@given(st.binary(max_size=200) | st.dictionaries(st.sampled_from([
    "v", "rule_id", "when", "project", "entity_type", "entity_id", "metric", "state", "step", "value", "rank",
    "time_ns", "message", "threshold", "id", "after_steps", "webhook", "slack", "version", "deleted"]),
    json_values).map(orjson.dumps))
def test_decoding_garbage_raises_value_error_only(raw: bytes) -> None:
    for decode in (decode_alert, decode_rule):
        with contextlib.suppress(ValueError):
            decode(raw)


VALID_WIRES = (orjson.loads(encode_alert(alert())), orjson.loads(encode_rule(make_rule("p", "loss", "diverge"))))


@given(st.sampled_from(range(len(VALID_WIRES))), st.data())
def test_a_valid_record_with_any_one_field_replaced_decodes_or_raises_value_error(which: int,
                                                                                  data: st.DataObject) -> None:
    wire = dict(VALID_WIRES[which])
    key = data.draw(st.sampled_from(sorted(wire)))
    wire[key] = data.draw(json_values | st.fixed_dictionaries({"$f64": json_values}))
    for decode in (decode_alert, decode_rule):
        with contextlib.suppress(ValueError):
            decode(json.dumps(wire).encode())


def test_the_webhook_payload_is_plain_json_with_every_field() -> None:
    for value, spelled in ((math.nan, "NaN"), (INF, "Infinity"), (-INF, "-Infinity"), (0.25, 0.25), (None, None)):
        payload = alert_payload(alert(value=value, threshold=value))
        assert set(payload) == {f.name for f in dataclasses.fields(Alert)}
        assert payload["value"] == spelled
        assert payload["threshold"] == spelled
        assert json.loads(json.dumps(payload, allow_nan=False)) == payload
    assert alert_payload(alert())["message"] == "loss is NaN at step 1200 (rank 3) in run r1 of project p"


def test_the_slack_payload_is_an_incoming_webhook_text_with_slack_escapes() -> None:
    assert slack_payload(alert()) == {"text": "FIRING: loss is NaN at step 1200 (rank 3) in run r1 of project p"}
    resolved = slack_payload(alert(state="resolved", message="run <a&b> of project p is no longer running"))
    assert resolved == {"text": "RESOLVED: run &lt;a&amp;b&gt; of project p is no longer running"}
