"""What the sink worker holds per partition, how a sealed chunk becomes the tables of one write, and the chunk
boundaries it records in ``sink_chunks``.

A :class:`Chunk` is a run of messages of one partition, written and committed as one unit. Building its tables
(:func:`prepare_chunk`) never raises: when the chunk as a whole fails to build (a value the decode-time checks of
:mod:`trackstream.sinks.checks` did not foresee), every message, then every record, is built on its own, the ones
that fail become dead letters (reason ``unstorable_record``) and the others are written.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from trackstream.sinks.batch import Batcher, PointColumns
from trackstream.sinks.dlq import DeadLetter, count_points
from trackstream.sinks.errors import require
from trackstream.sinks.sink import Prepared, Sink

log = logging.getLogger(__name__)

WRITE_ARG = {"steps": "steps", "entities": "entity_states"}

_CHUNKS_SQL = """
SELECT first_offset, last_offset FROM sink_chunks FINAL
WHERE group_id = {group_id:String} AND topic = {topic:String} AND partition = {partition:UInt32}
  AND last_offset >= {committed:Int64}
ORDER BY first_offset
"""


def recorded_chunks(sink: Sink, group_id: str, tp: Any, committed: int) -> list[tuple[int, int]]:
    """The chunk boundaries ``(first, last)`` recorded for a partition at or after its committed offset."""
    params = {"group_id": group_id, "topic": tp.topic, "partition": tp.partition, "committed": committed}
    return [(int(a), int(b)) for a, b in sink.backend.query(_CHUNKS_SQL, params)[1]]


def record_chunk(sink: Sink, group_id: str, held: Held, first: int, last: int) -> None:
    """Record a chunk's boundaries in ``sink_chunks`` before it is inserted (the replay cuts at them)."""
    pa = require("pyarrow")
    row = pa.table({
        "group_id": [group_id], "topic": [held.topic], "partition": pa.array([held.partition], pa.uint32()),
        "first_offset": pa.array([first], pa.int64()), "last_offset": pa.array([last], pa.int64()),
    })
    sink.backend.insert("sink_chunks", row)


@dataclass(slots=True)
class Message:
    """One consumed message: its decoded records (none for points: they went into the chunk's columns), which
    records of the message they are (``None``: all of them, in order), and the raw bytes and key for a dead letter
    should the chunk fail to build (dropped once the chunk's tables are built)."""

    offset: int
    records: list[Any]
    raw: bytes | None = None
    key: bytes | None = None
    indices: list[int] | None = None
    stored: bool = True  # False: dead-lettered whole at decode time


@dataclass(slots=True)
class Held:
    """What the worker holds for one assigned topic partition."""

    topic: str
    partition: int
    kind: str
    batcher: Batcher[Message]
    plans: deque[tuple[int, int]] = field(default_factory=deque)
    columns: PointColumns = field(default_factory=PointColumns)  # the points of the batcher's messages
    dead: list[asyncio.Future[None]] = field(default_factory=list)  # dead letters of the batcher's messages

    def planned_cut(self, offset: int) -> bool:
        """Whether a recorded chunk boundary ends at or before ``offset`` (the replay cuts there)."""
        while self.plans and self.plans[0][1] < self.batcher.items[0].offset:
            self.plans.popleft()
        return bool(self.plans) and offset >= self.plans[0][1]

    def seal(self, tp: Any) -> Chunk:
        """Take the accumulated messages as one chunk (its boundaries are final from here on)."""
        items = self.batcher.items
        first, last = items[0].offset, items[-1].offset
        planned = bool(self.plans) and self.plans[0] == (first, last)
        if planned:
            self.plans.popleft()
        chunk = Chunk(tp, self, items, first, last, planned, self.batcher.rows, self.columns, dead=self.dead)
        self.batcher.clear()
        self.columns = PointColumns()
        self.dead = []
        return chunk


@dataclass(slots=True)
class Chunk:
    """A sealed run of messages of one partition: written (and retried) as one unit, then committed once its
    dead letters (``dead``) are acknowledged too."""

    tp: Any
    held: Held
    messages: list[Message]
    first: int
    last: int
    planned: bool
    rows: int
    columns: PointColumns
    prepared: Prepared | None = None
    records: int = 0
    dead: list[asyncio.Future[None]] = field(default_factory=list)


def prepare_chunk(sink: Sink, chunk: Chunk) -> tuple[Prepared, list[DeadLetter]]:
    """The chunk's tables, and the dead letters of whatever could not be built (in a thread; never raises).

    Drops the chunk's messages and columns: the tables hold the rows from here on.
    """
    kind = chunk.held.kind
    try:
        letters: list[DeadLetter] = []
        if kind == "points":
            prepared, records = sink.prepare(point_blocks=chunk.columns), len(chunk.columns)
        else:
            rows = [record for message in chunk.messages for record in message.records]
            prepared, records = sink.prepare(**{WRITE_ARG[kind]: rows}), len(rows)
    except Exception as exc:
        log.warning("building the tables of %s[%d] offsets %d-%d failed (%r): building its records one by one, "
                    "the ones at fault go to the dead-letter topic", chunk.held.topic, chunk.held.partition,
                    chunk.first, chunk.last, exc)
        prepared, records, letters = _salvage(sink, chunk)
    chunk.records = records
    chunk.messages, chunk.columns = [], PointColumns()
    return prepared, letters


def _salvage(sink: Sink, chunk: Chunk) -> tuple[Prepared, int, list[DeadLetter]]:
    """Build every message (points) or record on its own; write the ones that build, dead-letter the others."""
    held, letters = chunk.held, list[DeadLetter]()
    good_columns, good_records = PointColumns(), list[Any]()
    for message in (m for m in chunk.messages if m.stored):
        source = (held.topic, held.partition, message.offset)
        if held.kind == "points":
            problem = _problem(sink, partial(_points, message.raw))
            if problem is None:
                good_columns.add_raw(message.raw or b"")
            else:
                letters.append(DeadLetter.message("unstorable_record", problem, source, message.raw, message.key,
                                                  points=count_points(message.raw)))
            continue
        problems = []
        for index, record in zip(_indices(message), message.records, strict=True):
            problem = _problem(sink, partial(_records, held.kind, record))
            if problem is None:
                good_records.append(record)
            else:
                problems.append((index, "unstorable_record", problem))
        if problems:
            letters.append(DeadLetter.some_records(problems, source, message.raw, message.key))
    try:
        if held.kind == "points":
            return sink.prepare(point_blocks=good_columns), len(good_columns), letters
        return sink.prepare(**{WRITE_ARG[held.kind]: good_records}), len(good_records), letters
    except Exception as exc:  # each builds alone, together they do not: dead-letter them all, keep going
        log.error("the records of %s[%d] offsets %d-%d build one by one but not together (%r): dead-lettering "
                  "them all", held.topic, held.partition, chunk.first, chunk.last, exc)
        return Sink.prepare(), 0, [_all_of(held, m, f"the chunk's tables did not build: {exc!r}")
                                   for m in chunk.messages if m.stored and (m.records or held.kind == "points")]


def _indices(message: Message) -> list[int]:
    return message.indices if message.indices is not None else list(range(len(message.records)))


def _all_of(held: Held, message: Message, detail: str) -> DeadLetter:
    """A dead letter for every record of ``message`` that was to be stored."""
    source = (held.topic, held.partition, message.offset)
    if held.kind == "points":
        return DeadLetter.message("unstorable_record", detail, source, message.raw, message.key,
                                  points=count_points(message.raw))
    problems = [(index, "unstorable_record", detail) for index in _indices(message)]
    return DeadLetter.some_records(problems, source, message.raw, message.key)


def _columns(raw: bytes | None) -> PointColumns:
    columns = PointColumns()
    columns.add_raw(raw or b"")
    return columns


def _points(raw: bytes | None) -> dict[str, Any]:
    return {"point_blocks": _columns(raw)}


def _records(kind: str, record: Any) -> dict[str, Any]:
    return {WRITE_ARG[kind]: [record]}


def _problem(sink: Sink, arguments: Callable[[], dict[str, Any]]) -> str | None:
    """``None`` if ``sink.prepare(**arguments())`` builds, else what it raised."""
    try:
        sink.prepare(**arguments())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
