"""Producer configuration: keyword > environment variable > default (docs/configuration.md).

Every field ``name`` can also be set by the environment variable ``TRACKSTREAM_<NAME>`` (upper case), e.g.
``TRACKSTREAM_LINGER_MS``, ``TRACKSTREAM_DURABILITY``. How to reach Kafka is the shared
:class:`~trackstream.schemas.settings.KafkaSettings` (field ``kafka``), set by ``kafka=KafkaSettings(...)``, by
``kafka_<field>`` keywords (``kafka_bootstrap``, ``kafka_sasl_password``, ...) and ``topic_prefix``, or by
``TRACKSTREAM_KAFKA_<FIELD>`` variables. With no bootstrap servers the producer writes to the local spool only.
Secrets (the SASL password) never appear in reprs or logs.

``max_buffer_bytes`` is the memory budget of one handle's data on its way out, in quarters: points in the
handle's buffer (a log call past it waits, at most 2 s, for the flusher), the batch the flusher is
encoding, encoded envelopes awaiting Kafka (past it, they go to the spool), and transport buffers (a
chunk of spool being drained, aiokafka's batch).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trackstream.schemas.errors import ConfigError
from trackstream.schemas.limits import ENVELOPE_BYTES_MAX, POINTS_PER_ENVELOPE_MAX
from trackstream.schemas.settings import KafkaSettings, resolve_fields

Durability = Literal["memory", "spool"]
FsyncPolicy = Literal["batch", "interval", "never"]
Compression = Literal["auto", "zstd", "lz4", "gzip", "snappy", "none"]


def default_spool_dir() -> str:
    """The default ``spool_dir``: ``~/.trackstream/spool`` under the user's home directory, as a str."""
    return str(Path.home() / ".trackstream" / "spool")


@dataclass(frozen=True, slots=True)
class ProducerConfig:
    """Where and how one producer delivers; hashable, so handles with equal settings share a producer."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    spool_dir: str = field(default_factory=default_spool_dir)
    durability: Durability = "memory"
    fsync: FsyncPolicy = "interval"
    fsync_interval_ms: int = 1000
    linger_ms: int = 200
    flush_points: int = 100_000
    max_buffer_bytes: int = 64 * 1024 * 1024
    max_envelope_points: int = 8192
    max_envelope_bytes: int = 512 * 1024
    max_batch_bytes: int = 960 * 1024
    spool_segment_bytes: int = 64 * 1024 * 1024
    compression: Compression = "auto"
    request_timeout_ms: int = 15_000
    retry_backoff_ms: int = 500
    exit_timeout_s: float = 10.0
    heartbeat_ms: int = 10_000

    @property
    def spooled_only(self) -> bool:
        """True when no Kafka is configured: every envelope goes to the spool."""
        return self.kafka.bootstrap is None


def _env_var(name: str) -> str:
    return f"TRACKSTREAM_{name.upper()}"


def resolve_config(base: ProducerConfig | None = None, **overrides: Any) -> ProducerConfig:
    """Build a config: keywords win, then the fields ``base`` sets, then ``TRACKSTREAM_<NAME>``, then defaults.

    Kafka keywords (``kafka=KafkaSettings(...)``, ``kafka_<field>=``, ``topic_prefix=``) resolve through
    :meth:`KafkaSettings.resolve`; ``kafka_bootstrap=""`` forces the spool whatever the environment says.
    Fields of ``base`` left at their default values still follow the environment.
    Unknown keywords raise :class:`TypeError`; invalid or out-of-range values raise :class:`ConfigError`
    naming the setting and its variable.
    """
    kafka_fields = {f.name for f in dataclasses.fields(KafkaSettings)}
    kafka_keywords: dict[str, Any] = {}
    for name in list(overrides):
        key = "topic_prefix" if name == "topic_prefix" else name.removeprefix("kafka_")
        if name != "kafka" and key in kafka_fields and (name.startswith("kafka_") or name == "topic_prefix"):
            kafka_keywords[key] = overrides.pop(name)
    kafka_base = overrides.pop("kafka", None) or (base.kafka if base is not None else None)
    kafka = KafkaSettings.resolve(kafka_base, **kafka_keywords)
    config = resolve_fields(ProducerConfig, base, overrides, _env_var)
    config = dataclasses.replace(config, kafka=kafka, spool_dir=os.path.expanduser(config.spool_dir))
    for name, (low, high) in _RANGES.items():
        value = getattr(config, name)
        if not low <= value <= high:
            raise ConfigError(f"{name}={value!r} ({_env_var(name)}) is outside {low}..{high}")
    return config


# Allowed ranges; the envelope bounds are the stream worker's limits (schemas.limits), past which it dead-letters.
_RANGES: dict[str, tuple[float, float]] = {
    "linger_ms": (0, 3_600_000),
    "flush_points": (1, 2**40),
    "fsync_interval_ms": (1, 3_600_000),
    "max_buffer_bytes": (1, 2**50),
    "max_envelope_points": (1, POINTS_PER_ENVELOPE_MAX),
    "max_envelope_bytes": (1024, ENVELOPE_BYTES_MAX),
    "max_batch_bytes": (1024, 2**30),
    "spool_segment_bytes": (4096, 2**40),
    "request_timeout_ms": (1, 3_600_000),
    "retry_backoff_ms": (1, 3_600_000),
    "exit_timeout_s": (0, 86_400),
    "heartbeat_ms": (0, 3_600_000),
}
