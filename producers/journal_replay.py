"""Reading spool-mode journal files (format: :mod:`.journal_writer`): headers, and records replayed into a drain.

:func:`replay` applies the records of a file in order with the semantics of the log calls that wrote them
(auto steps continue from the file's steps snapshot, an overwrite drops what came before it, a single value replaces
the previous one), so it returns exactly what :meth:`~trackstream.producers.buffer.MetricBuffer.drain` would have taken
from the columns those calls filled. It stops at the first zero type byte (the end, or a record a kill cut short).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from trackstream.producers.buffer import Drained
from trackstream.producers.journal_writer import (
    EVENT,
    HEADER_BYTES,
    KEY,
    MAGIC,
    OVERWRITE,
    POINT,
    POINT_RECORD,
    POINTS,
    POINTS_HEAD,
    ROW_AUTO,
    ROW_HEAD,
    ROW_STEP,
    SHAPE,
    SINGLE,
    SINGLE_HEAD,
    STEPS,
    U32,
    VAR_HEAD,
    VERSION,
    State,
    unpack_state,
)
from trackstream.schemas import EntityRef, Event

_I64: Final = struct.Struct("<q")


@dataclass(slots=True)
class Replayed:
    """What a journal file holds, as the flusher would have drained it; ``complete`` False when it ended in a
    record that does not parse (only a torn end is expected, and it is never a record: its type byte is 0)."""

    drained: Drained
    complete: bool = True


def replay(data: bytes | memoryview) -> Replayed:
    """Read the records of a journal file (header included) into the columns a drain would have taken."""
    names: dict[int, str] = {}
    ids: dict[str, int] = {}
    shapes: dict[int, tuple[int, ...]] = {}
    next_step: dict[int, int] = {}
    cols: dict[int, tuple[list[int], list[int], list[float]]] = {}
    out = Drained()
    off, end = HEADER_BYTES, len(data)

    def add(key_id: int, step: int, time_ns: int, value: float) -> None:
        steps, times, values = cols.setdefault(key_id, ([], [], []))
        steps.append(step)
        times.append(time_ns)
        values.append(value)
        next_step[key_id] = step + 1

    complete = True
    try:
        while off + 8 <= end and data[off]:
            kind = data[off]
            if kind == POINT:
                add(*POINT_RECORD.unpack_from(data, off))
                off += POINT_RECORD.size
                continue
            if kind in (ROW_AUTO, ROW_STEP):
                shape_id, step, time_ns = ROW_HEAD.unpack_from(data, off)
                keys = shapes[shape_id]
                row = struct.unpack_from(f"<{len(keys)}d", data, off + ROW_HEAD.size)
                for key_id, value in zip(keys, row, strict=True):
                    add(key_id, next_step.get(key_id, 0) if kind == ROW_AUTO else step, time_ns, value)
                off += ROW_HEAD.size + 8 * len(keys)
                continue
            (length,) = VAR_HEAD.unpack_from(data, off)
            body = bytes(data[off + VAR_HEAD.size : off + VAR_HEAD.size + length])
            if len(body) < length:
                raise ValueError("record past the end of the file")
            off += (VAR_HEAD.size + length + 7) & ~7
            if kind == KEY:
                key_id = U32.unpack_from(body)[0]
                names[key_id], ids[body[4:].decode()] = body[4:].decode(), key_id
                next_step.setdefault(key_id, 0)
            elif kind == SHAPE:
                shapes[U32.unpack_from(body)[0]] = struct.unpack_from(f"<{(length - 4) // 4}I", body, 4)
            elif kind == STEPS:
                next_step.update(enumerate(struct.unpack(f"<{length // 8}q", body)))
            elif kind == POINTS:
                key_id, count, after = POINTS_HEAD.unpack_from(body)
                columns = struct.unpack_from(f"<{count}q{count}q{count}d", body, POINTS_HEAD.size)
                column = cols.setdefault(key_id, ([], [], []))
                column[0].extend(columns[:count])
                column[1].extend(columns[count : 2 * count])
                column[2].extend(columns[2 * count :])
                next_step[key_id] = after
            elif kind == SINGLE:
                name = body[SINGLE_HEAD.size :].decode()
                out.singles[name] = SINGLE_HEAD.unpack_from(body)
            elif kind == OVERWRITE:
                name, time_ns = body[8:].decode(), _I64.unpack_from(body)[0]
                if name in ids:
                    cols[ids[name]] = ([], [], [])
                    next_step[ids[name]] = 0
                out.singles.pop(name, None)
                out.events.append(Event("overwrite", time_ns, {"metric": name}))
            elif kind == EVENT:
                event_type, time_ns, payload = orjson.loads(body)
                out.events.append(Event(event_type, time_ns, payload))
            else:
                raise ValueError(f"unknown record type {kind}")
    except (KeyError, ValueError, struct.error, UnicodeDecodeError, orjson.JSONDecodeError):
        complete = False
    for key_id in sorted(cols):
        steps, times, values = cols[key_id]
        if values:
            out.series[names.get(key_id, f"#{key_id}")] = (list(steps), list(times), list(values))
    return Replayed(out, complete)


@dataclass(slots=True)
class JournalImage:
    """One journal file as found on disk."""

    path: Path
    identity: dict[str, Any]
    state: State

    @property
    def entity(self) -> EntityRef:
        project, kind, entity_id = self.identity["entity"]
        return EntityRef(project, kind, entity_id)


def load_header(path: Path) -> JournalImage | None:
    """The header of a journal file; None when its creation did not finish (no magic: it holds nothing)."""
    with open(path, "rb") as handle:
        head = handle.read(HEADER_BYTES)
    if head[:8] != MAGIC:
        if head[:8].strip(b"\0"):
            raise ValueError("not a journal file")
        return None
    if U32.unpack_from(head, 8)[0] != VERSION:
        raise ValueError(f"journal format {U32.unpack_from(head, 8)[0]}, this build reads {VERSION}")
    length = U32.unpack_from(head, 12)[0]
    state = unpack_state(head)
    if state is None:
        raise ValueError("no valid state slot")
    return JournalImage(path, orjson.loads(head[16 : 16 + length]), state)
