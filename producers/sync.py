"""``trackstream sync``: deliver spools left by dead producers (crashed, killed, offline) to Kafka.

A producer directory is drained only when no process holds its lock; the sync claims the lock itself
while it works, so two syncs never send the same directory at once. Progress is saved as the ``kafka``
consumer position after every acknowledged chunk (the same position a live producer uses for its own
drain), so an interrupted sync resumes where it stopped; a chunk sent twice is deduplicated downstream by
``(producer_id, seq)``. A directory read to its end is removed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from trackstream.producers.config import resolve_config
from trackstream.producers.errors import ConfigError
from trackstream.producers.kafka import KafkaTransport
from trackstream.producers.pipeline import KAFKA_CONSUMER
from trackstream.producers.spool import SpoolReader, list_spools

log = logging.getLogger(__name__)

_CHUNK_BYTES = 8 << 20


@dataclass(slots=True)
class SyncReport:
    """What one sync did."""

    producers: int = 0
    envelopes: int = 0
    bytes: int = 0
    skipped_live: list[str] = field(default_factory=list)


async def sync_spool_async(spool_dir: str | os.PathLike[str] | None = None, **options: Any) -> SyncReport:
    """Async form of :func:`sync_spool`."""
    config = resolve_config(spool_dir=None if spool_dir is None else str(spool_dir), **options)
    if config.kafka.bootstrap is None:
        raise ConfigError("sync needs Kafka: pass kafka_bootstrap= or set TRACKSTREAM_KAFKA_BOOTSTRAP")
    report = SyncReport()
    transport = KafkaTransport(config)
    try:
        for spool in list_spools(config.spool_dir):
            reader = SpoolReader(spool.path)
            if spool.alive or not reader.claim():
                report.skipped_live.append(spool.producer_id)
                continue
            try:
                await _drain(reader, transport, report)
            finally:
                reader.release()
    finally:
        await transport.close()
    return report


async def _drain(reader: SpoolReader, transport: KafkaTransport, report: SyncReport) -> None:
    position = reader.load_position(KAFKA_CONSUMER)
    report.producers += 1
    while True:
        items: list[tuple[bytes, bytes]] = []
        last = None
        for after, key, payload in reader.frames(position, max_bytes=_CHUNK_BYTES):
            items.append((key, payload))
            last = after
        if last is None:
            break
        await transport.send(items)
        position = last
        reader.save_position(KAFKA_CONSUMER, position)
        reader.delete_consumed(position)
        report.envelopes += len(items)
        report.bytes += sum(len(p) for _, p in items)
    if reader.torn_bytes:
        log.warning("trackstream sync: ignored a torn final frame (%d bytes) in %s", reader.torn_bytes,
                    reader.path)
    reader.remove_if_drained(position)


def sync_spool(spool_dir: str | os.PathLike[str] | None = None, **options: Any) -> SyncReport:
    """Send every dead producer's spool under ``spool_dir`` to Kafka, in order, then remove it.

    ``options`` are producer settings (``kafka_bootstrap``, ``topic_prefix``, security, ...), with the
    usual keyword > environment > default precedence. Raises
    :class:`~trackstream.producers.kafka.TransportError` (retriable) when Kafka does not acknowledge; what was
    acknowledged before stays recorded.
    """
    return asyncio.run(sync_spool_async(spool_dir, **options))
