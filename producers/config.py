"""Producer configuration: keyword > environment variable > default (DESIGN §7).

Every field ``name`` can also be set by the environment variable ``TRACKSTREAM_<NAME>`` (upper case), e.g.
``TRACKSTREAM_KAFKA_BOOTSTRAP``, ``TRACKSTREAM_LINGER_MS``, ``TRACKSTREAM_KAFKA_SASL_PASSWORD``. With no
``kafka_bootstrap`` the producer writes to the local spool only. Secrets (the SASL password) never appear
in reprs or logs.

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
from typing import Any, Final, Literal

from producers.errors import ConfigError
from schemas.topics import DEFAULT_TOPIC_PREFIX

Durability = Literal["memory", "spool"]
FsyncPolicy = Literal["batch", "interval", "never"]
_CHOICES: Final[dict[str, tuple[str, ...]]] = {
    "durability": ("memory", "spool"),
    "fsync": ("batch", "interval", "never"),
    "compression": ("auto", "zstd", "lz4", "gzip", "snappy", "none"),
    "kafka_security_protocol": ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
}


def default_spool_dir() -> str:
    return str(Path.home() / ".trackstream" / "spool")


@dataclass(frozen=True, slots=True)
class ProducerConfig:
    """Where and how one producer delivers; hashable, so handles with equal settings share a producer."""

    kafka_bootstrap: str | None = None
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
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
    compression: str = "auto"
    request_timeout_ms: int = 15_000
    retry_backoff_ms: int = 500
    exit_timeout_s: float = 10.0
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = field(default=None, repr=False)
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None

    def __repr__(self) -> str:
        shown = [
            f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self) if f.repr
        ]
        if self.kafka_sasl_password is not None:
            shown.append("kafka_sasl_password='***'")
        return f"ProducerConfig({', '.join(shown)})"

    @property
    def spooled_only(self) -> bool:
        return self.kafka_bootstrap is None


def _convert(name: str, raw: Any, target: Any) -> Any:
    if raw is None:
        return None
    kind = target if isinstance(target, type) else type(target)
    try:
        if kind is bool:
            return raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes")
        if kind is int and not isinstance(raw, bool):
            return int(raw)
        if kind is float and not isinstance(raw, bool):
            return float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    return str(raw) if not isinstance(raw, str) else raw


def resolve_config(base: ProducerConfig | None = None, **overrides: Any) -> ProducerConfig:
    """Build a config from keywords (win), ``TRACKSTREAM_<NAME>`` variables, then ``base`` or defaults.

    Unknown keywords raise :class:`TypeError`, invalid values :class:`ConfigError`.
    """
    known = {f.name: f for f in dataclasses.fields(ProducerConfig)}
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise TypeError(f"unknown producer option(s): {', '.join(unknown)}")
    start = base if base is not None else ProducerConfig()
    values: dict[str, Any] = {}
    for name in known:
        default = getattr(start, name)
        if overrides.get(name) is not None:
            raw: Any = overrides[name]
        elif base is None and os.environ.get(f"TRACKSTREAM_{name.upper()}"):
            raw = os.environ[f"TRACKSTREAM_{name.upper()}"]
        else:
            values[name] = default
            continue
        values[name] = _convert(name, raw, default if default is not None else str)
    for name, choices in _CHOICES.items():
        if values[name] not in choices:
            raise ConfigError(f"{name}={values[name]!r}: expected one of {', '.join(choices)}")
    values["spool_dir"] = os.path.expanduser(values["spool_dir"])
    values["kafka_bootstrap"] = values["kafka_bootstrap"] or None  # "" forces the spool over the environment
    if values["linger_ms"] < 0 or values["max_envelope_points"] < 1 or values["max_buffer_bytes"] < 1:
        raise ConfigError("linger_ms must be >= 0, max_envelope_points and max_buffer_bytes >= 1")
    return ProducerConfig(**values)
