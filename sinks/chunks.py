"""What the sink worker holds per partition, how a sealed chunk becomes tables, and the chunk boundaries it records
in ``sink_chunks``.

A :class:`Chunk` is a run of messages of one partition; the chunks of several partitions are written and
committed as one unit (:class:`trackstream.sinks.writes.Write`). Building its tables
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
from trackstream.sinks.checks import decode_records
from trackstream.sinks.dlq import DeadLetter, count_points
from trackstream.sinks.errors import SinkError, require
from trackstream.sinks.sink import Prepared, Sink

log = logging.getLogger(__name__)

WRITE_ARG = {"steps": "steps", "entities": "entity_states", "alerts": "alerts"}  # kind -> Sink.prepare keyword

_CHUNKS_SQL = """
SELECT first_offset, last_offset, write_key FROM sink_chunks FINAL
WHERE group_id = {group_id:String} AND topic = {topic:String} AND partition = {partition:UInt32}
  AND last_offset >= {committed:Int64}
ORDER BY first_offset
"""


Plan = tuple[int, int, str]  # a recorded chunk: first offset, last offset, the key of the write it belonged to


def piece_key(topic: str, partition: int, first: int, last: int) -> str:
    """``<topic>:<partition>:<first>-<last>``: one chunk in a write's key (Kafka topic names hold no ``:``)."""
    return f"{topic}:{partition}:{first}-{last}"


def recorded_chunks(sink: Sink, group_id: str, tp: Any, committed: int) -> list[Plan]:
    """The chunks ``(first, last, write key)`` recorded for a partition at or after its committed offset (a row
    recorded before writes held several partitions has no key: its write was the chunk alone)."""
    params = {"group_id": group_id, "topic": tp.topic, "partition": tp.partition, "committed": committed}
    return [(int(a), int(b), key or piece_key(tp.topic, tp.partition, int(a), int(b)))
            for a, b, key in sink.backend.query(_CHUNKS_SQL, params)[1]]


def record_chunks(sink: Sink, group_id: str, chunks: list[Chunk], key: str) -> None:
    """Record the boundaries of a write's chunks and its key in ``sink_chunks`` before it is inserted (a replay
    cuts at them and regroups them under the same key)."""
    pa = require("pyarrow")
    rows = pa.table({
        "group_id": [group_id] * len(chunks), "topic": [c.held.topic for c in chunks],
        "partition": pa.array([c.held.partition for c in chunks], pa.uint32()),
        "first_offset": pa.array([c.first for c in chunks], pa.int64()),
        "last_offset": pa.array([c.last for c in chunks], pa.int64()), "write_key": [key] * len(chunks),
    })
    sink.backend.insert("sink_chunks", rows)


@dataclass(slots=True)
class Message:
    """One consumed message: its decoded records (none for points and for step aggregates read column-wise: they
    went into the chunk's columns), which
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
    plans: deque[Plan] = field(default_factory=deque)
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
        key = piece_key(self.topic, self.partition, first, last)
        planned = bool(self.plans) and self.plans[0][:2] == (first, last)
        if planned:
            key = self.plans.popleft()[2]
        chunk = Chunk(tp, self, items, first, last, planned, self.batcher.rows, self.columns, dead=self.dead, key=key)
        self.batcher.clear()
        self.columns = PointColumns()
        self.dead = []
        return chunk


@dataclass(slots=True)
class Chunk:
    """A sealed run of messages of one partition, written as part of a write and committed with it once its dead
    letters (``dead``) are acknowledged too. ``planned``: it is a recorded chunk being replayed, and ``key`` is then
    the key of the write it was recorded in (else its own :func:`piece_key`)."""

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
    key: str = ""


def prepare_chunk(sink: Sink, chunk: Chunk) -> tuple[Prepared, list[DeadLetter]]:
    """The chunk's tables, and the dead letters of whatever could not be built (in a thread; never raises).

    Drops the chunk's messages and columns: the tables hold the rows from here on.
    """
    kind = chunk.held.kind
    try:
        letters: list[DeadLetter] = []
        if kind == "points":
            prepared, records = sink.prepare(point_blocks=chunk.columns), len(chunk.columns)
        elif kind == "steps":  # read column-wise, or record by record where a message needed it
            rows = [record for message in chunk.messages for record in message.records]
            prepared, records = sink.prepare(chunk.columns, rows), chunk.columns.steps + len(rows)
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
    if held.kind == "steps":  # read column-wise: decode their records now
        for message in chunk.messages:
            if message.stored and message.indices is None and not message.records:
                message.records = decode_records("steps", message.raw).records
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


def no_write(items: list[Message]) -> None:
    """The write of a :class:`Held` batcher: the worker writes chunks itself."""
    raise SinkError("chunks are written by the worker")


def rebalance_listener(revoked: Callable[[list[Any]], None], aiokafka: Any) -> Any:
    """aiokafka rebalance callbacks: the held (uncommitted) chunks of revoked partitions are dropped (the next owner
    replays them with the recorded boundaries), and an assigned partition starts afresh from its committed offset."""

    class Listener(aiokafka.ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, partitions: Any) -> None:
            revoked(list(partitions))

        async def on_partitions_assigned(self, partitions: Any) -> None:
            revoked(list(partitions))

    return Listener()
