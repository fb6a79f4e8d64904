"""Decode-time checks of processed records: what the store's columns cannot hold is rejected, record by record.

The sink worker decodes every message of ``<prefix>.steps/.entities`` into its records one at a time
(:func:`decode_records`; a ``<prefix>.alerts`` message is one alert, :func:`decode_alert_message`), and
``<prefix>.points`` messages through :meth:`~trackstream.sinks.batch.PointColumns.add_raw`, which calls
:func:`check_point_block`. A record that is malformed, or holds a value its column cannot store (an integer past
UInt32, UInt64 or Int64, a rank or world size past :data:`~trackstream.schemas.limits.WORLD_SIZE_MAX`, params nested
past :data:`~trackstream.schemas.limits.NESTING_MAX`), is rejected with a reason and the field, before any batch is
built, so the other records of the same message and chunk are still written. The checks are cheap: per record a
few comparisons; a point block's columns are checked as they become the batch's numpy arrays.

Reasons: ``malformed`` (the message is not a processed-topic message), ``unsupported_version``,
``malformed_record`` (a record of the wrong shape or types) and ``unstorable_value`` (in range of JSON, out of
range of its column).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from functools import partial
from typing import Any, Final

import orjson

from trackstream.schemas.alerts import Alert, decode_alert
from trackstream.schemas.envelope import EntityRef
from trackstream.schemas.errors import require
from trackstream.schemas.floats import inexact_float
from trackstream.schemas.limits import (
    INT64_MAX,
    INT64_MIN,
    NESTING_MAX,
    WORLD_SIZE_MAX,
    nesting_depth,
    rank_problem,
    short_repr,
)
from trackstream.schemas.processed import PROCESSED_VERSION, EntityState, PointBlock, StepAggregate

U32: Final = (0, 2**32 - 1)
U64: Final = (0, 2**64 - 1)
I64: Final = (INT64_MIN, INT64_MAX)
RANK: Final = (0, WORLD_SIZE_MAX - 1)
WORLD_SIZE: Final = (1, WORLD_SIZE_MAX)

# The integer columns of each record (sinks/schema.py); an integer field not listed here is an Int64.
_INTS: Final[dict[type[Any], dict[str, tuple[int, int]]]] = {
    StepAggregate: {"generation": U32, "count": U32, "world_size": WORLD_SIZE},
    EntityState: {"lost_points": U64, "version": U64},
}
RECORD_TYPES: Final[dict[str, type[Any]]] = {"steps": StepAggregate, "entities": EntityState}


class Rejected(ValueError):
    """A record (or a whole message) that cannot be stored: ``reason`` and ``field`` say why."""

    reason = "malformed_record"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {detail}" if field else detail)
        self.field = field


class Malformed(Rejected):
    """The message is not a processed-topic message (not JSON, not ``{"v", "records"}``)."""

    reason = "malformed"


class UnsupportedVersion(Rejected):
    """The message's ``v`` is not this build's :data:`~trackstream.schemas.processed.PROCESSED_VERSION`."""

    reason = "unsupported_version"


class Unstorable(Rejected):
    """A value in range of JSON but not of its column (reason ``unstorable_value``)."""

    reason = "unstorable_value"


def reason_of(exc: BaseException) -> str:
    """The dead-letter reason of an exception raised while decoding: a :class:`Rejected`'s own, else ``malformed``."""
    return exc.reason if isinstance(exc, Rejected) else "malformed"


def check_int(name: str, value: Any, bounds: tuple[int, int]) -> int:
    """``value`` if it is an integer within ``bounds`` (inclusive); raises :class:`Rejected` otherwise.

    JSON integers past 64 bits come out of orjson as floats: any float is :class:`Unstorable`, like an integer out
    of ``bounds``; a bool, a string or ``None`` is malformed.
    """
    if type(value) is int:
        if bounds[0] <= value <= bounds[1]:
            return value
        raise Unstorable(f"{value} is outside {bounds[0]}..{bounds[1]}", field=name)
    if type(value) is float:
        raise Unstorable(f"{short_repr(value)} is not an integer in {bounds[0]}..{bounds[1]}", field=name)
    raise Rejected(f"must be an integer, got {type(value).__name__}", field=name)


def check_str(name: str, value: Any) -> str:
    """``value`` if it is a string; raises :class:`Rejected` otherwise."""
    if type(value) is not str:
        raise Rejected(f"must be a string, got {type(value).__name__}", field=name)
    return value


def int64_column(name: str, values: Any) -> Any:
    """A point block's steps or times as an int64 array; raises :class:`Unstorable` for an integer past Int64 and
    :class:`Rejected` for a non-number. (One C-speed pass, which the batch needs anyway.)"""
    np = require("numpy", "sinks")
    if type(values) is not list:
        raise Rejected(f"must be a list, got {type(values).__name__}", field=name)
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:
        culprit = next((v for v in values if isinstance(v, int | float) and not INT64_MIN <= v <= INT64_MAX), "?")
        raise Unstorable(f"{culprit} is outside the int64 range", field=name) from None
    except (TypeError, ValueError) as exc:
        raise Rejected(f"holds a non-integer ({exc})", field=name) from None


def float64_column(name: str, values: list[Any]) -> Any:
    """A point block's values as a float64 array (``null``, a non-finite value on the wire, becomes NaN until its
    bits are put back); raises :class:`Rejected` for an entry that is not a number."""
    np = require("numpy", "sinks")
    try:
        return np.array(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise Rejected(f"holds a non-number ({exc})", field=name) from None


def check_point_block(wire: Any) -> None:
    """Raise :class:`Rejected` unless ``wire`` (a decoded ``<prefix>.points`` message) can be stored as it is.

    Checks the entity, ``rank`` (0..``WORLD_SIZE_MAX - 1``), ``seq`` (UInt64), ``producer_id``, and per metric group
    its name and kind, ``generation`` (UInt32), columns of one length and ``nonfinite`` entries (an index into the
    group's values, UInt64 bits). Steps, times and values are checked as they become the batch's arrays
    (:func:`int64_column`, :func:`float64_column`).
    """
    if type(wire) is not dict:
        raise Malformed(f"a point block must be a JSON object, got {type(wire).__name__}")
    try:
        entity, rank, seq = wire["entity"], wire["rank"], wire["seq"]
        metrics, generations, producer_id = wire["metrics"], wire["generations"], wire["producer_id"]
    except KeyError as exc:
        raise Malformed(f"a point block needs {exc}") from None
    _check_entity(entity)
    check_int("rank", rank, RANK)
    check_int("seq", seq, U64)
    check_int("incarnation", wire.get("incarnation", 0), U32)
    check_str("producer_id", producer_id)
    if type(metrics) is not list or type(generations) is not list or len(metrics) != len(generations):
        raise Rejected("metrics and generations must be lists of the same length", field="metrics")
    for at, (group, generation) in enumerate(zip(metrics, generations, strict=True)):
        name = f"metrics[{at}]"
        if type(group) is not dict:
            raise Rejected("must be an object", field=name)
        check_int(f"generations[{at}]", generation, U32)
        check_str(f"{name}.name", group.get("name"))
        check_str(f"{name}.kind", group.get("kind"))
        steps, times, values = group.get("steps"), group.get("times_ns"), group.get("values")
        if type(steps) is not list or type(times) is not list or type(values) is not list \
                or not len(steps) == len(times) == len(values):
            raise Rejected("steps, times_ns and values must be lists of one length", field=name)
        nonfinite = group.get("nonfinite", [])
        if type(nonfinite) is not list:
            raise Rejected("must be a list of [index, bits]", field=f"{name}.nonfinite")
        for entry in nonfinite:
            if type(entry) is not list or len(entry) != 2:
                raise Rejected("nonfinite entries must be [index, bits]", field=f"{name}.nonfinite")
            check_int(f"{name}.nonfinite index", entry[0], (0, len(values) - 1))
            check_int(f"{name}.nonfinite bits", entry[1], U64)


def _check_entity(entity: Any) -> EntityRef:
    if type(entity) is not list or len(entity) != 3 or not all(type(part) is str for part in entity):
        raise Rejected("must be [project, type, id] strings", field="entity")
    return EntityRef(project=entity[0], type=entity[1], id=entity[2])


@dataclass(slots=True)
class Decoded:
    """The records of one message that can be stored, and ``(index, reason, detail)`` of those that cannot."""

    records: list[Any] = field(default_factory=list)
    rejected: list[tuple[int, str, str]] = field(default_factory=list)


def decode_records(kind: str, raw: bytes | None) -> Decoded:
    """The records of one ``<prefix>.steps/.entities/.alerts`` message, each checked on its own.

    Raises :class:`Rejected` (``malformed``, ``unsupported_version``) when the message as a whole cannot be read;
    a bad record inside a good message lands in :attr:`Decoded.rejected` and the others are kept.
    """
    if kind == "alerts":
        return Decoded(records=[decode_alert_message(raw)])
    cls = RECORD_TYPES[kind]
    try:
        wire = orjson.loads(raw if raw is not None else b"")
    except orjson.JSONDecodeError as exc:
        raise Malformed(f"not JSON: {exc}") from None
    if type(wire) is not dict or type(wire.get("records")) is not list:
        raise Malformed('a processed-topic message must be {"v": 1, "records": [...]}')
    if wire.get("v", PROCESSED_VERSION) != PROCESSED_VERSION:
        raise UnsupportedVersion(f"v={short_repr(wire.get('v'))}, this build reads {PROCESSED_VERSION}")
    decoded = Decoded()
    for index, record in enumerate(wire["records"]):
        try:
            decoded.records.append(record_from_wire(cls, record))
        except Exception as exc:
            reason = exc.reason if isinstance(exc, Rejected) else "malformed_record"
            decoded.rejected.append((index, reason, str(exc) or type(exc).__name__))
    return decoded


def decode_alert_message(raw: bytes | None) -> Alert:
    """The alert of one ``<prefix>.alerts`` message (:func:`~trackstream.schemas.alerts.decode_alert`), its
    integers checked against the ``alerts`` table's columns.

    Raises :class:`Malformed` for bytes that are not an alert, :class:`Unstorable` for a step, rank or time its
    column cannot hold.
    """
    try:
        alert = decode_alert(raw if raw is not None else b"")
    except ValueError as exc:
        raise Malformed(str(exc)) from None
    if alert.step is not None:
        check_int("step", alert.step, I64)
    if alert.rank is not None:
        check_int("rank", alert.rank, U32)
    check_int("time_ns", alert.time_ns, I64)
    return alert


StepRun = tuple[tuple[str, str, str], str, int, Any, Any, Any, Any]
_STEP_FIELDS: Final = 10  # StepAggregate's fields: a record with that many keys and all of them named is whole


def step_runs(raw: bytes | None) -> tuple[list[StepRun], int] | None:
    """The records of a ``<prefix>.steps`` message as column runs, checked column by column; ``None`` when the
    message needs :func:`decode_records` (anything malformed or out of range, a non-finite float, several entities):
    that path then says which records fail and why.

    A run is ``(entity, metric, generation, steps, times_ns, means, counts)`` for consecutive records of one metric
    and generation, the last four as numpy arrays. Returns the runs and the number of records.
    """
    np = require("numpy", "sinks")
    try:
        wire = orjson.loads(raw if raw is not None else b"")
        records = wire["records"]
        if wire.get("v", PROCESSED_VERSION) != PROCESSED_VERSION or type(records) is not list:
            return None
        if not records:
            return [], 0
        if not all(type(r) is dict and len(r) == _STEP_FIELDS for r in records):
            return None
        entity = records[0]["entity"]
        ints = [[r[name] for r in records] for name in ("step", "time_ns", "generation", "count", "world_size")]
        floats = [[r[name] for r in records] for name in ("mean", "min", "max")]
        metrics = [r["metric"] for r in records]
        if not all(r["entity"] == entity for r in records) or {type(m) for m in metrics} != {str}:
            return None
        if any({type(v) for v in column} != {int} for column in ints) or \
                any(not {type(v) for v in column} <= {float, int} for column in floats):
            return None
        steps, times, generations, counts, world_sizes = (np.array(column, dtype=np.int64) for column in ints)
        means = np.array(floats[0], dtype=np.float64)
    except (TypeError, KeyError, ValueError, OverflowError, orjson.JSONDecodeError):
        return None
    low, high = U32
    if generations.min() < low or generations.max() > high or counts.min() < low or counts.max() > high or \
            world_sizes.min() < WORLD_SIZE[0] or world_sizes.max() > WORLD_SIZE[1]:
        return None
    try:
        ref = _check_entity(entity)
    except Rejected:
        return None
    key: tuple[str, str, str] = (ref.project, ref.type, ref.id)
    gens = ints[2]
    change = [0, *(i for i in range(1, len(records)) if metrics[i] != metrics[i - 1] or gens[i] != gens[i - 1]),
              len(records)]
    runs = [(key, metrics[a], gens[a], steps[a:b], times[a:b], means[a:b], counts[a:b])
            for a, b in itertools.pairwise(change)]
    return runs, len(records)


_Checker = Callable[[str, Any], Any]
_FIELDS: dict[type[Any], tuple[dict[str, _Checker], frozenset[str]]] = {}


def _fields(cls: type[Any]) -> tuple[dict[str, _Checker], frozenset[str]]:
    """(field -> its check, required fields) of a record class: integers against their column's range."""
    found = _FIELDS.get(cls)
    if found is None:
        ints = _INTS[cls]
        checks: dict[str, _Checker] = {}
        for f in fields(cls):
            kind = str(f.type)
            if kind == "int":
                checks[f.name] = partial(_int_field, ints.get(f.name, I64))
            else:
                checks[f.name] = {"float": _check_float, "str": check_str, "EntityRef": _entity_field}.get(
                    kind, _as_is)
        required = frozenset(f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING)
        found = _FIELDS[cls] = (checks, required)
    return found


def _int_field(bounds: tuple[int, int], name: str, value: Any) -> int:
    return check_int(name, value, bounds)


def _entity_field(name: str, value: Any) -> EntityRef:
    return _check_entity(value)


def _as_is(name: str, value: Any) -> Any:
    return value


def record_from_wire(cls: type[Any], wire: Any) -> Any:
    """One record of class ``cls`` from its wire dict, every field checked against its column; raises
    :class:`Rejected`."""
    if type(wire) is not dict:
        raise Rejected(f"a record must be a JSON object, got {type(wire).__name__}")
    checks, required = _fields(cls)
    unknown, missing = wire.keys() - checks.keys(), required - wire.keys()
    if unknown or missing:
        raise Rejected(f"unknown fields {sorted(unknown)[:5]}, missing fields {sorted(missing)}")
    values = {name: checks[name](name, value) for name, value in wire.items()}
    if cls is EntityState:
        _check_entity_state(values)
    return cls(**values)


def _check_float(name: str, value: Any) -> float:
    value = inexact_float(value)
    if type(value) is float:
        return value
    if type(value) is int:  # orjson reads 1.0 written as 1 by another encoder as int: any JSON int fits a float64
        return float(value)
    raise Rejected(f"must be a number, got {type(value).__name__}", field=name)


def _check_entity_state(values: dict[str, Any]) -> None:
    params, tags, producers = values.get("params", {}), values.get("tags", {}), values.get("producers", [])
    if type(params) is not dict or not all(type(key) is str for key in params):
        raise Rejected("must be an object", field="params")
    if nesting_depth(params, limit=NESTING_MAX) > NESTING_MAX:
        raise Unstorable(f"nest more than {NESTING_MAX} levels deep", field="params")
    if type(tags) is not dict or not all(type(k) is str and type(v) is str for k, v in tags.items()):
        raise Rejected("must map strings to strings", field="tags")
    if type(producers) is not list or not all(type(p) is dict for p in producers):
        raise Rejected("must be a list of objects", field="producers")
    if nesting_depth(producers, limit=NESTING_MAX) > NESTING_MAX:
        raise Unstorable(f"nest more than {NESTING_MAX} levels deep", field="producers")
    for at, producer in enumerate(producers):
        if "rank" in producer or "world_size" in producer:
            problem = rank_problem(producer.get("rank"), producer.get("world_size"))
            if problem is not None:
                raise Unstorable(problem, field=f"producers[{at}]")


def record_problem(record: Any) -> tuple[str, str] | None:
    """``(reason, detail)`` when a decoded record (:class:`PointBlock`, :class:`StepAggregate`
    or :class:`EntityState`, e.g. from the embedded runner's processor) holds what the store
    cannot, else ``None``: the same checks as on the wire, for callers of ``Sink.write`` with records in hand."""
    try:
        if isinstance(record, PointBlock):
            groups: list[dict[str, Any]] = [
                {"name": b.name, "kind": b.kind, "steps": list(b.steps), "times_ns": list(b.times_ns),
                 "values": list(b.values)} for b in record.metrics]
            check_point_block({"entity": [record.entity.project, record.entity.type, record.entity.id],
                               "rank": record.rank, "seq": record.seq, "producer_id": record.producer_id,
                               "incarnation": record.incarnation,
                               "metrics": groups, "generations": list(record.generations)})
            for at, group in enumerate(groups):
                int64_column(f"metrics[{at}].steps", group["steps"])
                int64_column(f"metrics[{at}].times_ns", group["times_ns"])
                float64_column(f"metrics[{at}].values", group["values"])
            return None
        wire = {f.name: getattr(record, f.name) for f in fields(record)}
        wire["entity"] = [record.entity.project, record.entity.type, record.entity.id]
        record_from_wire(type(record), wire)
    except Rejected as exc:
        return exc.reason, str(exc)
    except Exception as exc:
        return "malformed_record", f"{type(exc).__name__}: {exc}"
    return None
