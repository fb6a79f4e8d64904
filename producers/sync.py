"""``trackstream sync``: deliver spools left by dead producers (crashed, killed, offline) to Kafka.

A producer directory is drained only when no process holds its lock; the sync claims the lock itself
while it works, so two syncs never send the same directory at once. Progress is saved as the ``kafka``
consumer position after every acknowledged chunk (the same position a live producer uses for its own
drain), so an interrupted sync resumes where it stopped; a chunk sent twice is deduplicated downstream by
``(producer_id, seq)``. A directory read to its end is removed.

Damaged ranges of a segment are skipped (the reader resynchronises at the next valid frame, logs each range
once and records it beside the segment); a directory holding a damaged segment is kept. With
``discard_damaged`` (``trackstream sync --discard-damaged``), the damaged segments that a consumer has read past
(this sync, a producer's own drain or ``trackstream local``) are deleted, and the directory removed once
nothing unread is left; this needs no Kafka.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trackstream.producers.config import resolve_config
from trackstream.producers.errors import ConfigError
from trackstream.producers.journal import RecoveryReport, recover_journals
from trackstream.producers.kafka import KafkaTransport
from trackstream.producers.pipeline import KAFKA_CONSUMER
from trackstream.producers.spool import START, Damage, Discarded, SpoolPosition, SpoolReader, list_spools
from trackstream.producers.spool_scan import segment_name

log = logging.getLogger(__name__)

_CHUNK_BYTES = 8 << 20


@dataclass(slots=True)
class SyncReport:
    """What one sync did.

    ``damaged``: the damaged ranges met while sending; ``discarded``: the damaged segments deleted (with
    ``discard_damaged``); ``kept_damaged``: the damaged segments left (all of them without ``discard_damaged``,
    else those holding frames no consumer has read yet); ``removed``: the producer directories removed.
    """

    producers: int = 0
    envelopes: int = 0
    bytes: int = 0
    skipped_live: list[str] = field(default_factory=list)
    damaged: list[Damage] = field(default_factory=list)
    discarded: list[Discarded] = field(default_factory=list)
    kept_damaged: list[Path] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    recovered: list[RecoveryReport] = field(default_factory=list)


async def sync_spool_async(spool_dir: str | os.PathLike[str] | None = None, *, discard_damaged: bool = False,
                           **options: Any) -> SyncReport:
    """Async form of :func:`sync_spool`."""
    config = resolve_config(spool_dir=None if spool_dir is None else str(spool_dir), **options)
    if config.kafka.bootstrap is None and not discard_damaged:
        raise ConfigError("sync needs Kafka: pass kafka_bootstrap= or set TRACKSTREAM_KAFKA_BOOTSTRAP")
    report = SyncReport()
    transport = None if config.kafka.bootstrap is None else KafkaTransport(config)
    try:
        for spool in list_spools(config.spool_dir):
            reader = SpoolReader(spool.path)
            if spool.alive or not reader.claim():
                report.skipped_live.append(spool.producer_id)
                continue
            try:
                # A producer killed with durability="spool" left its last points in journals: into the spool first.
                recovered = recover_journals(spool.path, locked=True)
                if recovered.journals:
                    report.recovered.append(recovered)
                # Without Kafka, only a directory with no frame left at all is removed.
                position = START if transport is None else await _drain(reader, transport, report)
                if discard_damaged:
                    _discard(reader, report)
                else:
                    report.kept_damaged += [reader.path / segment_name(i) for i in reader.damaged_segments()]
                if not recovered.kept and reader.remove_if_drained(position):  # kept: a journal it could not read
                    report.removed.append(spool.producer_id)
            finally:
                reader.release()
    finally:
        if transport is not None:
            await transport.close()
    return report


async def _drain(reader: SpoolReader, transport: KafkaTransport, report: SyncReport) -> SpoolPosition:
    position = reader.load_position(KAFKA_CONSUMER)
    report.producers += 1
    while True:
        items: list[tuple[bytes, bytes]] = []
        last = None
        for entry in reader.entries(position, max_bytes=_CHUNK_BYTES):
            if isinstance(entry, Damage):
                report.damaged.append(entry)
            else:
                items.append((entry.key, entry.payload))
            last = entry.after
        if last is None:
            break
        if items:
            await transport.send(items)
        position = last
        reader.save_position(KAFKA_CONSUMER, position)
        reader.delete_consumed(position)
        report.envelopes += len(items)
        report.bytes += sum(len(p) for _, p in items)
    if reader.torn_bytes:
        log.warning("trackstream sync: ignored a torn final frame (%d bytes) in %s", reader.torn_bytes,
                    reader.path)
    return position


def _discard(reader: SpoolReader, report: SyncReport) -> None:
    removed, kept = reader.discard_damaged()
    for gone in removed:
        log.warning("trackstream sync: discarded the damaged segment %s (%d bytes; damaged ranges %s)", gone.path,
                    gone.size, ", ".join(f"[{start}, {end})" for start, end in gone.ranges) or "unknown")
    for path in kept:
        log.warning("trackstream sync: kept the damaged segment %s: it holds frames no consumer has read yet",
                    path)
    report.discarded += removed
    report.kept_damaged += kept


def sync_spool(spool_dir: str | os.PathLike[str] | None = None, *, discard_damaged: bool = False,
               **options: Any) -> SyncReport:
    """Send every dead producer's spool under ``spool_dir`` to Kafka, in order, then remove it.

    ``options`` are producer settings (``kafka_bootstrap``, ``topic_prefix``, security, ...), with the
    usual keyword > environment > default precedence. ``discard_damaged``: also delete the damaged segments
    that have been read past (Kafka is then optional). Raises
    :class:`~trackstream.producers.kafka.TransportError` (retriable) when Kafka does not acknowledge; what was
    acknowledged before stays recorded.
    """
    return asyncio.run(sync_spool_async(spool_dir, discard_damaged=discard_damaged, **options))
