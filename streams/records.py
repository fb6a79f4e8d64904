"""What one processing call returns, and how it becomes Kafka messages (pure: no faust, no aiokafka).

:class:`Output` collects the records of one :meth:`~trackstream.streams.processor.Processor.process` or
:meth:`~trackstream.streams.processor.Processor.tick` call; :func:`output_messages` turns it into ``(topic, key,
value)`` triples keyed by entity key, the same for the faust worker and the embedded local runner. Every value is at
most :data:`~trackstream.schemas.limits.RECORD_BYTES_MAX` bytes: larger outputs are split over several messages of
the same format (:mod:`trackstream.streams.split`), and DLQ records cut their raw payload
(:mod:`trackstream.streams.dlq`, which defines the DLQ record and re-exports here).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from trackstream.schemas.alerts import Alert, encode_alert
from trackstream.schemas.envelope import EntityRef
from trackstream.schemas.errors import TrackstreamError
from trackstream.schemas.floats import exact_float
from trackstream.schemas.limits import RECORD_BYTES_MAX
from trackstream.schemas.processed import (
    PROCESSED_VERSION,
    EntityState,
    PointBlock,
    StepAggregate,
    encode_records,
)
from trackstream.schemas.topics import Topics
from trackstream.streams.dlq import DLQ_VERSION, DlqRecord, SourcePosition, decode_dlq, dlq_key, encode_dlq
from trackstream.streams.split import record_values, split_point_block

__all__ = ["DLQ_VERSION", "DlqRecord", "OutMessage", "Output", "SourcePosition", "StreamsError", "decode_dlq",
           "encode_dlq", "encode_step_aggregates", "output_messages"]

log = logging.getLogger(__name__)


class StreamsError(TrackstreamError):
    """Root of the errors raised by :mod:`trackstream.streams` (a :class:`TrackstreamError`)."""


@dataclass(slots=True)
class Output:
    """Records produced by one call; entity states are the changed ones only."""

    point_blocks: list[PointBlock] = field(default_factory=list)
    step_aggregates: list[StepAggregate] = field(default_factory=list)
    entity_states: list[EntityState] = field(default_factory=list)
    dlq: list[DlqRecord] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    duplicates: int = 0
    conflicts: int = 0

    def extend(self, other: Output) -> None:
        """Append ``other``'s records to this output (in order) and add its duplicate and conflict counts."""
        self.point_blocks.extend(other.point_blocks)
        self.step_aggregates.extend(other.step_aggregates)
        self.entity_states.extend(other.entity_states)
        self.dlq.extend(other.dlq)
        self.alerts.extend(other.alerts)
        self.duplicates += other.duplicates
        self.conflicts += other.conflicts

    def is_empty(self) -> bool:
        """True when there is no record of any kind to send (duplicates alone do not count)."""
        return not (self.point_blocks or self.step_aggregates or self.entity_states
                    or self.dlq or self.alerts)

    def point_count(self) -> int:
        """Number of accepted points: the sum over the point blocks of their points."""
        return sum(block.point_count() for block in self.point_blocks)


@dataclass(frozen=True, slots=True)
class OutMessage:
    """One message to produce: topic, key (entity key; the source key for DLQ records), value, and a partition
    when the message must go to one (state checkpoints; else the producer's partitioner places it by key)."""

    topic: str
    key: bytes | None
    value: bytes
    partition: int | None = None


def encode_step_aggregates(records: list[StepAggregate]) -> bytes:
    """Byte for byte :func:`trackstream.schemas.processed.encode_records` for step aggregates, without ``asdict``.

    There is one step aggregate per (metric, step) of a multi-rank run: the generic encoder's
    ``dataclasses.asdict`` was most of a worker's time for those. Finite floats (``x - x == 0``) are
    written as they are, the rest as ``{"$f64": bits}``.
    """
    wire = []
    entity: EntityRef | None = None
    entity_wire: list[str] = []
    for r in records:
        if r.entity is not entity:  # records come in runs of one entity object
            entity = r.entity
            entity_wire = [entity.project, entity.type, entity.id]
        mean, low, high = r.mean, r.min, r.max
        wire.append({
            "entity": entity_wire, "metric": r.metric, "generation": r.generation,
            "step": r.step, "mean": mean if mean - mean == 0 else exact_float(mean),
            "min": low if low - low == 0 else exact_float(low), "max": high if high - high == 0 else exact_float(high),
            "count": r.count, "world_size": r.world_size, "time_ns": r.time_ns,
        })
    return orjson.dumps({"v": PROCESSED_VERSION, "records": wire})


def _entity_keys(records: list[Any]) -> list[bytes]:
    keys = []
    entity: EntityRef | None = None
    key = b""
    for record in records:
        if record.entity is not entity:  # records come in runs of one entity object
            entity = record.entity
            key = entity.key()
        keys.append(key)
    return keys


def _latest(records: list[Any], idents: list[tuple[Any, ...]]) -> dict[bytes, list[Any]]:
    """Records grouped by entity key (``ident[0]``), keeping only the last record per identity.

    Later versions win. Groups appear in the order of their first kept record, records in the order of
    their last occurrence.
    """
    if len(set(idents)) == len(idents):
        kept: Iterable[tuple[tuple[Any, ...], Any]] = zip(idents, records, strict=True)
    else:
        latest: dict[tuple[Any, ...], Any] = {}
        for ident, record in zip(idents, records, strict=True):
            latest.pop(ident, None)
            latest[ident] = record
        kept = latest.items()
    groups: dict[bytes, list[Any]] = {}
    for ident, record in kept:
        group = groups.get(ident[0])
        if group is None:
            groups[ident[0]] = [record]
        else:
            group.append(record)
    return groups


def output_messages(output: Output, topics: Topics, *, limit: int = RECORD_BYTES_MAX) -> list[OutMessage]:
    """Messages for an output: per point block, per (kind, entity) for records, per DLQ record; never raises.

    Of several entity states (or step aggregates) with the same identity only the last one is sent: it
    supersedes the others, so a batch of envelopes costs one state per entity, not one per envelope. A value
    larger than ``limit`` bytes is split into several messages (a single record that is larger alone excepted); a
    record that cannot be encoded at all becomes a DLQ record (``internal_error``) instead.
    """
    messages: list[OutMessage] = []
    dead = list(output.dlq)
    for block in output.point_blocks:
        try:
            key = block.entity.key()
            messages.extend(OutMessage(topics.points, key, blob) for _, blob in split_point_block(block, limit=limit))
        except Exception as exc:
            dead.append(_unencodable(topics.points, block, exc, count=_points_of(block)))
    steps, states = output.step_aggregates, output.entity_states
    grouped: tuple[tuple[str, dict[bytes, list[Any]], Callable[[Any], bytes]], ...] = (
        (topics.steps, _latest(steps, [(key, r.metric, r.generation, r.step) for key, r in
                                       zip(_entity_keys(steps), steps, strict=True)]), encode_step_aggregates),
        (topics.entities, _latest(states, [(key,) for key in _entity_keys(states)]), encode_records),
    )
    for topic, groups, encode in grouped:
        for key, group in groups.items():
            messages.extend(_record_messages(topic, key, group, encode, limit=limit, dead=dead))
    for alert in output.alerts:  # one small record each; order within an entity is kept by its key's partition
        key = orjson.dumps([alert.project, alert.entity_type, alert.entity_id])  # as EntityRef.key()
        messages.append(OutMessage(topics.alerts, key, encode_alert(alert)))
    messages.extend(OutMessage(topics.dlq, dlq_key(record.key), encode_dlq(record, limit=limit)) for record in dead)
    return messages


def _record_messages(topic: str, key: bytes, group: list[Any], encode: Callable[[Any], bytes], *, limit: int,
                     dead: list[DlqRecord]) -> list[OutMessage]:
    try:
        values = record_values(group, encode, limit=limit)
    except Exception:  # some record cannot be encoded: find it, send the others
        values = []
        for record in group:
            try:
                values.append(encode([record]))
            except Exception as exc:
                dead.append(_unencodable(topic, record, exc))
    for value in values:
        if len(value) > limit:
            log.warning("a %s record of %s is %d bytes, more than the %d of one message: sent as it is",
                        topic, key.decode(errors="replace"), len(value), limit)
    return [OutMessage(topic, key, value) for value in values]


def _points_of(block: PointBlock) -> int:
    try:
        return block.point_count()
    except Exception:
        return 0


def _unencodable(topic: str, record: Any, exc: Exception, *, count: int = 0) -> DlqRecord:
    """A DLQ record for an output record that cannot be encoded (a bug or a limit missing upstream)."""
    log.error("a %s record could not be encoded (%s: %s): dead-lettered", topic, type(exc).__name__, exc)
    entity = getattr(record, "entity", None)
    try:
        key = entity.key() if entity is not None else None
    except Exception:
        key = None
    return DlqRecord("internal_error", f"the {topic} record of {entity!r} could not be encoded: "
                     f"{type(exc).__name__}: {exc}", SourcePosition(topic, -1, -1), b"", key=key, count=count)
