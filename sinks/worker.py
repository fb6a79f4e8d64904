"""Sink worker (``trackstream sink worker``): processed topics -> :class:`trackstream.sinks.sink.Sink`, exactly once.

Per topic partition (of the processed topics and ``<prefix>.alerts``, ``Topics.sink_inputs``; an alert is a row of
``alerts``), messages accumulate into a chunk bounded by rows, bytes and age (:class:`Batcher`). A cut
seals the chunk of every partition at once into one write (:class:`~trackstream.sinks.writes.Write`), written in
three steps:

1. record each chunk's offset range [first, last] and the write's key in ``sink_chunks`` (a write-ahead log);
2. insert the rows of all its chunks, one insert per table, with the write's key as deduplication token (the
   key lists the chunks: ``<topic>:<partition>:<first>-<last>,...``);
3. commit ``last + 1`` of every chunk to Kafka, in one request.

Steps 1-2 run in a thread (chDB releases the GIL while it inserts) while the event loop fetches the next
messages and decodes them straight into the columns of the chunk being filled (no per-point Python objects);
a sealed write's tables are built in a thread too, while the previous write is being inserted. At most one
write is in flight and one waits for it (memory stays bounded by the batchers plus two writes); commits follow
the writes in order. While the writer is idle, a cut happens as soon as the oldest chunk holds a quarter of
``max_rows`` or is ``idle_linger_ms`` old, so a point waits about that long plus one write below saturation;
chunks grow (up to ``max_rows`` or ``linger_ms``) only while the writer is busy.

A crash after 2 replays the write from the committed offsets; on assignment the worker reads the recorded
boundaries (:mod:`.intake`), cuts the replay at the same offsets and regroups the chunks by write (:mod:`.writes`),
so the replayed inserts carry the same token and ClickHouse drops them: even a raw ``SELECT count() FROM points``
sees every point once. (Reads use ``FINAL`` on top, which covers the remaining windows, e.g. a crash between 1 and 2
followed by a differently cut replay, or a write whose partitions moved to several workers.)

ClickHouse unavailable: the worker pauses its partitions, keeps polling (so the group keeps it), retries the
same chunk with capped exponential backoff and logs each failure; nothing is committed and nothing new is
fetched, so memory stays bounded by the chunks already held.

Poison: a message that cannot be decoded, or a record with a value its column cannot hold (:mod:`.checks`), goes
to ``<prefix>.sink.dlq`` with its reason and source position (:mod:`.dlq`); the rest is written. A chunk that
fails to build anyway is built record by record (:mod:`.chunks`). Offsets are committed only once the chunk's
write and its dead letters are acknowledged. Kafka unavailable: one WARNING when lost, one when back (:mod:`.outage`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Sequence
from typing import Any

from trackstream.schemas.kafka_clients import FETCH_MAX_WAIT_MS
from trackstream.schemas.settings import KafkaSettings, StoreSettings, diagnose_connect_failure
from trackstream.schemas.topics import Topics
from trackstream.sinks.batch import Batcher, BatchLimits
from trackstream.sinks.chunks import Chunk, Held, no_write, prepare_chunk, rebalance_listener, record_chunks
from trackstream.sinks.dlq import DeadLetter, DeadLetterSender, sink_dlq_topic
from trackstream.sinks.errors import SinkError, require
from trackstream.sinks.intake import decode_message, load_plans
from trackstream.sinks.outage import BrokerWatch, quiet_here, stop_consumer
from trackstream.sinks.sink import Sink
from trackstream.sinks.writes import ReplayPool, WorkerStats, Write

log = logging.getLogger(__name__)

DEFAULT_GROUP_ID = "trackstream-sink"
_INFLIGHT_POLL_MS = 10  # poll timeout while a write is in flight, so its commit follows promptly

class SinkWorker:
    """One sink process: consumes ``<prefix>.points/.steps/.entities/.alerts`` and writes through a Sink;
    dead letters go to ``<prefix>.sink.dlq`` (:attr:`dlq_topic`)."""

    def __init__(
        self,
        sink: Sink,
        *,
        kafka: KafkaSettings,
        group_id: str = DEFAULT_GROUP_ID,
        limits: BatchLimits | None = None,
        poll_ms: int = 200,
        max_backoff_s: float = 10.0,
        consumer_options: dict[str, Any] | None = None,
    ) -> None:
        self.sink = sink
        self.kafka = kafka
        self.topics = Topics(kafka.topic_prefix)
        self.dlq_topic = sink_dlq_topic(kafka.topic_prefix)
        self.group_id = group_id
        self.limits = limits or BatchLimits()
        self.poll_ms = poll_ms
        self.max_backoff_s = max_backoff_s
        self.consumer_options = consumer_options or {}
        self.stats = WorkerStats()
        self.watch = BrokerWatch(kafka.bootstrap)
        self._kinds = dict(zip(self.topics.sink_inputs(), ("points", "steps", "entities", "alerts"), strict=True))
        self._held: dict[Any, Held] = {}
        self._pool = ReplayPool()
        self._inflight: tuple[Write, asyncio.Future[None]] | None = None
        self._sealed: Write | None = None  # prepared, waiting for the write in flight
        self._consumer: Any = None
        self._dlq = DeadLetterSender(
            kafka, self.dlq_topic, max_backoff_s=max_backoff_s, on_acked=self._count, quiet=lambda: self.watch.down,
            on_failure=lambda exc: self.watch.suspect(),
            partitions=lambda: len(self._consumer.partitions_for_topic(self.topics.points) or ()) or 3)

    @property
    def held_rows(self) -> int:
        """Rows held in memory: accumulating in the batchers, replayed chunks waiting for their write, the write
        being written and the one waiting."""
        writes = [self._inflight[0] if self._inflight else None, self._sealed]
        pooled = sum(c.rows for chunks in self._pool.waiting.values() for c in chunks)
        return sum(w.rows for w in writes if w) + pooled + sum(held.batcher.rows for held in self._held.values())

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; pending chunks are written (and committed) before returning."""
        aiokafka = require("aiokafka")
        quiet_here()
        options = {"fetch_max_wait_ms": FETCH_MAX_WAIT_MS, **self.consumer_options}
        self._consumer = consumer = aiokafka.AIOKafkaConsumer(
            **self.kafka.client_options(), group_id=self.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", **options,
        )
        consumer.subscribe(list(self.topics.sink_inputs()), listener=rebalance_listener(self.revoked, aiokafka))
        # the store's first query pays a one-off setup (~0.2-0.3 s on chDB): overlap it with joining the group
        warm_up = asyncio.ensure_future(asyncio.to_thread(self.sink.backend.query, "SELECT 1"))
        try:
            await consumer.start()
        except Exception as exc:
            await asyncio.gather(warm_up, consumer.stop(), return_exceptions=True)
            problem = await diagnose_connect_failure(self.kafka, exc, "the sink worker")
            if problem is not None:
                raise problem from exc
            message = f"the sink worker cannot reach Kafka at {self.kafka.bootstrap}: {exc}"
            raise SinkError(message, retriable=True) from exc
        with contextlib.suppress(SinkError):  # a store that is down is retried where it matters (writes)
            await warm_up
        log.info("sink worker %s consuming %s.* into %r", self.group_id, self.topics.prefix, self.sink.backend)
        watching = asyncio.create_task(self.watch.run(consumer.topics, stop), name="trackstream-sink-watch")
        try:
            while not stop.is_set():
                if self._inflight and self._inflight[1].done():
                    await self._drain(stop)
                for write in self._pool.ready():
                    await self._start(write, stop)
                if any(held.batcher.due() or self._idle(held) for held in self._cuttable().values()):
                    await self._cut(stop)
                timeout_ms = min(self.poll_ms, _INFLIGHT_POLL_MS) if self._inflight else self._poll_timeout_ms()
                fetched = await consumer.getmany(timeout_ms=timeout_ms, max_records=self.limits.max_rows)
                for tp, messages in fetched.items():
                    await self._take(tp, messages, stop)
            await self._cut(stop, final=True)
            await self._drain(stop, final=True)
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
            await self._dlq.close()
            await stop_consumer(consumer)
            log.info("sink worker %s stopped: %s", self.group_id, self.stats)

    async def _take(self, tp: Any, messages: Sequence[Any], stop: asyncio.Event) -> None:
        if not messages:
            return
        held = self._held.get(tp) or await self._open(tp, messages[0].offset)
        for message in messages:
            item, rows, letters = decode_message(held, message)
            for letter in letters:
                self._dead_letter(held, letter)
            held.batcher.add(item, rows=rows, nbytes=len(message.value or b""))
            if held.planned_cut(message.offset):
                self._pool.add(held.seal(tp), self._consumer.assignment())
                for write in self._pool.ready():
                    await self._start(write, stop)
            elif (held.batcher.full() or self._idle(held)) and tp in self._cuttable():
                await self._cut(stop)

    def _cuttable(self) -> dict[Any, Held]:
        """Partitions whose messages may be cut now: not replaying recorded chunks, none waiting in the pool."""
        return {tp: held for tp, held in self._held.items()
                if held.batcher.items and not held.plans and not self._pool.holds(tp)}

    def _dead_letter(self, held: Held | Chunk, letter: DeadLetter) -> None:
        """Hand ``letter`` to the producer; the offsets past it wait for its acknowledgement (``held.dead``)."""
        held.dead.append(self._dlq.submit(letter))

    def _count(self, letter: DeadLetter) -> None:
        self.stats.dead_letters += 1
        if letter.records is None:
            self.stats.dead_messages += 1
        else:
            self.stats.dead_records += len(letter.records)

    async def _cut(self, stop: asyncio.Event, *, final: bool = False) -> None:
        """Seal the chunk of every partition that may be cut into one write and start it."""
        chunks = [held.seal(tp) for tp, held in self._cuttable().items()]
        if chunks:
            await self._start(Write.of(chunks), stop, final=final)

    async def _start(self, write: Write, stop: asyncio.Event, *, final: bool = False) -> None:
        """Build the write's tables, then start writing it once the write in flight (if any) is committed."""
        self._sealed = write
        try:
            built = await asyncio.to_thread(lambda: [prepare_chunk(self.sink, c) for c in write.chunks])
            for chunk, (prepared, letters) in zip(write.chunks, built, strict=True):  # built during the last write
                chunk.prepared = prepared
                for letter in letters:
                    self._dead_letter(chunk, letter)
            await self._drain(stop, final=final)
        finally:
            self._sealed = None
        if write.keep(self._current):  # the chunks of partitions revoked meanwhile are replayed from their commit
            self._inflight = (write, asyncio.ensure_future(asyncio.to_thread(self._write, write)))

    def _current(self, chunk: Chunk) -> bool:
        """Whether the chunk's partition is still held as it was when the chunk was cut."""
        return self._held.get(chunk.tp) is chunk.held

    def _idle(self, held: Held) -> bool:
        """Nothing is being written and this chunk is worth an insert (a quarter of ``max_rows``, or
        ``idle_linger_ms`` old): start on it rather than wait for it to fill, so writing starts early and chunks
        grow only while the writer is busy."""
        batcher = held.batcher
        return self._inflight is None and batcher.rows > 0 and (
            batcher.rows >= self.limits.max_rows // 4 or batcher.age_ms() >= self.limits.idle_linger_ms)

    def _poll_timeout_ms(self) -> int:
        """The poll's timeout while idle: no longer than until the oldest held chunk is ``idle_linger_ms`` old."""
        ages = [held.batcher.age_ms() for held in self._held.values() if held.batcher.items]
        if not ages:
            return self.poll_ms
        return max(1, min(self.poll_ms, int(self.limits.idle_linger_ms - max(ages)) + 1))

    async def _drain(self, stop: asyncio.Event, *, final: bool = False) -> None:
        """Wait for the chunk in flight; retry it with backoff until ClickHouse acknowledged it; wait for its dead
        letters; commit it."""
        if self._inflight is None:
            return
        write, writing = self._inflight
        delay = 0.1
        while True:
            try:
                await writing
                break
            except SinkError as exc:
                self.stats.retries += 1
                log.warning("ClickHouse write of %s failed (%s); not committing, retrying in %.1fs", write.key, exc,
                            delay)
                if final and stop.is_set() and delay >= self.max_backoff_s:
                    self._give_up(write, "its write failed")
                    return
                await self._backoff(delay)
                delay = min(delay * 2, self.max_backoff_s)
                if not write.keep(self._current):  # all revoked meanwhile: the next owners replay them
                    self._inflight = None
                    return
                writing = asyncio.ensure_future(asyncio.to_thread(self._write, write))
                self._inflight = (write, writing)
        if await self._letters_acked(write, stop, final=final):
            await self._commit(write)
        self._inflight = None

    async def _letters_acked(self, write: Write, stop: asyncio.Event, *, final: bool) -> bool:
        """Wait, polling while paused, until the broker acknowledged the write's dead letters. False when its
        partitions were revoked meanwhile or, at shutdown, the broker stays away (the offsets are then replayed)."""
        pending, started = {f for f in write.dead if not f.done()}, time.monotonic()
        while pending:
            _, pending = await asyncio.wait(pending, timeout=0.2)
            if not pending:
                break
            if final and stop.is_set() and time.monotonic() - started >= self.max_backoff_s:
                self._give_up(write, f"{len(pending)} dead letter(s) are not acknowledged")
                return False
            await self._backoff(0.2)
            if not any(self._current(c) for c in write.chunks):
                return False
        return True

    def _give_up(self, write: Write, why: str) -> None:
        log.error("giving up at shutdown (%s): the offsets of %s stay uncommitted and will be replayed", why,
                  write.key)
        for chunk in write.chunks:
            if self._current(chunk):  # so no later chunk of it commits past this one
                del self._held[chunk.tp]
        self._inflight = None

    async def _commit(self, write: Write) -> None:
        self.stats.writes += 1
        offsets = {c.tp: c.last + 1 for c in write.chunks if self._current(c)}
        for chunk in write.chunks:
            if not self._current(chunk):
                log.info("%s[%d] was reassigned while offsets %d-%d were written; not committing them (a replay is "
                         "deduplicated)", chunk.tp.topic, chunk.tp.partition, chunk.first, chunk.last)
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except Exception as exc:  # rebalanced away: the next owner replays with the recorded boundaries
            self.watch.suspect()
            log.warning("commit of %s failed (%s); the write will be replayed, deduplicated", write.key, exc)

    def _write(self, write: Write) -> None:
        """Record the chunks' boundaries (unless a replay reuses recorded ones), then insert them (in a thread)."""
        if not write.planned:
            record_chunks(self.sink, self.group_id, write.chunks, write.key)
        stats = self.sink.write_prepared(write.prepared(), dedup_key=write.key)
        self.stats.points += stats.points
        self.stats.records += sum(c.records for c in write.chunks)

    async def _backoff(self, delay_s: float) -> None:
        """Wait while still polling (paused), so the group does not evict this worker."""
        consumer = self._consumer
        assigned = list(consumer.assignment())
        consumer.pause(*assigned)
        try:
            await consumer.getmany(timeout_ms=int(delay_s * 1000))
        finally:
            consumer.resume(*[tp for tp in assigned if tp in consumer.assignment()])

    async def _open(self, tp: Any, offset: int) -> Held:
        """Start holding a partition whose next message is at ``offset``; load recorded chunk boundaries."""
        held = Held(tp.topic, tp.partition, self._kinds[tp.topic], Batcher(write=no_write, limits=self.limits))
        held.plans.extend(await load_plans(self.sink, self.group_id, tp, offset, backoff=self._backoff,
                                           max_backoff_s=self.max_backoff_s))
        self._held[tp] = held
        return held

    def revoked(self, partitions: Sequence[Any]) -> None:
        """Forget the held (uncommitted) chunks of ``partitions``; their next owner replays them from the commit.

        Also called on assignment, so a partition starts afresh from its committed offset.
        """
        for tp in partitions:
            self._held.pop(tp, None)
        self._pool.drop(partitions)


def run_sink_worker(
    *,
    kafka: KafkaSettings,
    store: StoreSettings,
    group_id: str = DEFAULT_GROUP_ID,
    limits: BatchLimits | None = None,
    stop: asyncio.Event | None = None,
) -> WorkerStats:
    """Run a sink worker from ``kafka`` into ``store`` until SIGINT/SIGTERM (or ``stop``); blocking.

    Returns what it wrote. Raises :class:`~trackstream.schemas.errors.ConfigError` when Kafka rejects the
    credentials, :class:`SinkError` (retriable) when Kafka or the store cannot be reached at start.
    """
    kafka.require_bootstrap("the sink worker")
    sink = Sink.open(store)
    worker = SinkWorker(sink, kafka=kafka, group_id=group_id, limits=limits)

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
