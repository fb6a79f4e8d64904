"""Dead-letter records of the stream worker: what they hold, and an encoding that cannot fail.

A DLQ message is JSON (docs/wire-format.md, dead-letter reasons)::

    {"v": 1, "reason", "detail", "source": {"topic", "partition", "offset"}, "raw", "raw_size", "raw_sha256",
     "raw_truncated", "metric", "count", "time_ns", "points"?, "points_omitted"?, "fallback"?}

- ``raw`` is base64 of the source message, cut so that the record fits in
  :data:`~trackstream.schemas.limits.RECORD_BYTES_MAX`; ``raw_size`` and ``raw_sha256`` (hex) are those of the whole
  message and ``raw_truncated`` says whether ``raw`` was cut;
- ``points`` is a rejected metric group as received. It is left out (``points_omitted`` says why) when it cannot be
  encoded or does not fit;
- ``fallback`` is present when the structured record could not be encoded at all: the record then holds only the
  reason, detail, source position, metric name, count and (cut) raw bytes, which always encode.

:func:`encode_dlq` is total: whatever a :class:`DlqRecord` holds (values nested past orjson's limit, strings that
are not UTF-8, a 70 MB payload), it returns JSON bytes of at most ``limit`` bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from trackstream.schemas.limits import NAME_MAX, RECORD_BYTES_MAX, short_repr

DLQ_VERSION: Final = 1
DETAIL_MAX: Final = 4_000  # characters of ``detail`` kept (at most 4 bytes each in UTF-8)
KEY_MAX: Final = 16 * 1024  # a longer source key is replaced by its SHA-256 (hex) on the DLQ topic
_SLACK: Final = 512  # bytes kept free for the raw-field bookkeeping and base64 rounding
_LAST_RESORT_MIN: Final = 4_096  # the smallest limit honoured: room for every field but a long detail


@dataclass(frozen=True, slots=True)
class SourcePosition:
    """Where an input message came from: used in DLQ records and to place entity state by partition."""

    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class DlqRecord:
    """A rejected envelope (``metric`` None, ``points`` None) or one rejected metric group of it.

    ``raw`` is the whole source message; its encoding is cut to fit (see :func:`encode_dlq`). ``raw_max`` caps the
    raw bytes written for this record (``0``: size and SHA-256 only), e.g. for the second and later rejected groups
    of one large envelope, whose first record already carries it. A decoded record has ``raw_size`` and
    ``raw_sha256`` of the whole source message, and ``raw`` as written (a prefix when ``raw_truncated``).
    """

    reason: str
    detail: str
    source: SourcePosition
    raw: bytes
    key: bytes | None = None
    metric: str | None = None
    count: int = 0
    points: dict[str, Any] | None = None
    time_ns: int = field(default_factory=time.time_ns)
    raw_max: int | None = None
    raw_size: int | None = None
    raw_sha256: str | None = None
    raw_truncated: bool = False

    def to_wire(self, *, limit: int = RECORD_BYTES_MAX) -> dict[str, Any]:
        """The DLQ message as a JSON-ready dict that orjson encodes in at most ``limit`` bytes (never raises)."""
        wire: dict[str, Any] = orjson.loads(encode_dlq(self, limit=limit))
        return wire


def encode_dlq(record: DlqRecord, *, limit: int = RECORD_BYTES_MAX) -> bytes:
    """``record`` as the JSON bytes of a DLQ message, at most ``limit`` bytes; never raises.

    The structured record first; when it cannot be encoded (any exception), the minimal fallback record. ``points``
    is left out when it does not fit beside the reason and a useful part of ``raw``; ``raw`` is cut to what fits.
    """
    limit = max(limit, _LAST_RESORT_MIN)
    try:
        return _structured(record, limit)
    except Exception as exc:  # e.g. orjson's "Recursion limit reached", a str that is not UTF-8
        try:
            return _fallback(record, limit, f"{type(exc).__name__}: {exc}")
        except Exception as again:
            return _last_resort(record, f"{type(again).__name__}: {again}")


def _raw_info(record: DlqRecord) -> tuple[bytes, int, str]:
    raw = bytes(record.raw) if not isinstance(record.raw, bytes) else record.raw
    if record.raw_sha256 is not None and record.raw_size is not None:  # a decoded record: raw may be a prefix
        return raw, int(record.raw_size), str(record.raw_sha256)
    return raw, len(raw), hashlib.sha256(raw).hexdigest()


def _safe_str(value: object, max_chars: int) -> str:
    text = value if isinstance(value, str) else short_repr(value, max_chars=max_chars)
    if len(text) > max_chars:
        text = text[: max_chars - 3] + "..."
    return text.encode("utf-8", "replace").decode("utf-8")  # lone surrogates become "?"


def _head(record: DlqRecord, raw_size: int, raw_sha256: str) -> dict[str, Any]:
    source = record.source
    return {
        "v": DLQ_VERSION,
        "reason": _safe_str(record.reason, 200),
        "detail": _safe_str(record.detail, DETAIL_MAX),
        "source": {"topic": _safe_str(source.topic, 300), "partition": int(source.partition),
                   "offset": int(source.offset)},
        "raw": "",
        "raw_size": raw_size,
        "raw_sha256": raw_sha256,
        "raw_truncated": False,
        "metric": _safe_str(record.metric, NAME_MAX) if record.metric is not None else None,
        "count": int(record.count),
        "time_ns": int(record.time_ns),
    }


def _with_raw(wire: dict[str, Any], raw: bytes, budget: int, raw_max: int | None) -> bytes:
    """``wire`` encoded with as much of ``raw`` (base64) as ``budget`` bytes of encoded record allow.

    When even the record without ``raw`` is too large (a long detail under a small budget), the detail is cut.
    """
    base = len(orjson.dumps(wire))
    over = base + _SLACK - budget
    if over > 0:  # every character is at least one byte: dropping `over` of them is enough
        detail = wire["detail"]
        wire["detail"] = detail[: max(len(detail) - over - 3, 0)] + "..."
        base = len(orjson.dumps(wire))
    room = max(budget - base - _SLACK, 0)
    keep = min(len(raw), room // 4 * 3)
    if raw_max is not None and len(raw) > raw_max:
        keep = min(keep, raw_max)
    wire["raw"] = base64.b64encode(raw[:keep]).decode("ascii")
    wire["raw_truncated"] = keep < len(raw)
    return orjson.dumps(wire)


def _structured(record: DlqRecord, limit: int) -> bytes:
    raw, raw_size, raw_sha256 = _raw_info(record)
    wire = _head(record, raw_size, raw_sha256)
    if record.points is not None:
        try:
            points = orjson.dumps(record.points)
        except Exception as exc:
            wire["points_omitted"] = _safe_str(f"cannot be encoded: {type(exc).__name__}: {exc}", 300)
        else:
            # Keep the group when it fits beside the rest; the raw envelope (which holds it too) gets what is left.
            if len(points) + len(orjson.dumps(wire)) + _SLACK <= limit:
                wire["points"] = orjson.Fragment(points)
            else:
                wire["points_omitted"] = f"{len(points)} bytes encoded, more than fits in one DLQ record"
    return _with_raw(wire, raw, limit, record.raw_max)


def _int(value: object, default: int) -> int:
    try:
        return int(value)  # type: ignore[call-overload,no-any-return]
    except Exception:
        return default


def _fallback(record: DlqRecord, limit: int, why: str) -> bytes:
    """Reason, detail, source position, metric name, count and raw bytes, each read leniently."""
    try:
        raw, raw_size, raw_sha256 = _raw_info(record)
    except Exception:
        raw, raw_size, raw_sha256 = b"", -1, ""
    source = record.source
    wire: dict[str, Any] = {
        "v": DLQ_VERSION,
        "reason": _safe_str(record.reason, 200),
        "detail": _safe_str(record.detail, DETAIL_MAX),
        "source": {"topic": _safe_str(getattr(source, "topic", "?"), 300),
                   "partition": _int(getattr(source, "partition", -1), -1),
                   "offset": _int(getattr(source, "offset", -1), -1)},
        "raw": "", "raw_size": raw_size, "raw_sha256": raw_sha256, "raw_truncated": False,
        "metric": _safe_str(record.metric, NAME_MAX) if isinstance(record.metric, str) else None,
        "count": _int(record.count, 0),
        "time_ns": _int(record.time_ns, 0),
        "fallback": _safe_str(f"the structured record could not be encoded ({why})", 1_000),
    }
    raw_max = record.raw_max if isinstance(record.raw_max, int) else None
    return _with_raw(wire, raw, limit, raw_max)


def _last_resort(record: DlqRecord, why: str) -> bytes:
    """A record built from nothing but the source position: the standard library's encoder, ASCII only."""
    try:
        topic, partition, offset = str(record.source.topic)[:1_000], int(record.source.partition), \
            int(record.source.offset)
    except Exception:
        topic, partition, offset = "?", -1, -1
    reason = record.reason if isinstance(record.reason, str) and record.reason.isascii() else "internal_error"
    return json.dumps({"v": DLQ_VERSION, "reason": reason[:200], "detail": why[:1_000],
                       "source": {"topic": topic, "partition": partition, "offset": offset},
                       "raw": "", "raw_size": None, "raw_sha256": None, "raw_truncated": True,
                       "metric": None, "count": 0, "time_ns": time.time_ns(), "fallback": why[:1_000]},
                      ensure_ascii=True, separators=(",", ":")).encode("ascii")


def dlq_key(key: bytes | None) -> bytes | None:
    """The Kafka key of a DLQ message: the source key, or its SHA-256 (hex) when longer than :data:`KEY_MAX`."""
    if key is None or len(key) <= KEY_MAX:
        return key
    return b"sha256:" + hashlib.sha256(key).hexdigest().encode("ascii")


def decode_dlq(raw: bytes, *, key: bytes | None = None) -> DlqRecord:
    """Parse a DLQ message written by :func:`encode_dlq`; ``key`` is the message's Kafka key.

    A missing ``count`` or ``time_ns`` reads as 0; malformed input raises orjson's JSONDecodeError or KeyError.
    """
    wire = orjson.loads(raw)
    source = wire["source"]
    payload = base64.b64decode(wire["raw"])
    return DlqRecord(
        reason=wire["reason"], detail=wire["detail"],
        source=SourcePosition(source["topic"], source["partition"], source["offset"]),
        raw=payload, key=key, metric=wire.get("metric"), count=wire.get("count", 0),
        points=wire.get("points"), time_ns=wire.get("time_ns", 0),
        raw_size=wire.get("raw_size", len(payload)), raw_sha256=wire.get("raw_sha256"),
        raw_truncated=bool(wire.get("raw_truncated", False)),
    )
