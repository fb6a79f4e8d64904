"""Kafka transport: aiokafka with idempotence and ``acks="all"``, one in-order batch stream per entity.

aiokafka is imported on first use only, so ``import trackstream`` stays light for spool-only jobs.
Envelopes of one entity are sent as record batches (``send_batch``) one after the other, each awaited
before the next: a failed batch can never be overtaken by a later one of the same entity, so after a
failure the producer can spool the unacknowledged envelopes and replay them in seq order.
Different entities are sent concurrently.

The producer reports an outage itself, once (see :mod:`trackstream.producers.pipeline`); what aiokafka logs on the
flusher's thread is demoted to DEBUG (:mod:`trackstream.schemas.kafka_clients`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from trackstream.producers.config import ProducerConfig
from trackstream.producers.errors import ProducerError
from trackstream.schemas.kafka_clients import FLUSHER_THREAD, pick_compression, quiet_aiokafka, stop_producer_quietly
from trackstream.schemas.settings import diagnose_connect_failure
from trackstream.schemas.topics import Topics

log = logging.getLogger(__name__)

__all__ = ["FLUSHER_THREAD", "KafkaTransport", "TransportError"]


class TransportError(ProducerError):
    """Kafka did not acknowledge a batch (unreachable, timed out, or refused)."""

    retriable = True


class KafkaTransport:
    """Delivers encoded envelopes to ``<prefix>.metrics``, keyed by entity."""

    def __init__(self, config: ProducerConfig) -> None:
        self.config = config
        self.topic = Topics(config.kafka.topic_prefix).metrics
        self._producer: Any = None
        self._partitions: list[int] = []
        self._partition_of: dict[bytes, int] = {}

    def __repr__(self) -> str:
        return f"KafkaTransport(bootstrap={self.config.kafka.bootstrap!r}, topic={self.topic!r})"

    @property
    def started(self) -> bool:
        """True while connected (after :meth:`start`, until :meth:`reset` or :meth:`close`)."""
        return self._producer is not None

    async def start(self) -> None:
        """Connect; raises :class:`TransportError` when the cluster cannot be reached."""
        if self._producer is not None:
            return
        from aiokafka import AIOKafkaProducer

        quiet_aiokafka()
        config = self.config
        try:
            options = config.kafka.client_options()
            producer = AIOKafkaProducer(
                acks="all", enable_idempotence=True,
                compression_type=pick_compression(config.compression), linger_ms=0,
                max_batch_size=config.max_batch_bytes, max_request_size=max(1 << 20, 2 * config.max_batch_bytes),
                request_timeout_ms=config.request_timeout_ms, retry_backoff_ms=100, **options,
            )
        except Exception as exc:  # bad TLS files, bad options: not retriable, and the data goes to the spool
            raise TransportError(f"the producer cannot be set up: {exc}", retriable=False) from exc
        try:
            await producer.start()
            partitions = await producer.partitions_for(self.topic)
            if not partitions:
                raise TransportError(f"topic {self.topic} does not exist and was not auto-created")
        except Exception as exc:
            await stop_producer_quietly(producer)
            problem = await diagnose_connect_failure(config.kafka, exc, "the producer")
            if problem is not None:
                raise TransportError(str(problem), retriable=False) from exc
            raise TransportError(f"Kafka at {config.kafka.bootstrap} is unreachable: {exc!r}") from exc
        self._producer = producer
        self._partitions = sorted(partitions)
        self._partition_of.clear()

    def _partition(self, key: bytes) -> int:
        partition = self._partition_of.get(key)
        if partition is None:
            from aiokafka.partitioner import murmur2

            partition = self._partitions[(murmur2(key) & 0x7FFFFFFF) % len(self._partitions)]
            self._partition_of[key] = partition
        return partition

    async def send(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Deliver ``(key, payload)`` pairs, in order per key; returns once Kafka acknowledged all.

        Raises :class:`TransportError` if any batch failed (some others may have been delivered).
        """
        await self.start()
        per_key: dict[bytes, list[bytes]] = {}
        for key, payload in items:
            per_key.setdefault(key, []).append(payload)
        results = await asyncio.gather(
            *(self._send_key(key, payloads) for key, payloads in per_key.items()), return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self.reset()
            raise TransportError(
                f"Kafka did not acknowledge {len(failures)} batch stream(s): {failures[0]!r}",
            )

    async def _send_key(self, key: bytes, payloads: list[bytes]) -> None:
        producer = self._producer
        partition = self._partition(key)
        batch = producer.create_batch()
        for payload in payloads:
            if batch.append(key=key, value=payload, timestamp=None) is None:
                await self._ship(batch, partition)
                batch = producer.create_batch()
                batch.append(key=key, value=payload, timestamp=None)
        await self._ship(batch, partition)

    async def _ship(self, batch: Any, partition: int) -> None:
        batch.close()
        future = await self._producer.send_batch(batch, self.topic, partition=partition)
        # An idempotent aiokafka producer retries a batch forever while the broker is away: bound the wait
        # so that the round fails and the producer spools instead of stalling.
        done, _ = await asyncio.wait({future}, timeout=self.config.request_timeout_ms / 1000)
        if not done:
            raise TransportError(f"no acknowledgement within {self.config.request_timeout_ms} ms")
        future.result()

    async def reset(self) -> None:
        """Drop the connection after a failure; the next send reconnects."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await stop_producer_quietly(producer)

    async def close(self) -> None:
        """Disconnect, as :meth:`reset`; a later send connects again. Does not raise when the broker is away."""
        await self.reset()
