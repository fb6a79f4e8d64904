"""Records that stream processors emit and sinks write (docs/architecture.md): the processed topics' wire format.

One message on each processed topic carries a list of records of one kind, keyed by entity key:

- ``<prefix>.points``    :class:`PointBlock`      validated, deduplicated points of one envelope
- ``<prefix>.steps``     :class:`StepAggregate`   cross-rank mean/min/max/count per (entity, metric, step)
- ``<prefix>.entities``  :class:`EntityState`     run/model lifecycle, params, tags, producers, lost points

Every record carries what makes its ClickHouse row idempotent: points are keyed by (entity, metric, rank,
step, generation) and versioned in write order (:func:`point_version`); entity states carry a ``version`` that
only grows, so replays and out-of-date copies lose against newer ones. ``generation`` counts ``overwrite`` markers per
(entity, metric): readers keep only the newest generation.

Floats are exact: non-finite values travel as ``{"$f64": bits}`` (:mod:`trackstream.schemas.floats`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Final

import orjson

from trackstream.schemas.envelope import EntityRef, MetricBatch, metric_from_wire, metric_to_wire
from trackstream.schemas.floats import exact_float, inexact_float

PROCESSED_VERSION: Final = 1


@dataclass(slots=True)
class PointBlock:
    """The points of one accepted envelope, each metric tagged with its overwrite generation.

    ``incarnation``: the producer's place among the entity's producers in the order the stream first saw them
    (0 for the first); with ``seq`` it orders every write to a point (:func:`point_version`).
    """

    entity: EntityRef
    rank: int
    producer_id: str
    seq: int
    metrics: list[MetricBatch]
    generations: list[int]
    incarnation: int = 0

    def point_count(self) -> int:
        """Number of points in the block: the sum of its metric groups' lengths."""
        return sum(len(batch) for batch in self.metrics)


@dataclass(slots=True)
class StepAggregate:
    """Cross-rank aggregate of one metric at one step (emitted when all ranks reported, or on timeout)."""

    entity: EntityRef
    metric: str
    generation: int
    step: int
    mean: float
    min: float
    max: float
    count: int
    world_size: int
    time_ns: int


@dataclass(slots=True)
class EntityState:
    """Lifecycle of a run or model as known so far; ``version`` grows with every change."""

    entity: EntityRef
    name: str
    status: str
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    started_ns: int = 0
    ended_ns: int = 0
    producers: list[dict[str, Any]] = field(default_factory=list)
    lost_points: int = 0
    version: int = 0


SEQ_BITS: Final = 40
INCARNATIONS_MAX: Final = 2**24


def point_version(incarnation: int, seq: int) -> int:
    """The write-order version of the points of one envelope: ``incarnation << 40 | seq`` (a UInt64).

    Later writes to the same (entity, metric, generation, rank, step) get a larger version whatever the hosts'
    clocks say: a later envelope of the same producer has a larger ``seq``, and a producer the stream saw later
    (a resumed run, a restarted rank) a larger ``incarnation``. ``seq`` past 2**40 - 1 and ``incarnation`` past
    2**24 - 1 saturate (10^12 envelopes of one producer, 16M producers of one entity).
    """
    return (min(incarnation, INCARNATIONS_MAX - 1) << SEQ_BITS) | min(seq, (1 << SEQ_BITS) - 1)


def _entity_wire(entity: EntityRef) -> list[str]:
    return [entity.project, entity.type, entity.id]


def _entity_from(wire: list[str]) -> EntityRef:
    project, entity_type, entity_id = wire
    return EntityRef(project=project, type=entity_type, id=entity_id)  # type: ignore[arg-type]


def encode_point_block(block: PointBlock) -> bytes:
    """One ``<prefix>.points`` message: JSON ``{"v": 1, "entity": [project, type, id], "rank", "producer_id", "seq",
    "incarnation", "metrics", "generations"}``, groups in envelope form with ``nonfinite`` (docs/wire-format.md).
    """
    return orjson.dumps({
        "v": PROCESSED_VERSION,
        "entity": _entity_wire(block.entity),
        "rank": block.rank,
        "producer_id": block.producer_id,
        "seq": block.seq,
        "incarnation": block.incarnation,
        "metrics": [metric_to_wire(batch) for batch in block.metrics],
        "generations": block.generations,
    })


def decode_point_block(raw: bytes) -> PointBlock:
    """Parse a message written by :func:`encode_point_block`, non-finite values restored bit-exactly.

    Trusts the shape: malformed input raises orjson's error, KeyError or ValueError (no wrapping).
    """
    wire = orjson.loads(raw)
    return PointBlock(
        entity=_entity_from(wire["entity"]),
        rank=wire["rank"],
        producer_id=wire["producer_id"],
        seq=wire["seq"],
        metrics=[metric_from_wire(m) for m in wire["metrics"]],
        generations=wire["generations"],
        incarnation=wire.get("incarnation", 0),
    )


def _record_to_wire(record: StepAggregate | EntityState) -> dict[str, Any]:
    wire = asdict(record)
    wire["entity"] = _entity_wire(record.entity)
    return {key: exact_float(value) for key, value in wire.items()}


def encode_records(records: list[StepAggregate] | list[EntityState]) -> bytes:
    """One processed-topic message holding records of one kind."""
    return orjson.dumps({"v": PROCESSED_VERSION, "records": [_record_to_wire(r) for r in records]})


def _float_fields(cls: type[Any]) -> frozenset[str]:
    """Only float-typed fields may carry a ``$f64`` marker: a params dict shaped like one is data."""
    return frozenset(f.name for f in fields(cls) if f.type in ("float", float))


def _decode_records(raw: bytes, cls: type[Any]) -> list[Any]:
    floats = _float_fields(cls)
    records = []
    for wire in orjson.loads(raw)["records"]:
        values = {key: inexact_float(value) if key in floats else value for key, value in wire.items()}
        values["entity"] = _entity_from(values["entity"])
        records.append(cls(**values))
    return records


def decode_step_aggregates(raw: bytes) -> list[StepAggregate]:
    """The records of one ``<prefix>.steps`` message (``{"$f64": bits}`` decoded in float fields only)."""
    return _decode_records(raw, StepAggregate)


def decode_entity_states(raw: bytes) -> list[EntityState]:
    """The records of one ``<prefix>.entities`` message; params shaped like ``{"$f64": bits}`` stay data."""
    return _decode_records(raw, EntityState)
