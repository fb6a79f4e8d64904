"""One producer incarnation for one configuration: identity, seq, and the delivery state machine.

All methods run on the flusher's event loop thread. Modes:

- spool only (no ``kafka_bootstrap``): every envelope is appended to the spool and is then settled.
- direct: envelopes queue in memory (the outbox) and are sent to Kafka in rounds; a round is settled when
  Kafka acknowledged all of it.
- spooled: envelopes are appended to the spool and a drainer sends the spool to Kafka in order, resuming
  from a saved position. The producer enters it when a round fails (Kafka down at start or mid-run), when
  the unacknowledged bytes pass a quarter of ``max_buffer_bytes``, or always with ``durability="spool"``;
  it returns to direct once the drainer caught up (``durability="memory"`` only).

Order is kept per entity: on entering spooled mode, every unacknowledged envelope (the round in flight,
then the outbox) is written to the spool before any newer one, and the drainer starts only after the round
in flight settled. Envelopes of the failed round that Kafka did receive are sent again: duplicates that
consumers drop by ``(producer_id, seq)``.

``durability="spool"`` and SIGKILL: an envelope is on disk (in the page cache, which survives the process)
before it is sent, and the points not yet drained by the flusher are in the handle's journal
(:mod:`.journaled`), written by the log call itself; ``trackstream sync`` and ``trackstream local`` recover them
(:func:`~trackstream.producers.journal.recover_journals`), so a SIGKILL loses nothing. With ``durability="memory"``
a SIGKILL loses the last ``linger_ms`` of logging plus envelopes Kafka has not acknowledged (at most a quarter of
``max_buffer_bytes``); that tail leaves no hole, so ``lost_points`` does not count it. ``fsync`` only matters
for a machine crash: ``batch`` syncs every flusher cycle, ``interval`` every ``fsync_interval_ms``, ``never``
leaves it to the OS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import uuid
from pathlib import Path

from trackstream.producers.batching import EnvelopeBuilder, Origin, Outgoing, SeqCounter
from trackstream.producers.buffer import Drained
from trackstream.producers.config import ProducerConfig
from trackstream.producers.kafka import KafkaTransport, TransportError
from trackstream.producers.spool import SpoolPosition, SpoolReader, SpoolWriter
from trackstream.schemas import EntityRef, decode

log = logging.getLogger(__name__)

KAFKA_CONSUMER = "kafka"
_DRAIN_BYTES = 8 << 20
_HOST = socket.gethostname()


class Pipeline:
    """Builds, queues and delivers the envelopes of one producer incarnation."""

    def __init__(self, config: ProducerConfig) -> None:
        self.config = config
        self.producer_id = uuid.uuid4().hex
        self.seqs = SeqCounter()
        self.builder = EnvelopeBuilder(
            self.seqs, max_points=config.max_envelope_points, max_bytes=config.max_envelope_bytes,
        )
        self.last_seq: dict[EntityRef, int] = {}
        self.settled = -1
        self.acked = -1
        self._ack_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.spooled = config.durability == "spool"
        self.kafka = None if config.spooled_only else KafkaTransport(config)
        self.spool: SpoolWriter | None = None
        self._reader: SpoolReader | None = None
        self._drain_pos: SpoolPosition | None = None
        self._outbox: list[Outgoing] = []
        self._outbox_bytes = 0
        self._inflight: list[Outgoing] = []
        self._inflight_bytes = 0
        self._inflight_spooled = False
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._work = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._origins: dict[tuple[int, int], Origin] = {}
        # The memory budget (ProducerConfig.max_buffer_bytes): a quarter for encoded envelopes awaiting Kafka,
        # at most an eighth for one chunk of spool drained into Kafka.
        self._direct_limit = config.max_buffer_bytes // 4
        self._outage = False
        self._behind_noted = False
        self._drain_bytes = max(1 << 16, min(_DRAIN_BYTES, config.max_buffer_bytes // 8))

    def __repr__(self) -> str:
        return f"Pipeline(producer_id={self.producer_id!r}, spooled={self.spooled}, config={self.config!r})"

    def build(self, entity: EntityRef, rank: int, world_size: int, drained: Drained) -> list[Outgoing]:
        """Encode one drained buffer of ``entity`` into envelopes (delivery order) and record its last seq.

        Bounded by ``max_envelope_points`` and ``max_envelope_bytes``; nothing is queued (see :meth:`submit`).
        """
        origin = self._origins.get((rank, world_size))
        if origin is None:
            origin = self._origins[(rank, world_size)] = Origin(self.producer_id, rank, world_size, _HOST)
        envelopes = self.builder.build(entity, origin, drained)
        if envelopes:
            self.last_seq[entity] = envelopes[-1].seq
        return envelopes

    def submit(self, envelopes: list[Outgoing]) -> None:
        """Queue envelopes (in seq order) for delivery; never blocks on the network."""
        if not envelopes:
            return
        if self.kafka is None or self.spooled:
            self._spool(envelopes)
        else:
            self._outbox.extend(envelopes)
            self._outbox_bytes += sum(len(e.payload) for e in envelopes)
            if self._outbox_bytes + self._inflight_bytes > self._direct_limit:
                self._note_behind()
                self._enter_spooled(include_inflight=True)
        if self.kafka is not None:
            self._ensure_sender()
            self._work.set()

    def _note_outage(self, exc: Exception) -> None:
        """Say once per outage that Kafka is unreachable and where the data goes meanwhile."""
        if self._outage:
            return
        self._outage = True
        if isinstance(exc, TransportError) and not exc.retriable:
            log.error("trackstream: %s. Meanwhile every point is spooled to %s: nothing is lost, and the spool "
                      "is sent once the setting is fixed (or by `trackstream sync`)", exc, self.spool_path)
            return
        log.warning("trackstream: Kafka at %s is unreachable; spooling to %s - nothing is lost, the spool "
                    "is sent to Kafka when it is back (cause: %s)", self.config.kafka.bootstrap, self.spool_path,
                    exc.__cause__ or exc)

    def _note_recovered(self) -> None:
        if self._outage:
            self._outage = False
            log.warning("trackstream: Kafka at %s is reachable again; sending the spooled data",
                        self.config.kafka.bootstrap)

    def _note_behind(self) -> None:
        """Kafka acknowledges slower than the job logs: said once per producer, then at DEBUG."""
        level = logging.DEBUG if self._behind_noted else logging.WARNING
        self._behind_noted = True
        log.log(level, "trackstream: Kafka acknowledges slower than points are logged; the overflow goes "
                "through the spool at %s", self.spool_path)

    def _ensure_sender(self) -> None:
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_forever())

    def _spool(self, envelopes: list[Outgoing]) -> None:
        if self.spool is None:
            config = self.config
            self.spool = SpoolWriter(
                config.spool_dir, self.producer_id, segment_bytes=config.spool_segment_bytes,
                fsync=config.fsync, fsync_interval_ms=config.fsync_interval_ms,
            )
        self.spool.append((e.key, e.payload) for e in envelopes)
        self._settle(envelopes[-1].seq)

    def _enter_spooled(self, *, include_inflight: bool) -> None:
        pending = [*(self._inflight if include_inflight else ()), *self._outbox]
        self._inflight_spooled = include_inflight and bool(self._inflight)
        self._outbox, self._outbox_bytes = [], 0
        self.spooled = True
        if pending:
            self._spool(pending)

    def _settle(self, seq: int) -> None:
        if seq > self.settled:
            self.settled = seq
            self._waiters = _release(self._waiters, seq)

    def _ack(self, seq: int) -> None:
        self._settle(seq)
        if seq > self.acked:
            self.acked = seq
            self._ack_waiters = _release(self._ack_waiters, seq)

    async def wait_settled(self, target: int | None = None, *, acknowledged: bool = False) -> None:
        """Until every envelope up to ``target`` (default: the last built) was acked or spooled.

        With ``acknowledged=True`` (or without Kafka), until Kafka acknowledged them (spooled is not enough).
        """
        target = self.seqs.next - 1 if target is None else target
        waiting_for_kafka = acknowledged and self.kafka is not None
        if target <= (self.acked if waiting_for_kafka else self.settled):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        (self._ack_waiters if waiting_for_kafka else self._waiters).append((target, future))
        await future

    async def _send_forever(self) -> None:
        backoff_s = self.config.retry_backoff_ms / 1000
        while True:
            if not self.spooled:
                if not self._outbox:
                    self._work.clear()
                    await self._work.wait()
                    continue
                await self._send_round()
                backoff_s = self.config.retry_backoff_ms / 1000
                continue
            try:
                caught_up = await self._drain_spool()
            except Exception as exc:  # a bug must not stop delivery: treat it as an outage, keep the spool
                self._note_outage(_as_transport_error(exc))
                log.debug("trackstream: Kafka unavailable (%s), retrying in %.1fs", exc, backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
                continue
            backoff_s = self.config.retry_backoff_ms / 1000
            self._note_recovered()
            if caught_up:
                if self.config.durability == "memory":
                    log.debug("trackstream: spool drained into Kafka, sending directly again")
                    self.spooled = False
                    continue
                self._work.clear()
                await self._work.wait()

    async def _send_round(self) -> None:
        assert self.kafka is not None
        batch, self._outbox, self._outbox_bytes = self._outbox, [], 0
        self._inflight, self._inflight_bytes = batch, sum(len(e.payload) for e in batch)
        self._inflight_spooled = False
        try:
            await self.kafka.send([(e.key, e.payload) for e in batch])
            ok = True
        except Exception as exc:  # whatever failed, the batch goes to the spool below
            self._note_outage(_as_transport_error(exc))
            ok = False
        self._inflight, self._inflight_bytes = [], 0
        if self._inflight_spooled:
            return
        if ok:
            self._note_recovered()
            self._ack(batch[-1].seq)
            return
        self._inflight = batch
        self._enter_spooled(include_inflight=True)
        self._inflight = []

    async def _drain_spool(self) -> bool:
        """Send the next part of the spool to Kafka; True when nothing was left to send."""
        assert self.kafka is not None
        if self.spool is None:
            return True
        if self._reader is None:
            self._reader = SpoolReader(self.spool.path)
            self._drain_pos = self._reader.load_position(KAFKA_CONSUMER)
        items: list[tuple[bytes, bytes]] = []
        last = None
        for position, key, payload in self._reader.frames(self._drain_pos, max_bytes=self._drain_bytes):
            items.append((key, payload))
            last = position
        if last is None:
            return True
        await self.kafka.send(items)
        self._ack(decode_seq(items[-1][1]))
        self._drain_pos = last
        self._reader.save_position(KAFKA_CONSUMER, last)
        self._reader.delete_consumed(last)
        return False

    def spool_unsettled(self) -> int:
        """At a deadline (exit): put every unacknowledged envelope in the spool; returns how many."""
        pending = len(self._outbox) + (0 if self._inflight_spooled else len(self._inflight))
        if pending and self.kafka is not None and not self.spooled:
            self._enter_spooled(include_inflight=True)
        return pending

    def spool_backlog(self) -> bool:
        """True when the spool holds envelopes not yet sent to Kafka (left for ``trackstream sync``)."""
        return self.kafka is not None and self.spooled and self.spool is not None

    async def close(self) -> None:
        """Stop the sender, close the Kafka transport and the spool writer.

        Removes the spool directory when it was fully drained into Kafka (an OSError there is ignored).
        """
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        if self.kafka is not None:
            await self.kafka.close()
        if self.spool is not None:
            self.spool.close()
            if self.kafka is not None and self._reader is not None and self._drain_pos is not None:
                with contextlib.suppress(OSError):
                    self._reader.remove_if_drained(self._drain_pos)

    def abandon(self) -> None:
        """In a forked child: forget the parent's files and connections without closing them."""
        if self.spool is not None:
            self.spool.abandon()

    @property
    def spool_path(self) -> Path:
        """This incarnation's spool directory: ``<spool_dir>/<producer_id>`` (it may not exist yet)."""
        return Path(self.config.spool_dir) / self.producer_id


def _release(
    waiters: list[tuple[int, asyncio.Future[None]]], seq: int,
) -> list[tuple[int, asyncio.Future[None]]]:
    """Resolve the waiters whose target is reached; return the others."""
    still = []
    for target, future in waiters:
        if target > seq:
            still.append((target, future))
        elif not future.done():
            future.set_result(None)
    return still


_SEQ = re.compile(rb'"seq":(\d+)')


def decode_seq(payload: bytes) -> int:
    """The seq of an encoded envelope, read from its head (the encoder writes it third)."""
    found = _SEQ.search(payload, 0, 200)
    if found is not None:
        return int(found.group(1))
    seq: int = decode(payload).seq
    return seq


def _as_transport_error(exc: Exception) -> TransportError:
    """``exc`` as the TransportError the outage report expects (an unexpected one is not retriable)."""
    if isinstance(exc, TransportError):
        return exc
    return TransportError(f"sending failed unexpectedly: {exc!r}", retriable=False)
