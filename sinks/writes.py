"""One write of the sink worker: the chunks of several partitions, inserted and committed as one unit, and the
replay of recorded writes.

Writing every partition's chunk in one insert per table (rather than a chunk at a time) is what keeps latency
low below saturation: a point waits for one write, not for a round of writes of every partition of the points,
steps and entities topics (six to nine chDB inserts of ~50-250 ms each with the default three partitions).

A write's key lists its chunks (:func:`write_key`); it is recorded with each chunk in ``sink_chunks`` and is the
write's deduplication key. After a crash the worker cuts each partition's replay at the recorded offsets and
holds the replayed chunks in a :class:`ReplayPool` until every chunk of their write is back, so the replayed
write carries the same key and ClickHouse drops it. A recorded write that cannot be rebuilt (one of its
partitions is now consumed by another worker, or a chunk does not come back within ``timeout_s``) is written
under a new key: ``FINAL`` reads stay exact, a raw ``count()`` may see its rows twice until a merge.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

from trackstream.sinks.chunks import Chunk, piece_key
from trackstream.sinks.sink import Prepared

log = logging.getLogger(__name__)

REBUILD_TIMEOUT_S = 10.0


def write_key(chunks: Collection[Chunk]) -> str:
    """The key of a write of ``chunks``: their ``<topic>:<partition>:<first>-<last>``, sorted, comma-separated
    (one chunk alone: the key chunks had when each was written on its own)."""
    return ",".join(sorted(piece_key(c.held.topic, c.held.partition, c.first, c.last) for c in chunks))


def key_partitions(key: str) -> set[tuple[str, int]]:
    """The (topic, partition) of every chunk a write key names."""
    found = set()
    for piece in key.split(","):
        topic, partition, _ = piece.rsplit(":", 2)
        found.add((topic, int(partition)))
    return found


@dataclass(slots=True)
class Write:
    """Chunks of distinct partitions written under one key; ``planned``: a recorded write being replayed (its
    chunks are not recorded again)."""

    chunks: list[Chunk]
    key: str
    planned: bool = False

    @classmethod
    def of(cls, chunks: list[Chunk]) -> Write:
        """A new write of ``chunks`` (recorded when written)."""
        return cls(chunks, write_key(chunks))

    @property
    def rows(self) -> int:
        """Rows of all its chunks."""
        return sum(c.rows for c in self.chunks)

    @property
    def dead(self) -> Iterator[Any]:
        """The dead-letter acknowledgements of all its chunks."""
        return (future for chunk in self.chunks for future in chunk.dead)

    def prepared(self) -> Prepared:
        """The tables of all its chunks (each prepared already), merged."""
        parts = [c.prepared for c in self.chunks]
        assert all(p is not None for p in parts)
        return Prepared.merge([p for p in parts if p is not None])

    def keep(self, held: Callable[[Chunk], bool]) -> bool:
        """Drop the chunks ``held`` rejects (partitions revoked meanwhile); a write that lost chunks gets a new key.
        Returns whether any chunk is left."""
        kept = [c for c in self.chunks if held(c)]
        if len(kept) != len(self.chunks):
            self.chunks, self.key, self.planned = kept, write_key(kept), False
        return bool(kept)


@dataclass(slots=True)
class ReplayPool:
    """Replayed chunks waiting for the other chunks of their recorded write (see the module).

    Per partition, writes leave in the order their chunks were cut, so an offset is never committed past a chunk
    still waiting here.
    """

    timeout_s: float = REBUILD_TIMEOUT_S
    clock: Callable[[], float] = time.monotonic
    waiting: dict[str, list[Chunk]] = field(default_factory=dict)  # write key -> its chunks back so far
    since: dict[str, float] = field(default_factory=dict)
    queues: dict[Any, list[str]] = field(default_factory=dict)  # partition -> keys of its waiting chunks, in order

    def holds(self, tp: Any) -> bool:
        """Whether a chunk of ``tp`` waits here (later messages of ``tp`` then wait for it)."""
        return bool(self.queues.get(tp))

    def add(self, chunk: Chunk, assigned: Collection[Any]) -> None:
        """Take a replayed chunk. Its write is rebuilt only if every partition it names is in ``assigned``."""
        key = chunk.key  # a chunk not replayed as recorded has its own piece key
        if chunk.planned and not key_partitions(key) <= {(tp.topic, tp.partition) for tp in assigned}:
            log.warning("recorded write %s spans partitions this worker no longer holds: writing its chunk of "
                        "%s[%d] under a new key", key, chunk.held.topic, chunk.held.partition)
            chunk.planned, key = False, write_key([chunk])
            chunk.key = key
        self.waiting.setdefault(key, []).append(chunk)
        self.since.setdefault(key, self.clock())
        self.queues.setdefault(chunk.tp, []).append(key)

    def ready(self) -> list[Write]:
        """Writes that can go, in order: rebuilt whole, or given up on after ``timeout_s`` (under a new key)."""
        out: list[Write] = []
        progress = True
        while progress:
            progress = False
            for key, chunks in list(self.waiting.items()):
                if not all(self.queues[c.tp][0] == key for c in chunks):
                    continue
                whole = chunks[0].planned and len(chunks) == len(key_partitions(key))
                if not whole and chunks[0].planned and self.clock() - self.since[key] < self.timeout_s:
                    continue
                if not whole and chunks[0].planned:
                    log.warning("recorded write %s did not come back whole within %.0f s: writing its %d chunk(s) "
                                "under a new key", key, self.timeout_s, len(chunks))
                out.append(Write(chunks, key, planned=True) if whole else Write.of(chunks))
                del self.waiting[key], self.since[key]
                for chunk in chunks:
                    self.queues[chunk.tp].pop(0)
                progress = True
        return out

    def drop(self, tps: Collection[Any]) -> None:
        """Forget the chunks of revoked partitions (their next owner replays them)."""
        for tp in tps:
            for key in self.queues.pop(tp, []):
                chunks = [c for c in self.waiting.get(key, []) if c.tp != tp]
                if chunks:
                    self.waiting[key] = chunks
                else:
                    self.waiting.pop(key, None)
                    self.since.pop(key, None)


@dataclass(slots=True)
class WorkerStats:
    """Counters of one sink worker since it started.

    ``points`` and ``records`` written (for the points topic a record is one point block), ``writes`` made (each
    holds the chunks of several partitions), write ``retries``; ``dead_letters`` acknowledged by the broker,
    holding ``dead_messages`` dead-lettered whole and ``dead_records`` dead-lettered out of otherwise stored
    messages.
    """

    points: int = 0
    records: int = 0
    writes: int = 0
    retries: int = 0
    dead_letters: int = 0
    dead_messages: int = 0
    dead_records: int = 0
