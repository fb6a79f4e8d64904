"""The embedded pipeline: spool -> the processing of :mod:`trackstream.streams` -> :mod:`trackstream.sinks` -> chDB.

The same functions as the Kafka deployment run here in one process: ``trackstream.streams.Processor`` validates,
deduplicates and aggregates the envelopes that producers appended to the spool, and ``trackstream.sinks.Sink`` writes
the
records into a chDB store. Invalid input goes to ``<data_dir>/dlq.jsonl`` (the embedded dead-letter topic).

Exactly once: after every write the runner saves, in one atomic file replace, the spool position reached for
every producer together with the processor's state. A crash between a write and that save replays the same
frames from the same state, which yields the same records, and the sink's idempotent tables absorb them.
Spool segments are deleted only after the save, and a dead producer's directory once it is fully ingested.

``trackstream local`` (:func:`run_local`) owns the store, ingests continuously and serves the query API on
localhost; :func:`catch_up` is one pass, used by readers when no process owns the store.
"""

from __future__ import annotations

import base64
import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from trackstream.producers.spool import START, SpoolPosition, SpoolReader, list_spools
from trackstream.schemas.processed import EntityState, MetricSummary, PointBlock, StepAggregate
from trackstream.schemas.settings import StoreSettings
from trackstream.store import StoreBusyError, spool_dir_from, store_lock

log = logging.getLogger(__name__)

STATE_FILE: Final = "local-state.json"
DLQ_FILE: Final = "dlq.jsonl"
STATE_VERSION: Final = 1


@dataclass
class PassStats:
    """What one ingest pass did."""

    envelopes: int = 0
    points: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    writes: int = 0

    def add(self, other: PassStats) -> None:
        """Add ``other``'s counts (envelopes, points, duplicates, dead letters, writes) to this one."""
        for name in ("envelopes", "points", "duplicates", "dead_letters", "writes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class _Pending:
    point_blocks: list[PointBlock] = field(default_factory=list)
    steps: list[StepAggregate] = field(default_factory=list)
    summaries: dict[tuple[bytes, str, int], MetricSummary] = field(default_factory=dict)
    entity_states: dict[bytes, EntityState] = field(default_factory=dict)
    dlq: list[dict[str, Any]] = field(default_factory=list)
    points: int = 0

    def add(self, out: Any) -> None:
        self.point_blocks.extend(out.point_blocks)
        self.points += sum(block.point_count() for block in out.point_blocks)
        self.steps.extend(out.step_aggregates)
        for summary in out.summaries:  # only the newest summary of a metric matters
            self.summaries[(summary.entity.key(), summary.metric, summary.generation)] = summary
        for state in out.entity_states:
            self.entity_states[state.entity.key()] = state
        self.dlq.extend(record.to_wire() for record in out.dlq)

    def empty(self) -> bool:
        return not (self.point_blocks or self.steps or self.summaries or self.entity_states or self.dlq)


class LocalIngest:
    """Ingests the spool into a chDB store; the caller must hold the store lock."""

    def __init__(self, *, spool_dir: Path, data_dir: Path, step_timeout_ms: int | None = None,
                 max_batch_points: int = 100_000, sink: Any = None) -> None:
        from trackstream.sinks.sink import Sink
        from trackstream.streams.processor import DEFAULT_STEP_TIMEOUT_MS, Processor

        self.spool_dir = spool_dir
        self.data_dir = data_dir
        self.max_batch_points = max_batch_points
        self.sink = sink if sink is not None else Sink.open(data_dir=str(data_dir))
        self.processor = Processor(step_timeout_ms=step_timeout_ms or DEFAULT_STEP_TIMEOUT_MS)
        self.positions: dict[str, SpoolPosition] = {}
        self._entity_blobs: dict[bytes, bytes] = {}
        self._load_state()

    def _load_state(self) -> None:
        path = self.data_dir / STATE_FILE
        if not path.exists():
            return
        state = orjson.loads(path.read_bytes())
        self.positions = {pid: SpoolPosition(*pos) for pid, pos in state["positions"].items()}
        self._entity_blobs = {base64.b64decode(k): base64.b64decode(v) for k, v in state["entities"].items()}
        self.processor.restore(self._entity_blobs)

    def _save_state(self) -> None:
        self._entity_blobs.update(self.processor.take_dirty())  # only entities changed since the last save
        state = {
            "v": STATE_VERSION,
            "positions": {pid: [pos.segment, pos.offset] for pid, pos in self.positions.items()},
            "entities": {base64.b64encode(k).decode(): base64.b64encode(v).decode()
                         for k, v in self._entity_blobs.items()},
        }
        tmp = self.data_dir / (STATE_FILE + ".tmp")
        with open(tmp, "wb") as handle:
            handle.write(orjson.dumps(state))
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.data_dir / STATE_FILE)

    def _write(self, pending: _Pending, stats: PassStats) -> None:
        if pending.empty():
            return
        if pending.dlq:
            with open(self.data_dir / DLQ_FILE, "ab") as handle:
                handle.write(b"".join(orjson.dumps(record) + b"\n" for record in pending.dlq))
                os.fsync(handle.fileno())
            stats.dead_letters += len(pending.dlq)
        self.sink.write(pending.point_blocks, pending.steps, list(pending.summaries.values()),
                        list(pending.entity_states.values()))
        self._save_state()
        stats.points += pending.points
        stats.writes += 1

    def ingest_pass(self, *, now_ns: int | None = None) -> PassStats:
        """Read every spool from its saved position to its current end, process, write, save."""
        from trackstream.streams.records import SourcePosition

        stats = PassStats()
        pending = _Pending()
        readers: list[tuple[str, SpoolReader]] = []
        for spool in list_spools(self.spool_dir):
            producer_id = spool.path.name
            reader = SpoolReader(spool.path)
            readers.append((producer_id, reader))
            position = self.positions.get(producer_id, START)
            for after, key, payload in reader.frames(position):
                source = SourcePosition(f"spool/{producer_id}", position.segment, position.offset)
                out = self.processor.process(payload, source=source, key=key, now_ns=now_ns)
                stats.envelopes += 1
                stats.duplicates += out.duplicates
                pending.add(out)
                position = self.positions[producer_id] = after
                if pending.points >= self.max_batch_points:
                    self._write(pending, stats)
                    pending = _Pending()
        pending.add(self.processor.tick(now_ns))
        self._write(pending, stats)
        self._clean_up(readers)
        return stats

    def _clean_up(self, readers: list[tuple[str, SpoolReader]]) -> None:
        """Delete what is durably ingested: consumed segments, and dead producers read to their end."""
        for producer_id, reader in readers:
            position = self.positions.get(producer_id, START)
            reader.delete_consumed(position)
            if reader.remove_if_drained(position):
                self.positions.pop(producer_id, None)

    def close(self) -> None:
        """Close the sink and its chDB store handle; positions and state saved by the last write stay on disk."""
        self.sink.close()


def _data_path(data_dir: Path | None) -> Path:
    return StoreSettings.resolve(data_dir=data_dir).data_path


def catch_up(*, spool_dir: Path | None = None, data_dir: Path | None = None) -> PassStats:
    """One ingest pass; the caller holds the store lock (see ``trackstream._query.EmbeddedReader``)."""
    ingest = LocalIngest(spool_dir=spool_dir_from(spool_dir), data_dir=_data_path(data_dir))
    try:
        stats = ingest.ingest_pass()
    finally:
        ingest.close()
    if stats.envelopes:
        log.info("caught up with the spool: %d envelopes, %d points", stats.envelopes, stats.points)
    return stats


def run_local(*, spool_dir: Path | None = None, data_dir: Path | None = None, poll_interval_ms: int = 100,
              step_timeout_ms: int | None = None, stop: threading.Event | None = None,
              on_ready: Callable[[str], None] | None = None) -> PassStats:
    """Own the store, ingest the spool continuously and serve the query API until stopped (SIGINT/SIGTERM)."""
    from trackstream.http_api import QueryServer
    from trackstream.sinks.query import QueryService
    from trackstream.streams import tune_gc

    tune_gc()  # a long-lived ingest loop: collections of its many small objects cost ~25% of its CPU
    spool, data = spool_dir_from(spool_dir), _data_path(data_dir)
    stop = stop or _stop_on_signals()
    totals = PassStats()
    with store_lock(data, blocking=False) as acquired:
        if not acquired:
            raise StoreBusyError(f"another process owns the store {data}; stop it or use another --data-dir")
        # Queries run in the server's threads beside the ingest loop: the chDB backend serializes its calls.
        ingest = LocalIngest(spool_dir=spool, data_dir=data, step_timeout_ms=step_timeout_ms)
        service = QueryService(data_dir=str(data))
        server = QueryServer(service, data)
        url = server.start()
        log.info("trackstream local: ingesting %s into %s; queries at %s", spool, data, url)
        if on_ready is not None:
            on_ready(url)
        try:
            while not stop.is_set():
                stats = ingest.ingest_pass()
                totals.add(stats)
                if stats.envelopes:
                    log.info("ingested %d envelopes, %d points (%d duplicates dropped, %d dead letters)",
                             stats.envelopes, stats.points, stats.duplicates, stats.dead_letters)
                stop.wait(poll_interval_ms / 1000)
        finally:
            server.stop()
            service.close()
            ingest.close()
    return totals


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
    return stop
