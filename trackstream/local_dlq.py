"""The dead letters that the embedded runner (:mod:`trackstream.local`) appends to ``dlq.jsonl`` for spool content
it cannot ingest: damaged ranges, torn tails of dead producers and unstorable frames, each with its spool position.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson

from trackstream.producers.spool import Damage, Frame, SpoolPosition
from trackstream.producers.spool_scan import segment_name

__all__ = ["damage_record", "dlq_line", "spool_position", "unstorable_record"]


def spool_position(producer_id: str, position: SpoolPosition) -> dict[str, Any]:
    """A dead letter's ``"spool"`` field: where in the producer's spool its input starts."""
    return {"producer_id": producer_id, "segment": segment_name(position.segment), "offset": position.offset}


def damage_record(producer_id: str, damage: Damage, *, torn: bool) -> dict[str, Any]:
    """The dead letter of a damaged range (``spool_damaged``) or of a dead producer's torn tail."""
    from trackstream.streams.records import DLQ_VERSION

    what = "the torn final frame of a dead producer" if torn else "no valid frame; reading resumed after it"
    return {
        "v": DLQ_VERSION, "reason": "spool_torn_tail" if torn else "spool_damaged",
        "detail": f"{damage.size} bytes at [{damage.start}, {damage.end}) of {damage.file}: {what}",
        "source": {"topic": f"spool/{producer_id}", "partition": damage.segment, "offset": damage.start},
        "raw": base64.b64encode(damage.sample).decode("ascii"), "raw_bytes": damage.size,
        "raw_sha256": damage.sha256, "metric": None, "count": 0, "time_ns": time.time_ns(),
        "spool": spool_position(producer_id, SpoolPosition(damage.segment, damage.start)),
        "range": damage.to_json(),
    }


def unstorable_record(producer_id: str, entry: Frame | Damage, exc: Exception) -> dict[str, Any]:
    """The dead letter (``unstorable``) of a frame whose records could not be built or stored, ``exc`` saying why."""
    from trackstream.streams.records import DlqRecord, SourcePosition

    if isinstance(entry, Damage):  # never: writing a damaged range's dead letter inserts nothing
        return damage_record(producer_id, entry, torn=False)
    source = SourcePosition(f"spool/{producer_id}", entry.start.segment, entry.start.offset)
    record = DlqRecord("unstorable", str(exc), source, entry.payload, key=entry.key)
    return {**record.to_wire(), "spool": spool_position(producer_id, entry.start)}


def dlq_line(record: dict[str, Any]) -> bytes:
    """One ``dlq.jsonl`` line; a record too deep for orjson loses its ``points`` copy (``raw`` keeps the bytes)."""
    try:
        return orjson.dumps(record) + b"\n"
    except (TypeError, orjson.JSONEncodeError) as exc:
        slim = {k: v for k, v in record.items() if k != "points"}
        slim["points_dropped"] = f"{type(exc).__name__}: {exc}"
        try:
            return orjson.dumps(slim) + b"\n"
        except (TypeError, orjson.JSONEncodeError):
            keep = ("v", "reason", "source", "raw", "count", "time_ns", "spool")
            bare = {k: record[k] for k in keep if k in record}
            return orjson.dumps({**bare, "detail": repr(record.get("detail"))[:4096]}) + b"\n"
