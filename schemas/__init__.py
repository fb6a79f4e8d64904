"""Wire format v1 shared by producers, streams and sinks (docs/wire-format.md). Light: orjson only."""

from trackstream.schemas.envelope import (
    ENTITY_TYPES,
    EVENT_FIELDS,
    MAX_ENVELOPE_BYTES,
    METRIC_KINDS,
    RUN_STATUSES,
    SCHEMA_VERSION,
    EntityRef,
    EntityType,
    Envelope,
    Event,
    MetricBatch,
    MetricKind,
    WireFormatError,
    decode,
    encode,
    envelope_from_wire,
    envelope_to_wire,
)
from trackstream.schemas.floats import bits_to_float, float_to_bits
from trackstream.schemas.names import is_valid_metric_name, metric_name_problem, model_entity_id

__all__ = [
    "ENTITY_TYPES",
    "EVENT_FIELDS",
    "MAX_ENVELOPE_BYTES",
    "METRIC_KINDS",
    "RUN_STATUSES",
    "SCHEMA_VERSION",
    "EntityRef",
    "EntityType",
    "Envelope",
    "Event",
    "MetricBatch",
    "MetricKind",
    "WireFormatError",
    "bits_to_float",
    "decode",
    "encode",
    "envelope_from_wire",
    "envelope_to_wire",
    "float_to_bits",
    "is_valid_metric_name",
    "metric_name_problem",
    "model_entity_id",
]
