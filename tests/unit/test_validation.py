"""Stream-side validation: each class of bad input yields its own reason; one bad group costs only itself."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trackstream.schemas import EntityRef, Envelope, Event, MetricBatch, encode, envelope_to_wire, float_to_bits
from trackstream.schemas.validation import REASONS, BadPoints, Rejection, Validated, validate

Wire = dict[str, Any]
PARAMS = {"lr": 0.1, "opt": {"b": [0.9, 0.99]}}


def good_wire() -> Wire:
    """Three good metric groups (the middle one with non-finite values) and two events."""
    envelope = Envelope(
        producer_id="p-1", seq=3, sent_ns=1_700_000_000_000_000_000, entity=EntityRef("proj", "run", "r/1"),
        rank=1, world_size=2, host="node-1",
        metrics=[
            MetricBatch("train/loss", "series", [0, 1, 2], [10, 11, 12], [0.5, 0.25, 0.125]),
            MetricBatch("grad norm", "series", list(range(8)), list(range(8)),
                        [1.0, math.nan, 2.0, math.inf, 3.0, -math.inf, 4.0, 5.0]),
            MetricBatch("best.acc", "single", [7], [70], [0.9]),
        ],
        events=[
            Event("run_started", 1, {"name": "r", "params": PARAMS, "tags": {}}),
            Event("overwrite", 2, {"metric": "train/loss"}),
        ],
    )
    return copy.deepcopy(envelope_to_wire(envelope))  # the wire shares PARAMS; tests mutate it


@dataclass(frozen=True)
class Case:
    """A mutation of the good envelope (or literal bytes) and the reason it must be rejected with."""

    id: str
    reason: str
    mutate: Callable[[Wire], object] | bytes
    group: int | None = None  # the metric group rejected alone; None: the whole envelope
    max_bytes: int | None = None
    detail_starts: str | None = None

    def raw(self) -> bytes:
        if isinstance(self.mutate, bytes):
            return self.mutate
        wire = good_wire()
        replaced = self.mutate(wire)
        return dumps(wire if replaced is None else replaced)


def dumps(wire: object) -> bytes:
    """JSON bytes; the standard library writes nesting deeper than orjson's 254 levels, as an attacker's client can."""
    return json.dumps(wire, separators=(",", ":")).encode()


def nested(depth: int) -> object:
    """A list nested ``depth`` levels deep: ``[[[...]]]``."""
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def put(path: str, value: object) -> Callable[[Wire], None]:
    """Set ``value`` at a dotted path such as ``metrics.1.values.3`` (list indices as integers)."""
    *parents, last = [int(p) if p.lstrip("-").isdigit() else p for p in path.split(".")]

    def mutate(wire: Wire) -> None:
        node: Any = wire
        for part in parents:
            node = node[part]
        node[last] = value
    return mutate


def drop(path: str) -> Callable[[Wire], None]:
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]

    def mutate(wire: Wire) -> None:
        node: Any = wire
        for part in parents:
            node = node[part]
        del node[last]
    return mutate


NONFINITE_BITS = float_to_bits(math.nan)

CASES = [
    Case("oversize", "oversize", lambda w: None, max_bytes=100),
    Case("not-json", "malformed", b'{"v": 1,'),
    Case("not-utf8", "malformed", b'{"v": 1, "host": "\xff"}'),
    Case("empty", "malformed", b""),
    Case("array", "malformed", b"[1, 2, 3]"),
    Case("number", "malformed", b"1"),
    Case("version-2", "unsupported_version", put("v", 2)),
    Case("version-0", "unsupported_version", put("v", 0)),
    Case("version-missing", "missing_field", drop("v"), detail_starts="v"),
    Case("version-str", "mistyped_field", put("v", "1"), detail_starts="v"),
    Case("version-bool", "mistyped_field", put("v", True)),
    Case("version-float", "mistyped_field", put("v", 1.0)),
    Case("producer-missing", "missing_field", drop("producer_id"), detail_starts="producer_id"),
    Case("seq-missing", "missing_field", drop("seq"), detail_starts="seq"),
    Case("entity-missing", "missing_field", drop("entity"), detail_starts="entity"),
    Case("producer-empty", "mistyped_field", put("producer_id", "")),
    Case("seq-str", "mistyped_field", put("seq", "3"), detail_starts="seq"),
    Case("seq-negative", "mistyped_field", put("seq", -1)),
    Case("seq-float", "mistyped_field", put("seq", 3.0)),
    Case("sent-over-int64", "mistyped_field", put("sent_ns", 2**63)),
    Case("rank-negative", "mistyped_field", put("rank", -1)),
    Case("world-size-zero", "mistyped_field", put("world_size", 0)),
    Case("rank-not-below-world-size", "out_of_range", put("rank", 2), detail_starts="rank"),
    Case("world-size-past-uint32", "out_of_range", put("world_size", 2**32 + 1), detail_starts="rank"),
    Case("world-size-past-limit", "out_of_range", put("world_size", 2**24 + 1)),
    Case("entity-id-too-long", "bad_entity", put("entity.id", "r" * 251), detail_starts="entity.id"),
    Case("too-many-groups", "oversize", lambda w: w.__setitem__("metrics", [w["metrics"][0]] * 1025),
         detail_starts="metrics"),
    Case("too-many-points", "oversize", lambda w: w["metrics"][0].update(
        steps=list(range(131_073)), times_ns=[1] * 131_073, values=[1.0] * 131_073), detail_starts="metrics"),
    Case("params-nested-300", "bad_event", put("events.0.params", {"a": nested(300)}),
         detail_starts="events[0].params"),
    Case("tag-value-too-long", "bad_event", put("events.0.tags", {"t": "x" * 8001}),
         detail_starts="events[0].tags"),
    Case("run-name-too-long", "bad_event", put("events.0.name", "n" * 501), detail_starts="events[0].name"),
    Case("host-int", "mistyped_field", put("host", 5)),
    Case("metrics-object", "mistyped_field", put("metrics", {}), detail_starts="metrics"),
    Case("events-str", "mistyped_field", put("events", "x"), detail_starts="events"),
    Case("entity-list", "mistyped_field", put("entity", ["proj", "run", "r"])),
    Case("entity-type", "bad_entity", put("entity.type", "experiment"), detail_starts="entity.type"),
    Case("entity-project-empty", "bad_entity", put("entity.project", "")),
    Case("entity-id-empty", "bad_entity", put("entity.id", "")),
    Case("entity-id-missing", "bad_entity", drop("entity.id")),
    Case("entity-id-int", "bad_entity", put("entity.id", 7)),
    Case("name-empty", "bad_metric_name", put("metrics.1.name", ""), group=1,
         detail_starts="metrics[1].name"),
    Case("name-too-long", "bad_metric_name", put("metrics.1.name", "a" * 251), group=1),
    Case("name-bad-char", "bad_metric_name", put("metrics.1.name", "loss!"), group=1),
    Case("name-non-ascii", "bad_metric_name", put("metrics.1.name", "pérte"), group=1),
    Case("value-str", "non_numeric_value", put("metrics.1.values.2", "2.0"), group=1,
         detail_starts="metrics[1].values[2]"),
    Case("value-bool", "non_numeric_value", put("metrics.1.values.0", True), group=1),
    Case("value-object", "non_numeric_value", put("metrics.1.values.0", {"$f64": 1}), group=1),
    Case("value-null-unmarked", "non_numeric_value", put("metrics.0.values.2", None), group=0,
         detail_starts="metrics[0].values[2]"),
    Case("steps-short", "length_mismatch", put("metrics.1.steps", [0, 1]), group=1),
    Case("times-long", "length_mismatch", put("metrics.2.times_ns", [1, 2]), group=2),
    Case("nonfinite-index-high", "bad_nonfinite", put("metrics.1.nonfinite.0", [8, NONFINITE_BITS]), group=1,
         detail_starts="metrics[1].nonfinite[0]"),
    Case("nonfinite-index-negative", "bad_nonfinite", put("metrics.1.nonfinite.0", [-1, NONFINITE_BITS]),
         group=1),
    Case("nonfinite-value-not-null", "bad_nonfinite", put("metrics.1.nonfinite.0", [0, NONFINITE_BITS]),
         group=1),
    Case("nonfinite-bits-finite", "bad_nonfinite", put("metrics.1.nonfinite.0", [1, float_to_bits(1.0)]),
         group=1),
    Case("nonfinite-bits-float", "bad_nonfinite", put("metrics.1.nonfinite.0", [1, 2.0**64]), group=1),
    Case("nonfinite-duplicate", "bad_nonfinite", put("metrics.1.nonfinite.1", [1, NONFINITE_BITS]), group=1),
    Case("nonfinite-triple", "bad_nonfinite", put("metrics.1.nonfinite.0", [1, NONFINITE_BITS, 0]), group=1),
    Case("step-str", "mistyped_field", put("metrics.1.steps.5", "x"), group=1,
         detail_starts="metrics[1].steps[5]"),
    Case("step-float", "mistyped_field", put("metrics.2.steps.0", 7.0), group=2),
    Case("step-over-int64", "mistyped_field", put("metrics.1.steps.3", 2**63), group=1,
         detail_starts="metrics[1].steps[3]"),
    Case("time-over-int64", "mistyped_field", put("metrics.1.times_ns.7", 2**64 - 1), group=1,
         detail_starts="metrics[1].times_ns[7]"),
    Case("step-below-int64", "mistyped_field", orjson.dumps(good_wire()).replace(
        b'"steps":[7]', b'"steps":[-9223372036854775809]'), group=2, detail_starts="metrics[2].steps[0]"),
    Case("time-bool", "mistyped_field", put("metrics.2.times_ns.0", False), group=2),
    Case("kind-unknown", "mistyped_field", put("metrics.2.kind", "histogram"), group=2),
    Case("name-int", "mistyped_field", put("metrics.2.name", 5), group=2),
    Case("group-not-object", "mistyped_field", put("metrics.2", [1, 2]), group=2, detail_starts="metrics[2]"),
    Case("group-steps-missing", "missing_field", drop("metrics.0.steps"), group=0,
         detail_starts="metrics[0].steps"),
    Case("event-unknown-type", "bad_event", put("events.0.type", "run_paused"), detail_starts="events[0]"),
    Case("event-not-object", "bad_event", put("events.0", "run_started")),
    Case("event-missing-payload", "bad_event", drop("events.0.params"), detail_starts="events[0].params"),
    Case("event-extra-key", "bad_event", put("events.0.colour", "red")),
    Case("event-time-str", "bad_event", put("events.1.time_ns", "2")),
    Case("event-tag-not-str", "bad_event", put("events.0.tags", {"a": 1})),
    Case("event-params-list", "bad_event", put("events.0.params", [1])),
    Case("event-bad-status", "bad_event", lambda w: w["events"].append(
        {"type": "run_finished", "time_ns": 3, "status": "done"})),
    Case("event-overwrite-bad-metric", "bad_event", put("events.1.metric", "no!"),
         detail_starts="events[1].metric"),
]


def outcome(case: Case) -> Rejection | Validated:
    kwargs = {} if case.max_bytes is None else {"max_bytes": case.max_bytes}
    try:
        return validate(case.raw(), **kwargs)
    except Rejection as exc:
        return exc


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_yields_its_reason(case: Case) -> None:
    result = outcome(case)
    if case.group is None:
        assert isinstance(result, Rejection), result
        reason, detail = result.reason, result.detail
        assert result.retriable is False
    else:
        assert isinstance(result, Validated), result
        assert len(result.bad) == 1
        reason, detail = result.bad[0].reason, result.bad[0].detail
    assert reason == case.reason, detail
    if case.detail_starts is not None:
        assert detail.startswith(case.detail_starts + ":"), detail


def test_every_class_of_bad_input_has_its_own_reason() -> None:
    produced = set()
    for case in CASES:
        result = outcome(case)
        produced |= {result.reason} if isinstance(result, Rejection) else {bad.reason for bad in result.bad}
    assert produced == REASONS


def test_good_envelope_passes_whole() -> None:
    result = validate(orjson.dumps(good_wire()))
    assert result.bad == []
    assert [m.name for m in result.envelope.metrics] == ["train/loss", "grad norm", "best.acc"]
    values = result.envelope.metrics[1].values
    expected = (math.nan, math.inf, -math.inf)
    assert [float_to_bits(v) for v in values[1:6:2]] == [float_to_bits(x) for x in expected]
    assert result.envelope.events[0].data["params"] == PARAMS


def test_one_bad_group_keeps_the_others() -> None:
    wire = good_wire()
    wire["metrics"][1]["values"][4] = "three"
    result = validate(orjson.dumps(wire))
    assert [m.name for m in result.envelope.metrics] == ["train/loss", "best.acc"]
    assert result.envelope.point_count() == 4
    assert result.bad == [BadPoints(metric="grad norm", reason="non_numeric_value",
                                    detail=result.bad[0].detail, count=8, raw=wire["metrics"][1])]
    assert result.bad[0].detail.startswith("metrics[1].values[4]:")
    assert "'three'" in result.bad[0].detail


def test_several_bad_groups_each_reported_once() -> None:
    wire = good_wire()
    wire["metrics"][0]["name"] = "bad name?"
    wire["metrics"][2]["steps"] = ["a", "b"]
    wire["metrics"][2]["values"] = ["x", "y", "z"]
    result = validate(orjson.dumps(wire))
    assert [m.name for m in result.envelope.metrics] == ["grad norm"]
    assert [(b.metric, b.reason, b.count) for b in result.bad] == [
        ("bad name?", "bad_metric_name", 3), ("best.acc", "mistyped_field", 3)]


def test_bad_group_without_name_or_values_counts_best_effort() -> None:
    wire = good_wire()
    wire["metrics"][0] = {"steps": [1, 2, 3, 4], "times_ns": [1, 2]}
    wire["metrics"][2] = 42
    result = validate(orjson.dumps(wire))
    assert [(b.metric, b.reason, b.count) for b in result.bad] == [
        (None, "missing_field", 4), (None, "mistyped_field", 0)]
    assert result.bad[1].raw == {"group": 42}


def test_all_groups_bad_still_returns_envelope_and_events() -> None:
    wire = good_wire()
    for group in wire["metrics"]:
        group["kind"] = "?"
    result = validate(orjson.dumps(wire))
    assert result.envelope.metrics == []
    assert len(result.bad) == 3
    assert [e.type for e in result.envelope.events] == ["run_started", "overwrite"]


def test_envelope_error_wins_over_group_errors() -> None:
    wire = good_wire()
    wire["metrics"][0]["values"][0] = "x"
    wire["entity"]["type"] = "job"
    with pytest.raises(Rejection) as info:
        validate(orjson.dumps(wire))
    assert info.value.reason == "bad_entity"


def test_optional_header_fields_default() -> None:
    wire = good_wire()
    for key in ("rank", "world_size", "host", "metrics", "events"):
        del wire[key]
    envelope = validate(orjson.dumps(wire)).envelope
    assert (envelope.rank, envelope.world_size, envelope.host, envelope.metrics, envelope.events) == (
        0, 1, "", [], [])


def test_ints_are_numbers_and_unknown_header_keys_are_ignored() -> None:
    wire = good_wire()
    wire["metrics"][0]["values"] = [1, -2, 2**63]
    wire["future_field"] = {"x": 1}
    values = validate(orjson.dumps(wire)).envelope.metrics[0].values
    assert values == [1.0, -2.0, float(2**63)]
    assert all(type(v) is float for v in values)


def test_oversize_is_checked_before_parsing() -> None:
    with pytest.raises(Rejection) as info:
        validate(b"x" * 11, max_bytes=10)
    assert info.value.reason == "oversize"
    assert validate(encode(Envelope("p", 0, 0, EntityRef("p", "run", "r"))), max_bytes=10_000).bad == []


def test_every_event_type_accepts_exactly_its_fields() -> None:
    payloads = {"name": "n", "params": {"a": [1, {"b": None}]}, "tags": {"k": "v"}, "status": "completed",
                "metric": "m"}
    from trackstream.schemas import EVENT_FIELDS
    for event_type, keys in EVENT_FIELDS.items():
        wire = good_wire()
        wire["events"] = [{"type": event_type, "time_ns": 5, **{key: payloads[key] for key in keys}}]
        assert validate(orjson.dumps(wire)).envelope.events[0].type == event_type
        for key in keys:
            broken = copy.deepcopy(wire)
            del broken["events"][0][key]
            with pytest.raises(Rejection, match="bad_event"):
                validate(orjson.dumps(broken))


JSON_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(),
)
JSON = st.recursive(
    JSON_LEAVES,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=15,
)


def _assert_only_rejects(raw: bytes) -> None:
    try:
        result = validate(raw)
    except Rejection as exc:
        reasons = {exc.reason}
    else:
        reasons = {bad.reason for bad in result.bad}
    assert reasons <= REASONS


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_arbitrary_json_is_accepted_or_rejected_never_crashes(value: object) -> None:
    _assert_only_rejects(orjson.dumps(value))


def _leaf_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    paths = [prefix] if prefix else []
    for key, child in children:
        paths += _leaf_paths(child, (*prefix, key))
    return paths


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_mutated_envelopes_are_accepted_or_rejected_never_crash(data: st.DataObject) -> None:
    wire = good_wire()
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _leaf_paths(wire)
        path = data.draw(st.sampled_from(paths))
        node: Any = wire
        for part in path[:-1]:
            node = node[part]
        if data.draw(st.booleans()) and isinstance(node, dict):
            del node[path[-1]]
        else:
            node[path[-1]] = data.draw(JSON)
    _assert_only_rejects(orjson.dumps(wire))


def test_import_schemas_does_not_load_pydantic() -> None:
    code = "import sys, schemas; assert 'pydantic' not in sys.modules, 'pydantic was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_bad_group_nested_past_the_limit_still_encodes_for_the_dlq() -> None:
    wire = good_wire()
    wire["metrics"][0]["name"] = "no!"
    wire["metrics"][0]["colour"] = nested(300)
    wire["metrics"][1]["values"] = nested(300)
    result = validate(dumps(wire))
    assert sorted(bad.reason for bad in result.bad) == ["bad_metric_name", "non_numeric_value"]
    for bad in result.bad:
        assert "colour" not in bad.raw
        assert len(orjson.dumps(bad.raw)) < 10_000  # orjson writes at most 254 levels: encodable means cut
    assert [group.name for group in result.envelope.metrics] == [wire["metrics"][2]["name"]]


def test_the_stream_side_enforces_the_sdk_limits_on_times_and_params_size() -> None:
    wire = good_wire()
    wire["metrics"][0]["times_ns"][0] = -1
    result = validate(dumps(wire))
    assert [bad.reason for bad in result.bad] == ["out_of_range"]
    wire = good_wire()
    wire["events"][0]["params"] = {"big": "x" * (256 * 1024)}
    with pytest.raises(Rejection, match="bytes encoded"):
        validate(dumps(wire))
    wire = good_wire()
    wire["events"][0]["time_ns"] = -5
    with pytest.raises(Rejection, match="before the epoch"):
        validate(dumps(wire))
