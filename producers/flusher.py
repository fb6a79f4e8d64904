"""The one background flusher of a process: a daemon thread running its own asyncio loop.

Every ``linger_ms`` (or sooner, when the buffered points of the open handles pass ``flush_points``) it
swaps the handles' buffers out, builds and encodes envelopes, and hands them to each handle's
:class:`~trackstream.producers.pipeline.Pipeline`. Callers never wait for it except in :meth:`Flusher.flush`.

A ``durability="spool"`` handle (:class:`~trackstream.producers.journaled.JournaledBuffer`) gets its journal when it
is registered, in its producer's spool directory, and each cycle passes it the producer's position (next ``seq``,
the entity's counters, the spool's end) before and after its batch is spooled (see :mod:`.journaled`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from typing import Protocol

from trackstream.producers.buffer import Drained, MetricBuffer
from trackstream.producers.config import ProducerConfig
from trackstream.producers.errors import FlushTimeoutError, HandleClosedError
from trackstream.producers.journal_writer import Base, Journal
from trackstream.producers.journaled import JournaledBuffer
from trackstream.producers.kafka import FLUSHER_THREAD
from trackstream.producers.pipeline import Pipeline
from trackstream.producers.spool import START, SpoolWriter
from trackstream.schemas import EntityRef, Event

log = logging.getLogger(__name__)

_POLL_S = 0.02
_RELIEVE_WAIT_S = 2.0


class FlushedHandle(Protocol):
    """What the flusher needs from a Run or Model."""

    config: ProducerConfig
    entity: EntityRef
    rank: int
    world_size: int

    @property
    def closed(self) -> bool:
        """True once the handle is finished or closed; the flusher drops it after its last drain."""

    def drain(self) -> Drained:
        """Swap out and return everything the handle buffered since the last drain."""

    def buffered_points(self) -> int:
        """Approximate number of points buffered now (compared with ``flush_points``)."""

    def add_event(self, event: Event) -> None:
        """Queue a lifecycle event for the next drain; raises HandleClosedError once closed."""


class Flusher:
    """Owns the loop thread, the registered handles and one pipeline per configuration."""

    def __init__(self) -> None:
        self.pipelines: dict[ProducerConfig, Pipeline] = {}
        self._handles: list[FlushedHandle] = []
        self._registry = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._wake: asyncio.Event | None = None
        self._stopped = False
        self._urgent = False
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=FLUSHER_THREAD, daemon=True,
        )
        self._thread.start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._wake = asyncio.Event()
        ready.set()
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._cancel_leftovers()
            self._loop.close()

    def _cancel_leftovers(self) -> None:
        """Cancel and await what aiokafka left running (e.g. a producer stopped while the broker was away), so
        that closing the loop destroys no pending task ("Task was destroyed but it is pending!")."""
        pending = [task for task in asyncio.all_tasks(self._loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))

    def register(self, handle: FlushedHandle) -> None:
        """Add ``handle`` to the handles drained every cycle; it stays until a cycle finds it closed.

        A journaled handle without a journal (new, or in a forked child) first gets one; raises SpoolError when
        the spool directory cannot be written.
        """
        if isinstance(handle, JournaledBuffer) and handle.journal is None:
            pipeline = self.pipeline(handle.config)
            handle.attach_journal(new_journal(pipeline, handle.entity, handle.rank, handle.world_size))
        with self._registry:
            self._handles.append(handle)

    def handles(self) -> list[FlushedHandle]:
        """A copy of the registered handles, taken under the registry lock."""
        with self._registry:
            return list(self._handles)

    def handles_unlocked(self) -> list[FlushedHandle]:
        """The handles, without the registry lock (in a forked child, where it may be held forever)."""
        return list(self._handles)

    def pipeline(self, config: ProducerConfig) -> Pipeline:
        """The pipeline (producer incarnation) for ``config``, created on first use."""
        pipeline = self.pipelines.get(config)
        if pipeline is None:
            with self._registry:
                pipeline = self.pipelines.get(config)
                if pipeline is None:
                    pipeline = self.pipelines[config] = Pipeline(config)
        return pipeline

    def wake(self) -> None:
        """Ask the loop thread to check for a flush now rather than after its 20 ms poll; a no-op once stopped."""
        if self._wake is not None and not self._stopped:
            self._loop.call_soon_threadsafe(self._wake.set)

    def relieve(self, handle: MetricBuffer) -> None:
        """Called by a log call past its buffer's cap: wait (at most 2 s) until the flusher drained it.

        This paces a caller that logs faster than points can be encoded, so memory stays bounded; it
        never waits for the network, since what Kafka cannot take goes to the spool.
        """
        if self._stopped or threading.current_thread() is self._thread:
            return
        handle.drained_event.clear()
        self._urgent = True
        self.wake()
        handle.drained_event.wait(_RELIEVE_WAIT_S)

    async def _main(self) -> None:
        assert self._wake is not None
        last = last_beat = time.monotonic()
        while not self._stopped:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), _POLL_S)
            self._wake.clear()
            handles = self.handles()
            if not handles:
                continue
            linger_s = min(h.config.linger_ms for h in handles) / 1000
            limit = min(h.config.flush_points for h in handles)
            now = time.monotonic()
            beats = [h.config.heartbeat_ms for h in handles if h.config.heartbeat_ms > 0]
            if beats and now - last_beat >= min(beats) / 1000:
                last_beat = now
                self._urgent = self._beat(handles) or self._urgent
            if self._urgent or now - last >= linger_s or sum(h.buffered_points() for h in handles) >= limit:
                last = now
                self._urgent = False
                self.cycle()

    @staticmethod
    def _beat(handles: list[FlushedHandle]) -> bool:
        """Queue a ``heartbeat`` event on every open run that asks for them; True when one was queued.

        The stream side marks a rank ``crashed`` when its heartbeats stop without ``run_finished``
        (docs/metrics.md), so a SIGKILLed training process does not leave its run ``running`` forever.
        """
        beat = False
        now, pid = time.time_ns(), os.getpid()
        for handle in handles:
            # a forked child (a DataLoader worker) logs for the run but does not own it: only the owner beats
            owner = getattr(handle, "_owner_pid", pid)
            if handle.entity.type == "run" and handle.config.heartbeat_ms > 0 and not handle.closed and owner == pid:
                with contextlib.suppress(HandleClosedError):
                    handle.add_event(Event("heartbeat", now, {}))
                    beat = True
        return beat

    def cycle(self) -> None:
        """Drain every handle and submit its envelopes (runs on the loop thread, without awaiting)."""
        for handle in self.handles():
            closed = handle.closed
            pipeline = self.pipeline(handle.config)
            entity, rank, world_size = handle.entity, handle.rank, handle.world_size
            if isinstance(handle, JournaledBuffer):
                deliver_journaled(handle, pipeline, entity, rank, world_size, closed=closed)
            else:
                drained = handle.drain()
                if drained:
                    try:
                        envelopes = pipeline.build(entity, rank, world_size, drained)
                        pipeline.submit(envelopes)
                    except Exception:
                        log.exception("trackstream: could not deliver a batch of %s", entity)
            if closed:
                with self._registry:
                    if handle in self._handles:
                        self._handles.remove(handle)

    async def _flush(self, configs: list[ProducerConfig] | None, acknowledged: bool = False) -> None:
        self.cycle()
        targets = [p for c, p in list(self.pipelines.items()) if configs is None or c in configs]
        await asyncio.gather(*(p.wait_settled(acknowledged=acknowledged) for p in targets))

    def flush(
        self, timeout_s: float | None = None, configs: list[ProducerConfig] | None = None, *,
        acknowledged: bool = False,
    ) -> None:
        """Block until everything logged so far was acknowledged by Kafka or written to the spool.

        ``acknowledged=True`` waits for Kafka's acknowledgement even of what went through the spool.
        """
        if self._stopped:
            return
        future = asyncio.run_coroutine_threadsafe(self._flush(configs, acknowledged), self._loop)
        try:
            future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            raise FlushTimeoutError(
                f"flush did not complete within {timeout_s}s; the data stays queued and is still delivered",
            ) from None

    def last_seq(self, config: ProducerConfig, entity: EntityRef) -> tuple[str, int]:
        """``(producer_id, seq)`` of the last envelope built for ``entity`` by ``config``'s pipeline.

        ``seq`` is -1 when none was built yet; the pipeline is created if it does not exist.
        """
        pipeline = self.pipeline(config)
        return pipeline.producer_id, pipeline.last_seq.get(entity, -1)

    async def _shutdown(self, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(self._flush(None, acknowledged=True), timeout_s)
        except TimeoutError:
            for pipeline in self.pipelines.values():
                count = pipeline.spool_unsettled()
                if count:
                    log.warning("trackstream: Kafka did not acknowledge %d batch(es) before exit; they are "
                                "in the spool at %s (run `trackstream sync`)", count, pipeline.spool_path)
        for pipeline in self.pipelines.values():
            if pipeline.spool_backlog():
                log.warning("trackstream: unsent batches remain in the spool at %s (run `trackstream sync`)",
                            pipeline.spool_path)
            await pipeline.close()
        self._stopped = True

    def shutdown(self, timeout_s: float) -> None:
        """Flush with a deadline, spool what Kafka did not acknowledge, close transports, stop the loop."""
        if self._stopped or not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(timeout_s), self._loop)
        try:
            future.result(timeout_s + 10)
        except Exception as exc:
            log.warning("trackstream: shutdown did not complete: %r", exc)
        self._stopped = True
        self.wake()
        self._thread.join(timeout=5)

    def abandon(self) -> None:
        """In a forked child: this flusher's thread does not exist here; drop the parent's resources."""
        self._stopped = True
        for pipeline in self.pipelines.values():
            pipeline.abandon()


_HOST = socket.gethostname()
_SPOOL_LOCK = threading.Lock()


def new_journal(pipeline: Pipeline, entity: EntityRef, rank: int, world_size: int) -> Journal:
    """A new journal for a handle of ``entity`` in ``pipeline``'s spool directory (opened and locked here if need be).

    Raises SpoolError when the directory or the journal files cannot be created.
    """
    with _SPOOL_LOCK:
        if pipeline.spool is None:
            config = pipeline.config
            pipeline.spool = SpoolWriter(
                config.spool_dir, pipeline.producer_id, segment_bytes=config.spool_segment_bytes,
                fsync=config.fsync, fsync_interval_ms=config.fsync_interval_ms,
            )
    identity = {
        "producer_id": pipeline.producer_id, "pid": os.getpid(), "created_ns": time.time_ns(),
        "entity": [entity.project, entity.type, entity.id], "rank": rank, "world_size": world_size, "host": _HOST,
        "max_points": pipeline.config.max_envelope_points, "max_bytes": pipeline.config.max_envelope_bytes,
    }
    return Journal(pipeline.spool.path, uuid.uuid4().hex[:12], identity, producer_base(pipeline, entity))


def producer_base(pipeline: Pipeline, entity: EntityRef) -> Base:
    """Where ``pipeline`` stands for ``entity``: next seq, the entity's next entity_seq and offset, the spool's end.

    The spool's end is read first: every envelope before it was built, so counted, before the counters are read.
    """
    end = pipeline.spool.end() if pipeline.spool is not None else START
    entity_seq, entity_offset = pipeline.builder._entity_counters.get(entity.key(), (0, 0))
    return Base(pipeline.seqs.next, entity_seq, entity_offset, end.segment, end.offset)


def deliver_journaled(handle: JournaledBuffer, pipeline: Pipeline, entity: EntityRef, rank: int, world_size: int,
                      *, closed: bool = False) -> None:
    """One cycle for a journaled handle: drain and swap its journal, spool the batch, settle the journal.

    ``closed``: the handle was closed before this drain, so this was its last one: its journal is deleted.
    """
    try:
        drained, journal_file = handle.drain_journaled(producer_base(pipeline, entity))
    except Exception:  # no journal file to swap to (disk full): nothing was taken, the next cycle tries again
        log.exception("trackstream: could not swap the journal of %s", entity)
        return
    delivered = True
    if drained:
        try:
            envelopes = pipeline.build(entity, rank, world_size, drained)
            pipeline.submit(envelopes)
        except Exception:
            delivered = False
            log.exception("trackstream: could not spool a batch of %s; it stays in the journal for recovery "
                          "(`trackstream sync` or `trackstream local` after this process ends)", entity)
    if journal_file is not None:
        handle.settle_journal(journal_file, producer_base(pipeline, entity) if delivered else None)
    if closed:
        handle.retire_journal()
