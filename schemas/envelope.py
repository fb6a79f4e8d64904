"""Wire format v1: one Kafka message is one envelope (docs/wire-format.md).

An envelope carries one producer's batch for one entity: identity (producer id and a strictly increasing
``seq`` per producer incarnation), provenance (rank, world size, host), lifecycle events and the points,
grouped per metric as parallel columns. Encoding uses orjson only: this module runs inside training jobs
and must not import pydantic (stream-side validation lives in :mod:`trackstream.schemas.validation`).

orjson writes NaN and ±Inf as ``null``, so a metric group carries its non-finite values explicitly in
``nonfinite`` as ``[index, ieee754_bits]`` pairs, with ``null`` at that index in ``values``. Finite values
are written by orjson's shortest round-trip repr, so every float64 (including -0.0, subnormals and NaN
payloads) decodes to the same bits.

Ordering inside one envelope: events apply in list order, and an ``overwrite`` event applies before every
point of that metric in the same envelope (the producer drops what it buffered before the overwrite).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson

from trackstream.schemas.errors import TrackstreamError
from trackstream.schemas.floats import join_nonfinite, split_nonfinite
from trackstream.schemas.limits import short_repr

SCHEMA_VERSION: Final = 1
MAX_ENVELOPE_BYTES: Final = 4 * 1024 * 1024

EntityType = Literal["run", "model"]
MetricKind = Literal["series", "single"]
ENTITY_TYPES: Final = ("run", "model")
METRIC_KINDS: Final = ("series", "single")

# Lifecycle event types and the payload keys each one carries (besides "type" and "time_ns").
EVENT_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "run_started": ("name", "params", "tags"),
    "run_finished": ("status",),
    "params": ("params",),
    "tags": ("tags",),
    "overwrite": ("metric",),
    "heartbeat": (),
}
RUN_STATUSES: Final = ("running", "completed", "failed", "killed")



class WireFormatError(TrackstreamError, ValueError):
    """Bytes that are not a well-formed v1 envelope (from :func:`decode`); ``reason`` is machine-readable."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}", retriable=False)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class EntityRef:
    """What metrics are logged against: a run or a model (``name`` or ``name:version``) in a project."""

    project: str
    type: EntityType
    id: str

    def key(self) -> bytes:
        """Kafka message key: all ranks of one run land on one partition, in order."""
        return orjson.dumps([self.project, self.type, self.id])


@dataclass(slots=True)
class MetricBatch:
    """Points of one metric and kind, as parallel columns; ``values`` holds real floats (NaN/±Inf too)."""

    name: str
    kind: MetricKind
    steps: list[int] = field(default_factory=list)
    times_ns: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.values)


@dataclass(slots=True)
class Event:
    """A lifecycle event: run started/finished, params, tags, or an overwrite marker for one metric."""

    type: str
    time_ns: int
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Envelope:
    """One producer batch for one entity; ``(producer_id, seq)`` identifies it for deduplication."""

    producer_id: str
    seq: int
    sent_ns: int
    entity: EntityRef
    rank: int = 0
    world_size: int = 1
    host: str = ""
    metrics: list[MetricBatch] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    version: int = SCHEMA_VERSION
    # Per (producer, entity): envelope counter from 0 and points sent before this envelope. They let the stream
    # side tell a lost envelope (a hole) from envelopes that went to other entities, and count lost points.
    entity_seq: int | None = None
    entity_offset: int | None = None

    def point_count(self) -> int:
        """Number of points in the envelope: the sum of its metric groups' lengths (events do not count)."""
        return sum(len(batch) for batch in self.metrics)


def metric_to_wire(batch: MetricBatch) -> dict[str, Any]:
    """A metric group as a JSON-ready dict: ``name``, ``kind``, ``steps``, ``times_ns``, ``values`` (equal lengths).

    Non-finite values become ``null`` plus ``nonfinite`` ``[[index, bits], ...]``, left out when all are finite
    (docs/wire-format.md, non-finite floats).
    """
    values, nonfinite = split_nonfinite(batch.values)
    wire: dict[str, Any] = {
        "name": batch.name,
        "kind": batch.kind,
        "steps": batch.steps,
        "times_ns": batch.times_ns,
        "values": values,
    }
    if nonfinite:
        wire["nonfinite"] = nonfinite
    return wire


def _entity_to_wire(entity: EntityRef) -> dict[str, str]:
    return {"project": entity.project, "type": entity.type, "id": entity.id}


def envelope_to_wire(envelope: Envelope) -> dict[str, Any]:
    """The JSON-ready mapping of an envelope (what :func:`encode` serializes)."""
    wire = {
        "v": envelope.version,
        "producer_id": envelope.producer_id,
        "seq": envelope.seq,
        "sent_ns": envelope.sent_ns,
        "entity": _entity_to_wire(envelope.entity),
        "rank": envelope.rank,
        "world_size": envelope.world_size,
        "host": envelope.host,
        "metrics": [metric_to_wire(batch) for batch in envelope.metrics],
        "events": [{"type": e.type, "time_ns": e.time_ns, **e.data} for e in envelope.events],
    }
    if envelope.entity_seq is not None:
        wire["entity_seq"] = envelope.entity_seq
    if envelope.entity_offset is not None:
        wire["entity_offset"] = envelope.entity_offset
    return wire


def encode(envelope: Envelope) -> bytes:
    """Serialize an envelope to its v1 wire bytes (no validation: producers validate at the log call)."""
    return orjson.dumps(envelope_to_wire(envelope))


def metric_from_wire(wire: dict[str, Any]) -> MetricBatch:
    """Inverse of :func:`metric_to_wire`: ``nonfinite`` bits are put back, a ``null`` without an entry reads as NaN.

    Does not validate; a missing key raises KeyError.
    """
    values = join_nonfinite(wire["values"], wire.get("nonfinite", ()))
    return MetricBatch(
        name=wire["name"], kind=wire["kind"], steps=list(wire["steps"]), times_ns=list(wire["times_ns"]),
        values=values,
    )


def _event_from_wire(wire: dict[str, Any]) -> Event:
    data = {k: v for k, v in wire.items() if k not in ("type", "time_ns")}
    return Event(type=wire["type"], time_ns=wire["time_ns"], data=data)


def envelope_from_wire(wire: dict[str, Any]) -> Envelope:
    """Build an :class:`Envelope` from an already-checked mapping (see :mod:`trackstream.schemas.validation`)."""
    entity = wire["entity"]
    return Envelope(
        version=wire["v"],
        producer_id=wire["producer_id"],
        seq=wire["seq"],
        sent_ns=wire["sent_ns"],
        entity=EntityRef(project=entity["project"], type=entity["type"], id=entity["id"]),
        rank=wire.get("rank", 0),
        world_size=wire.get("world_size", 1),
        host=wire.get("host", ""),
        metrics=[metric_from_wire(m) for m in wire.get("metrics", ())],
        events=[_event_from_wire(e) for e in wire.get("events", ())],
        entity_seq=wire.get("entity_seq"),
        entity_offset=wire.get("entity_offset"),
    )


def decode(raw: bytes) -> Envelope:
    """Parse v1 wire bytes produced by :func:`encode`, trusting their shape.

    Raises :class:`WireFormatError` with reason ``malformed`` or ``unsupported_version``; use
    :func:`trackstream.schemas.validation.validate` for untrusted input.
    """
    try:
        wire = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise WireFormatError("malformed", str(exc)) from None
    if not isinstance(wire, dict):
        raise WireFormatError("malformed", "an envelope is a JSON object")
    version = wire.get("v")
    if type(version) is not int or version != SCHEMA_VERSION:  # not `!=` alone: True == 1 == 1.0
        raise WireFormatError("unsupported_version", f"schema version {short_repr(version)}, this build reads 1")
    try:
        return envelope_from_wire(wire)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise WireFormatError("malformed", f"{type(exc).__name__}: {exc}") from None
