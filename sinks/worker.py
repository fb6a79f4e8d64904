"""Sink worker (``trackstream sink worker``): processed topics -> :class:`sinks.sink.Sink`, exactly once.

Per topic partition, messages accumulate into a chunk bounded by rows, bytes and age (:class:`Batcher`). A
chunk is written in three steps:

1. record its offset range [first, last] in ``sink_chunks`` (a write-ahead log of chunk boundaries);
2. insert its rows with the deduplication token ``<topic>:<partition>:<first>-<last>``;
3. commit ``last + 1`` to Kafka.

A crash after 2 replays the chunk from the committed offset; on assignment the worker reads the recorded
boundaries and cuts the replay at the same offsets, so the replayed inserts carry the same tokens and ClickHouse
drops them: even a raw ``SELECT count() FROM points`` sees every point once. (Reads use ``FINAL`` on top, which
covers the remaining windows, e.g. a crash between 1 and 2 followed by a differently cut replay.)

ClickHouse unavailable: the worker pauses its partitions, keeps polling (so the group keeps it), retries the
same chunk with capped exponential backoff and logs each failure; nothing is committed and nothing new is
fetched, so memory stays bounded by the chunks already held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.processed import (
    decode_entity_states,
    decode_point_block,
    decode_step_aggregates,
    decode_summaries,
)
from schemas.topics import Topics
from sinks.batch import Batcher, BatchLimits
from sinks.errors import SinkError, require
from sinks.sink import Sink

log = logging.getLogger(__name__)

DEFAULT_GROUP_ID = "trackstream-sink"

_CHUNKS_SQL = """
SELECT first_offset, last_offset FROM sink_chunks FINAL
WHERE group_id = {group_id:String} AND topic = {topic:String} AND partition = {partition:UInt32}
  AND last_offset >= {committed:Int64}
ORDER BY first_offset
"""


@dataclass(slots=True)
class _Message:
    offset: int
    records: list[Any]


@dataclass(slots=True)
class _Partition:
    """What the worker holds for one assigned topic partition."""

    topic: str
    partition: int
    kind: str
    batcher: Batcher[_Message]
    plans: deque[tuple[int, int]] = field(default_factory=deque)

    def planned_cut(self, offset: int) -> bool:
        while self.plans and self.plans[0][1] < self.batcher.items[0].offset:
            self.plans.popleft()
        return bool(self.plans) and offset >= self.plans[0][1]


@dataclass(slots=True)
class WorkerStats:
    points: int = 0
    records: int = 0
    chunks: int = 0
    retries: int = 0
    skipped_messages: int = 0


def _decoders() -> dict[str, Callable[[bytes], list[Any]]]:
    return {
        "points": lambda raw: [decode_point_block(raw)],
        "steps": decode_step_aggregates,
        "summaries": decode_summaries,
        "entities": decode_entity_states,
    }


class SinkWorker:
    """One sink process: consumes ``<prefix>.points/.steps/.summaries/.entities`` and writes through a Sink."""

    def __init__(
        self,
        sink: Sink,
        *,
        bootstrap: str,
        topic_prefix: str | None = None,
        group_id: str = DEFAULT_GROUP_ID,
        limits: BatchLimits | None = None,
        poll_ms: int = 200,
        max_backoff_s: float = 10.0,
        consumer_options: dict[str, Any] | None = None,
    ) -> None:
        self.sink = sink
        self.bootstrap = bootstrap
        self.topics = Topics.from_env(topic_prefix)
        self.group_id = group_id
        self.limits = limits or BatchLimits()
        self.poll_ms = poll_ms
        self.max_backoff_s = max_backoff_s
        self.consumer_options = consumer_options or {}
        self.stats = WorkerStats()
        self._kinds = dict(zip(self.topics.processed(), ("points", "steps", "summaries", "entities"), strict=True))
        self._decoders = _decoders()
        self._held: dict[Any, _Partition] = {}
        self._consumer: Any = None

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; pending chunks are written (and committed) before returning."""
        aiokafka = require("aiokafka")
        self._consumer = consumer = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=self.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", **self.consumer_options,
        )
        consumer.subscribe(list(self.topics.processed()), listener=_listener(self, aiokafka))
        await consumer.start()
        log.info("sink worker %s consuming %s.* into %r", self.group_id, self.topics.prefix, self.sink.backend)
        try:
            while not stop.is_set():
                fetched = await consumer.getmany(timeout_ms=self.poll_ms, max_records=self.limits.max_rows)
                for tp, messages in fetched.items():
                    await self._take(tp, messages, stop)
                for tp in [tp for tp, held in self._held.items() if held.batcher.due()]:
                    await self._flush(tp, stop)
            for tp in list(self._held):
                await self._flush(tp, stop, final=True)
        finally:
            await consumer.stop()
            log.info("sink worker %s stopped: %s", self.group_id, self.stats)

    async def _take(self, tp: Any, messages: Sequence[Any], stop: asyncio.Event) -> None:
        if not messages:
            return
        held = self._held.get(tp) or await self._open(tp, messages[0].offset)
        decode = self._decoders[held.kind]
        for message in messages:
            try:
                records = decode(message.value)
            except Exception:
                self.stats.skipped_messages += 1
                log.exception("skipping undecodable message %s[%d]@%d", tp.topic, tp.partition, message.offset)
                records = []
            rows = sum(r.point_count() for r in records) if held.kind == "points" else len(records)
            held.batcher.add(_Message(message.offset, records), rows=rows, nbytes=len(message.value or b""))
            if held.planned_cut(message.offset) or (not held.plans and held.batcher.full()):
                await self._flush(tp, stop)

    async def _flush(self, tp: Any, stop: asyncio.Event, *, final: bool = False) -> None:
        held = self._held.get(tp)
        if held is None or not held.batcher.items:
            return
        first, last = held.batcher.items[0].offset, held.batcher.items[-1].offset
        planned = bool(held.plans) and held.plans[0] == (first, last)
        delay = 0.1
        while True:
            try:
                await asyncio.to_thread(self._write, held, first, last, planned)
                break
            except SinkError as exc:
                self.stats.retries += 1
                log.warning(
                    "ClickHouse write of %s[%d] offsets %d-%d failed (%s); not committing, retrying in %.1fs",
                    tp.topic, tp.partition, first, last, exc, delay,
                )
                if final and stop.is_set() and self.stats.retries and delay >= self.max_backoff_s:
                    log.error("giving up at shutdown: offsets %d-%d stay uncommitted and will be replayed", first, last)
                    return
                await self._backoff(delay)
                delay = min(delay * 2, self.max_backoff_s)
                if tp not in self._held:
                    return
        if planned:
            held.plans.popleft()
        held.batcher.clear()
        try:
            await self._consumer.commit({tp: last + 1})
        except Exception as exc:  # rebalanced away: the next owner replays with the recorded boundaries
            log.warning("commit of %s[%d] offset %d failed (%s); the chunk will be replayed, deduplicated",
                        tp.topic, tp.partition, last + 1, exc)
        self.stats.chunks += 1

    def _write(self, held: _Partition, first: int, last: int, planned: bool) -> None:
        if not planned:
            self._record_chunk(held, first, last)
        records = [r for message in held.batcher.items for r in message.records]
        dedup_key = f"{held.topic}:{held.partition}:{first}-{last}"
        if held.kind == "points":
            self.stats.points += self.sink.write(point_blocks=records, dedup_key=dedup_key).points
        else:
            self.sink.write(**{_WRITE_ARG[held.kind]: records}, dedup_key=dedup_key)
        self.stats.records += len(records)

    def _record_chunk(self, held: _Partition, first: int, last: int) -> None:
        pa = require("pyarrow")
        row = pa.table({
            "group_id": [self.group_id], "topic": [held.topic], "partition": pa.array([held.partition], pa.uint32()),
            "first_offset": pa.array([first], pa.int64()), "last_offset": pa.array([last], pa.int64()),
        })
        self.sink.backend.insert("sink_chunks", row)

    async def _backoff(self, delay_s: float) -> None:
        """Wait while still polling (paused), so the group does not evict this worker."""
        consumer = self._consumer
        assigned = list(consumer.assignment())
        consumer.pause(*assigned)
        try:
            await consumer.getmany(timeout_ms=int(delay_s * 1000))
        finally:
            consumer.resume(*[tp for tp in assigned if tp in consumer.assignment()])

    async def _open(self, tp: Any, offset: int) -> _Partition:
        """Start holding a partition whose next message is at ``offset``; load recorded chunk boundaries."""
        held = _Partition(tp.topic, tp.partition, self._kinds[tp.topic], Batcher(write=_no_write, limits=self.limits))
        params = {"group_id": self.group_id, "topic": tp.topic, "partition": tp.partition, "committed": offset}
        rows = (await asyncio.to_thread(self.sink.backend.query, _CHUNKS_SQL, params))[1]
        held.plans.extend((int(a), int(b)) for a, b in rows)
        if held.plans:
            log.info("%s[%d]: replaying %d recorded chunk(s) from offset %d with their original boundaries",
                     tp.topic, tp.partition, len(held.plans), offset)
        self._held[tp] = held
        return held

    def revoked(self, partitions: Sequence[Any]) -> None:
        for tp in partitions:
            self._held.pop(tp, None)


_WRITE_ARG = {"steps": "steps", "summaries": "summaries", "entities": "entity_states"}


def _no_write(items: list[_Message]) -> None:
    raise SinkError("chunks are written by the worker")


def _listener(worker: SinkWorker, aiokafka: Any) -> Any:
    """aiokafka rebalance callbacks: held chunks of revoked partitions are dropped (their offsets were not
    committed, the next owner replays them with the recorded boundaries)."""

    class Listener(aiokafka.ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: Any) -> None:
            worker.revoked(list(revoked))

        async def on_partitions_assigned(self, assigned: Any) -> None:
            worker.revoked(list(assigned))  # start afresh from the committed offsets

    return Listener()


def run_sink_worker(
    *,
    bootstrap: str,
    topic_prefix: str | None = None,
    clickhouse_url: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    database: str | None = None,
    group_id: str = DEFAULT_GROUP_ID,
    limits: BatchLimits | None = None,
    stop: asyncio.Event | None = None,
) -> WorkerStats:
    """Run a sink worker until SIGINT/SIGTERM (or ``stop``); blocking. Returns what it wrote."""
    sink = Sink.open(clickhouse_url=clickhouse_url, data_dir=data_dir, database=database)
    worker = SinkWorker(sink, bootstrap=bootstrap, topic_prefix=topic_prefix, group_id=group_id, limits=limits)

    async def main() -> None:
        done = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, done.set)
        await worker.run(done)

    try:
        asyncio.run(main())
    finally:
        sink.close()
    return worker.stats
