"""Stream-side validation of untrusted envelope bytes (docs/architecture.md, docs/wire-format.md).

:func:`validate` turns raw Kafka message bytes into an :class:`~trackstream.schemas.envelope.Envelope`, or says why it
cannot, with a machine-readable reason from :data:`REASONS` that the DLQ record carries.

Two levels of rejection, because one bad metric must not cost the points of every other metric:

- the whole envelope (:class:`Rejection`): oversize, not JSON, unknown version, bad header, entity or event;
- one metric group (:class:`BadPoints` in :attr:`Validated.bad`): bad name, non-numeric value, columns of
  different lengths, bad non-finite entry, mistyped field inside the group. The other groups are kept.

Speed: the columns are checked by one strict pydantic validation of the whole envelope, which runs in Rust
over typed lists; Python only looks at per-group facts (name, lengths, ``nonfinite`` entries) and at the
error list when something is wrong, whose locations already point at the offending index.

This is the only module of :mod:`trackstream.schemas` that imports pydantic; ``import schemas`` does not load it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal, NotRequired

import orjson
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.types import FailFast
from pydantic_core import ErrorDetails
from typing_extensions import TypedDict

from trackstream.schemas.envelope import (
    EVENT_FIELDS,
    MAX_ENVELOPE_BYTES,
    RUN_STATUSES,
    SCHEMA_VERSION,
    Envelope,
    WireFormatError,
    envelope_from_wire,
)
from trackstream.schemas.limits import (
    GROUPS_PER_ENVELOPE_MAX,
    NAME_MAX,
    NESTING_MAX,
    PARAMS_BYTES_MAX,
    POINTS_PER_ENVELOPE_MAX,
    RUN_NAME_MAX,
    TAG_VALUE_MAX,
    mapping_problem,
    nesting_depth,
    rank_problem,
    short_repr,
)
from trackstream.schemas.names import metric_name_problem

REASONS: Final = frozenset({
    "oversize",
    "malformed",
    "unsupported_version",
    "missing_field",
    "mistyped_field",
    "bad_entity",
    "bad_metric_name",
    "non_numeric_value",
    "length_mismatch",
    "bad_nonfinite",
    "bad_event",
    "out_of_range",
})

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_UINT64_MAX: Final = 2**64 - 1
_EXPONENT_MASK: Final = 0x7FF
_MANTISSA_BITS: Final = 52

Int64 = Annotated[int, Field(ge=_INT64_MIN, le=_INT64_MAX)]
NonNegInt64 = Annotated[int, Field(ge=0, le=_INT64_MAX)]
NonEmptyStr = Annotated[str, Field(min_length=1)]
UInt64 = Annotated[int, Field(ge=0, le=_UINT64_MAX)]
NonFiniteEntry = Annotated[list[UInt64], Field(min_length=2, max_length=2)]

# Columns stop at their first bad item: 20k bad items would otherwise cost 20k error records.
# Their int64 range is checked by max() in _group_problem, 3x cheaper than per-item bounds here.
IntColumn = Annotated[list[int], FailFast()]

_STRICT: Final = ConfigDict(strict=True)
_STRICT_CLOSED: Final = ConfigDict(strict=True, extra="forbid")


class Rejection(WireFormatError):
    """The whole envelope is rejected: ``reason`` is one of :data:`REASONS`, ``detail`` names the path."""

    retriable = False


@dataclass(slots=True)
class BadPoints:
    """A rejected metric group: its name when readable, why, how many points it held, and its raw mapping."""

    metric: str | None
    reason: str
    detail: str
    count: int
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Validated:
    """An accepted envelope (holding only the good metric groups) and the groups that were rejected."""

    envelope: Envelope
    bad: list[BadPoints] = field(default_factory=list)


class _Entity(TypedDict):
    __pydantic_config__ = _STRICT_CLOSED  # type: ignore[misc]
    project: NonEmptyStr
    type: Literal["run", "model"]
    id: NonEmptyStr


class _Group(TypedDict):
    __pydantic_config__ = _STRICT  # type: ignore[misc]
    name: str
    kind: Literal["series", "single"]
    steps: IntColumn
    times_ns: IntColumn
    values: Annotated[list[float | None], FailFast()]
    nonfinite: NotRequired[list[NonFiniteEntry]]


class _RunStarted(TypedDict):
    __pydantic_config__ = _STRICT_CLOSED  # type: ignore[misc]
    type: Literal["run_started"]
    time_ns: Int64
    name: str
    params: dict[str, Any]
    tags: dict[str, str]


class _RunFinished(TypedDict):
    __pydantic_config__ = _STRICT_CLOSED  # type: ignore[misc]
    type: Literal["run_finished"]
    time_ns: Int64
    status: Literal[RUN_STATUSES]  # type: ignore[valid-type]


class _Params(TypedDict):
    __pydantic_config__ = _STRICT_CLOSED  # type: ignore[misc]
    type: Literal["params"]
    time_ns: Int64
    params: dict[str, Any]


class _Tags(TypedDict):
    __pydantic_config__ = _STRICT_CLOSED  # type: ignore[misc]
    type: Literal["tags"]
    time_ns: Int64
    tags: dict[str, str]


class _Overwrite(TypedDict):
    __pydantic_config__ = _STRICT_CLOSED  # type: ignore[misc]
    type: Literal["overwrite"]
    time_ns: Int64
    metric: str


class _Heartbeat(TypedDict):
    __pydantic_config__ = _STRICT_CLOSED  # type: ignore[misc]
    type: Literal["heartbeat"]
    time_ns: Int64


_Event = Annotated[_RunStarted | _RunFinished | _Params | _Tags | _Overwrite | _Heartbeat,
                   Field(discriminator="type")]


class _Wire(TypedDict):
    """Envelope v1 after the version check; field order is the order errors are reported in."""

    __pydantic_config__ = _STRICT  # type: ignore[misc]
    producer_id: NonEmptyStr
    seq: NonNegInt64
    sent_ns: Int64
    entity: _Entity
    rank: NotRequired[NonNegInt64]
    world_size: NotRequired[Annotated[int, Field(ge=1, le=_INT64_MAX)]]
    host: NotRequired[str]
    metrics: NotRequired[list[_Group]]
    events: NotRequired[list[_Event]]
    entity_seq: NotRequired[NonNegInt64]
    entity_offset: NotRequired[NonNegInt64]


_WIRE: Final = TypeAdapter(_Wire)


def validate(raw: bytes, *, max_bytes: int = MAX_ENVELOPE_BYTES) -> Validated:
    """Check untrusted envelope bytes; raise :class:`Rejection` or return the envelope and its bad groups."""
    if len(raw) > max_bytes:
        raise Rejection("oversize", f"envelope is {len(raw)} bytes, at most {max_bytes} are accepted")
    wire = _parse(raw)
    _check_version(wire)
    group_errors = _check_structure(wire)
    _check_semantics(wire)
    good: list[dict[str, Any]] = []
    bad: list[BadPoints] = []
    for index, group in enumerate(wire.get("metrics", ())):
        problem = group_errors.get(index) or _group_problem(index, group)
        if problem is None:
            good.append(group)
        else:
            bad.append(_bad_points(group, *problem))
    wire["metrics"] = good
    return Validated(envelope=envelope_from_wire(wire), bad=bad)


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        wire = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Rejection("malformed", f"not JSON: {exc}") from None
    if not isinstance(wire, dict):
        raise Rejection("malformed", f"an envelope is a JSON object, got {type(wire).__name__}")
    return wire


def _check_version(wire: dict[str, Any]) -> None:
    if "v" not in wire:
        raise Rejection("missing_field", "v: schema version is missing")
    version = wire["v"]
    if type(version) is not int:
        raise Rejection("mistyped_field", f"v: schema version must be an integer, got {short_repr(version)}")
    if version != SCHEMA_VERSION:
        detail = f"v: schema version {version}, this build reads {SCHEMA_VERSION}"
        raise Rejection("unsupported_version", detail)


def _check_structure(wire: dict[str, Any]) -> dict[int, tuple[str, str]]:
    """Raise on the first envelope-level error; return the first error of each bad metric group by index."""
    events = wire.get("events")
    for index, event in enumerate(events if isinstance(events, list) else ()):
        # pydantic's tagged-union error prints the tag with repr(), unbounded: a deeply nested one overflows it
        if isinstance(event, dict) and "type" in event and not isinstance(event["type"], str):
            raise Rejection("bad_event", f"events[{index}].type must be a string, got {type(event['type']).__name__}")
    try:
        _WIRE.validate_python(wire)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    else:
        return {}
    group_errors: dict[int, tuple[str, str]] = {}
    for error in errors:
        loc = error["loc"]
        if len(loc) >= 2 and loc[0] == "metrics" and isinstance(loc[1], int):
            group_errors.setdefault(loc[1], _group_error(error))
        else:
            raise Rejection(*_envelope_error(error))
    return group_errors


def _envelope_error(error: ErrorDetails) -> tuple[str, str]:
    loc = error["loc"]
    if loc[0] == "entity" and len(loc) > 1:
        reason = "bad_entity"
    elif loc[0] == "events" and len(loc) > 1:
        reason = "bad_event"
        loc = _strip_event_tag(loc)
    elif error["type"] == "missing":
        reason = "missing_field"
    else:
        reason = "mistyped_field"
    return reason, _error_detail(loc, error)


def _strip_event_tag(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    # A tagged union puts the tag in the location: events[0].run_finished.status -> events[0].status.
    if len(loc) > 3 and loc[2] in EVENT_FIELDS:
        return loc[:2] + loc[3:]
    return loc


def _group_error(error: ErrorDetails) -> tuple[str, str]:
    loc = error["loc"]
    column = loc[2] if len(loc) > 2 else None
    if error["type"] == "missing":
        reason = "missing_field"
    elif column == "values" and len(loc) > 3:
        reason = "non_numeric_value"
    elif column == "nonfinite" and len(loc) > 3:
        reason = "bad_nonfinite"
    else:
        reason = "mistyped_field"
    return reason, _error_detail(loc, error)


def _check_semantics(wire: dict[str, Any]) -> None:
    """What the schema cannot say: the limits of :mod:`trackstream.schemas.limits`, and overwrite markers naming a
    valid metric. Rank, world size, groups and points past a limit reject the whole envelope (``out_of_range``,
    ``oversize``); so do params and tags past theirs (``bad_event``) and overlong entity names (``bad_entity``)."""
    problem = rank_problem(wire.get("rank", 0), wire.get("world_size", 1))
    if problem is not None:
        raise Rejection("out_of_range", f"rank: {problem}")
    for field_name in ("project", "id"):
        if len(wire["entity"][field_name]) > NAME_MAX:
            raise Rejection("bad_entity", f"entity.{field_name}: longer than {NAME_MAX} characters")
    groups = wire.get("metrics", ())
    if len(groups) > GROUPS_PER_ENVELOPE_MAX:
        raise Rejection("oversize", f"metrics: {len(groups)} metric groups, at most {GROUPS_PER_ENVELOPE_MAX}")
    points = sum(len(group["values"]) if isinstance(group.get("values"), list) else 0 for group in groups
                 if isinstance(group, dict))
    if points > POINTS_PER_ENVELOPE_MAX:
        raise Rejection("oversize", f"metrics: {points} points, at most {POINTS_PER_ENVELOPE_MAX}")
    for index, event in enumerate(wire.get("events", ())):
        problem = _event_problem(event)
        if problem is not None:
            raise Rejection("bad_event", f"events[{index}].{problem}")


def _event_problem(event: dict[str, Any]) -> str | None:
    if event["type"] == "overwrite":
        problem = metric_name_problem(event["metric"])
        return None if problem is None else f"metric: {problem}"
    if event["type"] == "run_started" and len(event["name"]) > RUN_NAME_MAX:
        return f"name: longer than {RUN_NAME_MAX} characters"
    for field_name in ("params", "tags"):
        if field_name in event:
            value_max = TAG_VALUE_MAX if field_name == "tags" else None
            problem = mapping_problem(field_name, event[field_name], value_max=value_max)
            if problem is not None:
                return f"{field_name}: {problem}"
            size = len(orjson.dumps(event[field_name]))
            if size > PARAMS_BYTES_MAX:
                return f"{field_name}: {size} bytes encoded, at most {PARAMS_BYTES_MAX}"
    if event["time_ns"] < 0:
        return f"time_ns: {event['time_ns']} is before the epoch"
    return None


def _group_problem(index: int, group: dict[str, Any]) -> tuple[str, str] | None:
    """The first problem of a structurally sound metric group, or None when it is good."""
    path = f"metrics[{index}]"
    name_problem = metric_name_problem(group["name"])
    if name_problem is not None:
        return "bad_metric_name", f"{path}.name: {name_problem}"
    values = group["values"]
    lengths = (len(group["steps"]), len(group["times_ns"]), len(values))
    if lengths[0] != lengths[2] or lengths[1] != lengths[2]:
        return "length_mismatch", f"{path}: steps, times_ns and values hold {lengths} entries"
    return _int64_problem(path, group) or _nonfinite_problem(path, values, group.get("nonfinite", ()))


def _int64_problem(path: str, group: dict[str, Any]) -> tuple[str, str] | None:
    # orjson parses integers below -2**63 as floats, which strict validation already refused.
    for column in ("steps", "times_ns"):
        ints: list[int] = group[column]
        if ints and max(ints) > _INT64_MAX:
            index = next(i for i, value in enumerate(ints) if value > _INT64_MAX)
            return "mistyped_field", f"{path}.{column}[{index}]: {ints[index]} is beyond the int64 range"
    times: list[int] = group["times_ns"]
    if times and min(times) < 0:
        index = next(i for i, value in enumerate(times) if value < 0)
        return "out_of_range", f"{path}.times_ns[{index}]: {times[index]} is before the epoch"
    return None


def _nonfinite_problem(path: str, values: list[float | None], nonfinite: Any) -> tuple[str, str] | None:
    marked: set[int] = set()
    for position, (index, bits) in enumerate(nonfinite):
        where = f"{path}.nonfinite[{position}]"
        if index >= len(values):
            return "bad_nonfinite", f"{where}: index {index} is beyond the {len(values)} values"
        if values[index] is not None:
            return "bad_nonfinite", f"{where}: values[{index}] is {short_repr(values[index])}, not null"
        if index in marked:
            return "bad_nonfinite", f"{where}: index {index} is listed twice"
        if (bits >> _MANTISSA_BITS) & _EXPONENT_MASK != _EXPONENT_MASK:
            return "bad_nonfinite", f"{where}: bits {bits:#018x} are a finite float64"
        marked.add(index)
    if values.count(None) != len(marked):
        index = next(i for i, value in enumerate(values) if value is None and i not in marked)
        return "non_numeric_value", f"{path}.values[{index}]: null without a nonfinite entry"
    return None


_GROUP_FIELDS: Final = ("name", "kind", "steps", "times_ns", "values", "nonfinite")


def _bad_points(group: Any, reason: str, detail: str) -> BadPoints:
    """The DLQ's view of a bad group: its known fields only, and none nested past the limit (so it encodes)."""
    if not isinstance(group, dict):
        raw: dict[str, Any] = {"group": group}
        if nesting_depth(raw) > NESTING_MAX:
            raw = {"group": f"{type(group).__name__} nested deeper than {NESTING_MAX} levels (omitted)"}
        return BadPoints(metric=None, reason=reason, detail=detail, count=0, raw=raw)
    name = group.get("name")
    raw = {key: group[key] for key in _GROUP_FIELDS if key in group}
    for key, value in raw.items():
        if nesting_depth(value) > NESTING_MAX:
            raw[key] = f"nested deeper than {NESTING_MAX} levels (omitted)"
    return BadPoints(
        metric=name if isinstance(name, str) else None, reason=reason, detail=detail,
        count=_point_count(group), raw=raw,
    )


def _point_count(group: dict[str, Any]) -> int:
    """Best effort: the length of the values column, else of the longest column that is a list."""
    values = group.get("values")
    if isinstance(values, list):
        return len(values)
    lengths = [len(group[key]) for key in ("steps", "times_ns") if isinstance(group.get(key), list)]
    return max(lengths, default=0)


def _error_detail(loc: tuple[int | str, ...], error: ErrorDetails) -> str:
    detail = f"{_path(loc)}: {error['msg']}"
    if error["type"] != "missing":
        detail += f", got {short_repr(error.get('input'))}"
    return detail


def _path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "$"
