"""Alert rules and fired alerts: their wire format, validation and webhook bodies (issue 15).

A rule (:class:`AlertRule`, built by :func:`make_rule`) watches one metric of one project (or every metric, ``"*"``,
for ``nan``, ``inf`` and ``stalled``) for one condition, ``when``:

- ``nan``: a NaN value; ``inf``: +inf or -inf;
- ``diverge``: a value above ``value`` (k, default 2.0) x the run's running minimum, once ``after_steps`` (default 10)
  finite points were seen;
- ``stalled``: a running run that logged no points for ``value`` seconds (default 300);
- ``above`` / ``below``: a value above / below the threshold ``value``.

An :class:`Alert` says a rule started ("firing") or stopped ("resolved") holding for one entity. Both encode to
JSON bytes with orjson; floats round-trip bit-exactly, NaN and ±inf included (:mod:`trackstream.schemas.floats`).
Webhook bodies (:func:`alert_payload`, :func:`slack_payload`) are plain JSON, so they spell non-finite floats as
the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``.

Light: imports nothing outside the standard library but orjson.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from trackstream.schemas.envelope import ENTITY_TYPES
from trackstream.schemas.floats import exact_float, inexact_float
from trackstream.schemas.limits import NAME_MAX, short_repr
from trackstream.schemas.names import metric_name_problem

WHENS: Final = ("nan", "inf", "diverge", "stalled", "above", "below")
ANY_METRIC: Final = "*"
ANY_METRIC_WHENS: Final = ("nan", "inf", "stalled")
ALERT_STATES: Final = ("firing", "resolved")
DEFAULT_DIVERGE_FACTOR: Final = 2.0
DEFAULT_DIVERGE_AFTER_STEPS: Final = 10
DEFAULT_STALLED_SECONDS: Final = 300.0
WEBHOOK_MAX: Final = 2048
ALERTS_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class AlertRule:
    """One alert rule; build it with :func:`make_rule`, which validates every field.

    ``value``: the threshold (above/below), the factor k (diverge), seconds (stalled), None (nan/inf).
    ``after_steps``: finite points a diverge rule sees before it may fire (0 for the other rules).
    ``id``: a hash of what the rule watches (:func:`rule_id`), so adding the same rule twice names one rule;
    ``version`` grows with each change of it (the newest wins) and ``deleted`` marks a removed rule (a tombstone).
    Change either with :func:`dataclasses.replace`.
    """

    id: str
    project: str
    metric: str
    when: str
    value: float | None
    after_steps: int
    webhook: str | None
    slack: bool = False
    entity_type: str = "run"
    version: int = 0
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class Alert:
    """A rule started (``state="firing"``) or stopped (``"resolved"``) holding for one entity.

    ``metric``: the metric whose point fired or resolved it (stalled: the rule's metric, ``""`` for ``"*"``).
    ``step``, ``value``, ``rank``, ``time_ns``: that point's (``value`` may be NaN or ±inf); for stalled, ``value``
    is the silence in seconds, ``step`` and ``rank`` are None and ``time_ns`` is the evaluation time.
    ``threshold``: what the value was compared with: above/below the threshold, diverge k x the running minimum,
    stalled the limit in seconds, nan/inf None. ``message``: one sentence for humans.
    """

    rule_id: str
    when: str
    project: str
    entity_type: str
    entity_id: str
    metric: str
    state: str
    step: int | None
    value: float | None
    rank: int | None
    time_ns: int
    message: str
    threshold: float | None


def rule_id(rule: AlertRule) -> str:
    """The id ``rule`` should have: 16 hex digits of the SHA-256 of what it watches (project, entity type, metric,
    when, value, after_steps), not of where it notifies; so the same rule added twice has one id."""
    key = orjson.dumps([rule.project, rule.entity_type, rule.metric, rule.when, exact_float(rule.value),
                        rule.after_steps])
    return hashlib.sha256(key).hexdigest()[:16]


def make_rule(project: str, metric: str, when: str, *, value: float | None = None, after_steps: int | None = None,
              webhook: str | None = None, slack: bool = False, entity_type: str = "run") -> AlertRule:
    """A validated :class:`AlertRule` with its defaults filled in and its deterministic id.

    Raises :class:`ValueError` naming what is wrong and what is allowed: an unknown ``when`` or ``entity_type``, a
    bad project or metric name, ``"*"`` with a rule that needs one metric, a missing or non-finite ``value``, a value
    or ``after_steps`` the rule does not take, a webhook that is not an http(s) URL, ``slack`` without a webhook.
    """
    _check_choice("when", when, WHENS)
    rule = AlertRule(id="", project=project, metric=metric, when=when, value=_value(when, value),
                     after_steps=_after_steps(when, after_steps), webhook=webhook, slack=slack,
                     entity_type=entity_type)
    problem = rule_problem(rule)
    if problem is not None:
        raise ValueError(problem)
    return replace(rule, id=rule_id(rule))


def rule_problem(rule: AlertRule) -> str | None:
    """Why ``rule`` is not a valid rule (as :func:`make_rule` would refuse it), or None when it is one.

    The id is not checked: a rule keeps its id whatever wrote it.
    """
    try:
        _check_choice("when", rule.when, WHENS)
        _check_choice("entity_type", rule.entity_type, ENTITY_TYPES)
        _check_names(rule)
        if rule.when == "stalled" and rule.entity_type != "run":
            raise ValueError(f"stalled applies to runs only, not to entity_type {rule.entity_type!r}")
        if rule.value is None and _value(rule.when, None) is not None:
            raise ValueError(f"{rule.when} needs --value ({_VALUE_MEANING[rule.when]}), got None")
        _value(rule.when, rule.value)
        _after_steps(rule.when, rule.after_steps)
        _check_delivery(rule.webhook, rule.slack)
    except ValueError as exc:
        return str(exc)
    return None


def _check_choice(name: str, given: object, allowed: tuple[str, ...]) -> None:
    if not isinstance(given, str) or given not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {short_repr(given)}")


def _check_names(rule: AlertRule) -> None:
    if not isinstance(rule.project, str) or not rule.project:
        raise ValueError(f"project must be a non-empty str, got {short_repr(rule.project)}")
    if len(rule.project) > NAME_MAX:
        raise ValueError(f"project name is {len(rule.project)} characters long, at most {NAME_MAX} are allowed")
    if rule.metric == ANY_METRIC:
        if rule.when not in ANY_METRIC_WHENS:
            raise ValueError(f"metric '*' (every metric) is allowed for {', '.join(ANY_METRIC_WHENS)} only; "
                             f"{rule.when} needs one metric name")
    elif (problem := metric_name_problem(rule.metric)) is not None:
        raise ValueError(f"{problem} (or '*' for every metric)")


_VALUE_MEANING: Final = {"above": "the threshold", "below": "the threshold", "diverge": "the factor k",
                         "stalled": "seconds without points"}


def _value(when: str, value: object) -> float | None:
    """``value`` checked for rule ``when`` and normalised (a float, -0.0 as 0.0, defaults filled in)."""
    if when in ("nan", "inf"):
        if value is not None:
            raise ValueError(f"{when} takes no --value, got {short_repr(value)}")
        return None
    meaning = _VALUE_MEANING[when]
    if value is None:
        if when in ("above", "below"):
            raise ValueError(f"{when} needs --value ({meaning})")
        return DEFAULT_DIVERGE_FACTOR if when == "diverge" else DEFAULT_STALLED_SECONDS
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"--value ({meaning}) must be a number, got {short_repr(value)}")
    number = float(value) + 0.0
    if not math.isfinite(number):
        raise ValueError(f"--value ({meaning}) must be a finite number, got {number}")
    if when == "diverge" and number <= 1.0:
        raise ValueError(f"diverge needs --value (the factor k) above 1, got {number:g}")
    if when == "stalled" and number <= 0.0:
        raise ValueError(f"stalled needs --value (seconds without points) above 0, got {number:g}")
    return number


def _after_steps(when: str, after_steps: object) -> int:
    if after_steps is None:
        return DEFAULT_DIVERGE_AFTER_STEPS if when == "diverge" else 0
    if isinstance(after_steps, bool) or not isinstance(after_steps, int) or after_steps < 0:
        raise ValueError(f"--after-steps must be an int >= 0, got {short_repr(after_steps)}")
    if when != "diverge" and after_steps != 0:
        raise ValueError(f"--after-steps applies to diverge only, not to {when}")
    return after_steps


def _check_delivery(webhook: object, slack: object) -> None:
    if not isinstance(slack, bool):
        raise ValueError(f"slack must be True or False, got {short_repr(slack)}")
    if webhook is None:
        if slack:
            raise ValueError("slack needs a webhook (the Slack incoming-webhook URL)")
        return
    if not isinstance(webhook, str) or len(webhook) > WEBHOOK_MAX or not webhook.isprintable() or " " in webhook:
        raise ValueError(f"a webhook must be an http:// or https:// URL of at most {WEBHOOK_MAX} printable "
                         "characters without spaces")
    try:
        parts = urlsplit(webhook)
        host, _ = parts.hostname, parts.port  # .port raises ValueError when out of range
    except ValueError:
        host = None
    if not host or not webhook.lower().startswith(("http://", "https://")):
        raise ValueError("a webhook must be an http:// or https:// URL with a host, "
                         "e.g. https://hooks.example.com/alerts")


def encode_rule(rule: AlertRule) -> bytes:
    """JSON ``{"v": 1, "id", "project", "metric", "when", "value", "after_steps", "webhook", "slack",
    "entity_type", "version", "deleted"}``; a non-finite value would travel as ``{"$f64": bits}``."""
    return _encode(asdict(rule))


def decode_rule(raw: bytes) -> AlertRule:
    """Inverse of :func:`encode_rule`, validated as :func:`make_rule` validates.

    Raises :class:`ValueError` for bytes that are not such a rule (bad JSON, a missing or mistyped field, an
    invalid rule); keys it does not know are ignored. ``slack``, ``entity_type``, ``version``, ``deleted`` default.
    """
    rule = AlertRule(**_decode(raw, AlertRule, "alert rule"))
    problem = rule_problem(rule)
    if problem is not None:
        raise ValueError(f"not a valid alert rule: {problem}")
    return rule


def encode_alert(alert: Alert) -> bytes:
    """JSON ``{"v": 1, "rule_id", "when", "project", "entity_type", "entity_id", "metric", "state", "step", "value",
    "rank", "time_ns", "message", "threshold"}``; non-finite floats travel as ``{"$f64": bits}``."""
    return _encode(asdict(alert))


def decode_alert(raw: bytes) -> Alert:
    """Inverse of :func:`encode_alert`, floats restored bit-exactly.

    Raises :class:`ValueError` for bytes that are not such an alert (bad JSON, a missing or mistyped field, an
    unknown ``when`` or ``state``); keys it does not know are ignored.
    """
    alert = Alert(**_decode(raw, Alert, "alert"))
    try:
        _check_choice("when", alert.when, WHENS)
        _check_choice("state", alert.state, ALERT_STATES)
        _check_choice("entity_type", alert.entity_type, ENTITY_TYPES)
    except ValueError as exc:
        raise ValueError(f"not a valid alert: {exc}") from None
    return alert


def _encode(wire: dict[str, Any]) -> bytes:
    return orjson.dumps({"v": ALERTS_VERSION, **{key: exact_float(value) for key, value in wire.items()}})


# The JSON types each field's annotation admits; float fields also take ints (JSON cannot tell 2.0 from 2).
_JSON_TYPES: Final[dict[str, tuple[type, ...]]] = {"str": (str,), "int": (int,), "bool": (bool,),
                                                   "float": (float, int)}
_DEFAULTED: Final = {"slack": False, "entity_type": "run", "version": 0, "deleted": False}


def _json_type_fits(value: object, annotation: str) -> bool:
    if value is None:
        return "None" in annotation
    allowed = _JSON_TYPES[annotation.partition(" ")[0]]
    return isinstance(value, allowed) and (bool in allowed or not isinstance(value, bool))


def _decode(raw: bytes, cls: type[Any], what: str) -> dict[str, Any]:
    try:
        wire = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"not an {what}: not JSON ({exc})") from None
    if not isinstance(wire, dict):
        raise ValueError(f"not an {what}: expected a JSON object, got {type(wire).__name__}")
    if wire.get("v") != ALERTS_VERSION:
        raise ValueError(f"not an {what}: version {short_repr(wire.get('v'))}, this code reads {ALERTS_VERSION}")
    values: dict[str, Any] = {}
    for spec in fields(cls):
        name, annotation = spec.name, str(spec.type)
        if name not in wire and name in _DEFAULTED:
            continue
        if name not in wire:
            raise ValueError(f"not an {what}: field {name!r} is missing")
        value = wire[name]
        if "float" in annotation:
            try:
                value = inexact_float(value)
            except (struct.error, TypeError):
                raise ValueError(f"not an {what}: field {name!r} holds bad float bits {short_repr(value)}") from None
        if not _json_type_fits(value, annotation):
            raise ValueError(f"not an {what}: field {name!r} must be {annotation}, got {short_repr(value)}")
        values[name] = float(value) if "float" in annotation and value is not None else value
    return values


def _json_float(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def alert_payload(alert: Alert) -> dict[str, Any]:
    """The JSON body a webhook receives: every field of ``alert``, its non-finite floats as the strings
    ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (JSON has no such numbers)."""
    payload = asdict(alert)
    payload["value"] = _json_float(alert.value)
    payload["threshold"] = _json_float(alert.threshold)
    return payload


def slack_payload(alert: Alert) -> dict[str, Any]:
    """A Slack incoming-webhook body: ``{"text": "FIRING: <message>"}`` (or ``RESOLVED:``), with ``&``, ``<`` and
    ``>`` escaped as Slack requires."""
    text = f"{alert.state.upper()}: {alert.message}"
    return {"text": text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")}
