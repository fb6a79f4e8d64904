"""What one processing call returns, and how it becomes Kafka messages (pure: no faust, no aiokafka).

:class:`Output` collects the records of one :meth:`~trackstream.streams.processor.Processor.process` or
:meth:`~trackstream.streams.processor.Processor.tick` call; :func:`output_messages` turns it into ``(topic, key,
value)``
triples keyed by entity key, the same for the faust worker and the embedded local runner.

A DLQ message is JSON: reason, detail, the source position, the raw message bytes (base64) and, for a
rejected metric group of an otherwise valid envelope, the metric name, its point count and the group as
received.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from trackstream.schemas.envelope import EntityRef
from trackstream.schemas.errors import TrackstreamError
from trackstream.schemas.floats import exact_float
from trackstream.schemas.processed import (
    PROCESSED_VERSION,
    EntityState,
    MetricSummary,
    PointBlock,
    StepAggregate,
    encode_point_block,
    encode_records,
)
from trackstream.schemas.topics import Topics

DLQ_VERSION: Final = 1


class StreamsError(TrackstreamError):
    """Root of the errors raised by :mod:`trackstream.streams` (a :class:`TrackstreamError`)."""


@dataclass(frozen=True, slots=True)
class SourcePosition:
    """Where an input message came from: used in DLQ records and to place entity state by partition."""

    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class DlqRecord:
    """A rejected envelope (``metric`` None, ``points`` None) or one rejected metric group of it."""

    reason: str
    detail: str
    source: SourcePosition
    raw: bytes
    key: bytes | None = None
    metric: str | None = None
    count: int = 0
    points: dict[str, Any] | None = None
    time_ns: int = field(default_factory=time.time_ns)

    def to_wire(self) -> dict[str, Any]:
        """The DLQ message as a JSON-ready dict (docs/wire-format.md, dead-letter reasons).

        Keys: ``v``, ``reason``, ``detail``, ``source`` {topic, partition, offset}, ``raw`` (base64), ``metric``,
        ``count``, ``time_ns`` (ns since the epoch), plus ``points`` for a rejected group.
        """
        wire: dict[str, Any] = {
            "v": DLQ_VERSION,
            "reason": self.reason,
            "detail": self.detail,
            "source": {
                "topic": self.source.topic, "partition": self.source.partition, "offset": self.source.offset,
            },
            "raw": base64.b64encode(self.raw).decode("ascii"),
            "metric": self.metric,
            "count": self.count,
            "time_ns": self.time_ns,
        }
        if self.points is not None:
            wire["points"] = self.points
        return wire


def encode_dlq(record: DlqRecord) -> bytes:
    """``record`` as the JSON bytes of a DLQ message (orjson of :meth:`DlqRecord.to_wire`)."""
    return orjson.dumps(record.to_wire())


def decode_dlq(raw: bytes, *, key: bytes | None = None) -> DlqRecord:
    """Parse a DLQ message written by :func:`encode_dlq`; ``key`` is the message's Kafka key.

    A missing ``count`` or ``time_ns`` reads as 0; malformed input raises orjson's JSONDecodeError or KeyError.
    """
    wire = orjson.loads(raw)
    source = wire["source"]
    return DlqRecord(
        reason=wire["reason"], detail=wire["detail"],
        source=SourcePosition(source["topic"], source["partition"], source["offset"]),
        raw=base64.b64decode(wire["raw"]), key=key, metric=wire.get("metric"), count=wire.get("count", 0),
        points=wire.get("points"), time_ns=wire.get("time_ns", 0),
    )


@dataclass(slots=True)
class Output:
    """Records produced by one call; summaries and entity states are the changed ones only."""

    point_blocks: list[PointBlock] = field(default_factory=list)
    step_aggregates: list[StepAggregate] = field(default_factory=list)
    summaries: list[MetricSummary] = field(default_factory=list)
    entity_states: list[EntityState] = field(default_factory=list)
    dlq: list[DlqRecord] = field(default_factory=list)
    duplicates: int = 0

    def extend(self, other: Output) -> None:
        """Append ``other``'s records to this output (in order) and add its duplicate count."""
        self.point_blocks.extend(other.point_blocks)
        self.step_aggregates.extend(other.step_aggregates)
        self.summaries.extend(other.summaries)
        self.entity_states.extend(other.entity_states)
        self.dlq.extend(other.dlq)
        self.duplicates += other.duplicates

    def is_empty(self) -> bool:
        """True when there is no record of any kind to send (duplicates alone do not count)."""
        return not (self.point_blocks or self.step_aggregates or self.summaries or self.entity_states
                    or self.dlq)

    def point_count(self) -> int:
        """Number of accepted points: the sum over the point blocks of their points."""
        return sum(block.point_count() for block in self.point_blocks)


@dataclass(frozen=True, slots=True)
class OutMessage:
    """One message to produce: topic, key (entity key; the source key for DLQ records), value."""

    topic: str
    key: bytes | None
    value: bytes


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


def encode_summaries(records: list[MetricSummary]) -> bytes:
    """Byte for byte :func:`trackstream.schemas.processed.encode_records` for summaries, without ``asdict``."""
    wire = [{
        "entity": [r.entity.project, r.entity.type, r.entity.id], "metric": r.metric, "generation": r.generation,
        "kind": r.kind, "count": r.count, "last": exact_float(r.last), "last_step": r.last_step,
        "min": exact_float(r.min), "min_step": r.min_step, "max": exact_float(r.max), "max_step": r.max_step,
        "first_time_ns": r.first_time_ns, "last_time_ns": r.last_time_ns, "version": r.version,
    } for r in records]
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


def output_messages(output: Output, topics: Topics) -> list[OutMessage]:
    """Messages for an output: one per point block, one per (kind, entity) for records, one per DLQ record.

    Of several summaries (entity states, step aggregates) with the same identity only the last one is sent:
    it supersedes the others, so a batch of envelopes costs one summary per metric, not one per envelope.
    """
    messages = [OutMessage(topics.points, block.entity.key(), encode_point_block(block))
                for block in output.point_blocks]
    steps, summaries, states = output.step_aggregates, output.summaries, output.entity_states
    grouped: tuple[tuple[str, dict[bytes, list[Any]], Callable[[Any], bytes]], ...] = (
        (topics.steps, _latest(steps, [(key, r.metric, r.generation, r.step) for key, r in
                                       zip(_entity_keys(steps), steps, strict=True)]), encode_step_aggregates),
        (topics.summaries, _latest(summaries, [(key, r.metric, r.generation) for key, r in
                                               zip(_entity_keys(summaries), summaries, strict=True)]),
         encode_summaries),
        (topics.entities, _latest(states, [(key,) for key in _entity_keys(states)]), encode_records),
    )
    for topic, groups, encode in grouped:
        messages.extend(OutMessage(topic, key, encode(group)) for key, group in groups.items())
    messages.extend(OutMessage(topics.dlq, record.key, encode_dlq(record)) for record in output.dlq)
    return messages
