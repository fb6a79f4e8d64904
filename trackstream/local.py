"""The embedded pipeline: spool -> the processing of :mod:`trackstream.streams` -> :mod:`trackstream.sinks` -> chDB.

The same functions as the Kafka deployment run here in one process: ``trackstream.streams.Processor`` validates,
deduplicates and aggregates the envelopes that producers appended to the spool, and ``trackstream.sinks.Sink`` writes
the
records into a chDB store. Invalid input goes to ``<data_dir>/dlq.jsonl`` (the embedded dead-letter topic), with
its spool position (``"spool": {"producer_id", "segment", "offset"}``): envelopes the processor rejects, damaged
spool ranges (``spool_damaged``, with ``"range"``), torn tails of dead producers (``spool_torn_tail``) and frames
whose records cannot be built or stored (``unstorable``). No spool content stops ingest.

Exactly once: after every write the runner saves, in one atomic file replace, the spool position reached for
every producer together with the processor's state. A crash between a write and that save replays the same
frames from the same state, which yields the same records, and the sink's idempotent tables absorb them.
Spool segments are deleted only after the save (damaged ones are kept for ``trackstream sync --discard-damaged``),
and a dead producer's directory once it is fully ingested and holds no damaged segment.

``trackstream local`` (:func:`trackstream.local_serve.run_local`) owns the store, ingests continuously and serves
the query API on localhost; a read with no owner ingests through :class:`LocalIngest` too
(``trackstream.reader``), and :func:`catch_up` is one pass.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

import orjson

from trackstream.alert_rules import RulesFile
from trackstream.local_dlq import damage_record, dlq_line, spool_position, unstorable_record
from trackstream.producers.journal import recover_journals
from trackstream.producers.spool import START, Damage, Frame, SpoolPosition, SpoolReader, list_spools
from trackstream.schemas.processed import EntityState, PointBlock, StepAggregate
from trackstream.schemas.settings import StoreSettings
from trackstream.spool_claim import claim_spool
from trackstream.store import spool_dir_from

log = logging.getLogger(__name__)

STATE_FILE: Final = "local-state.json"
DLQ_FILE: Final = "dlq.jsonl"
STATE_VERSION: Final = 1


@dataclass
class PassStats:
    """What one ingest pass did: ``dead_letters`` counts every record appended to ``dlq.jsonl``, ``damaged`` the
    damaged spool ranges (and torn tails of dead producers) among them; ``insert_s`` and ``state_s`` the seconds
    spent inserting into the store and saving the state (fsync included)."""

    envelopes: int = 0
    points: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    writes: int = 0
    damaged: int = 0
    insert_s: float = 0.0
    state_s: float = 0.0

    def add(self, other: PassStats) -> None:
        """Add ``other``'s counts to this one."""
        for name in [f.name for f in fields(self)]:
            setattr(self, name, getattr(self, name) + getattr(other, name))


# One spool entry of a batch: producer id, the frame or damaged range, and whether the range is a torn tail.
_Entry = tuple[str, Frame | Damage, bool]


@dataclass
class _Batch:
    point_blocks: list[PointBlock] = field(default_factory=list)
    steps: list[StepAggregate] = field(default_factory=list)
    entity_states: dict[bytes, EntityState] = field(default_factory=dict)
    dlq: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[Any] = field(default_factory=list)  # trackstream.schemas.alerts.Alert, in the order they fired
    entries: list[_Entry] = field(default_factory=list)  # what the batch was made of, to retry one by one
    points: int = 0
    envelopes: int = 0
    duplicates: int = 0
    damaged: int = 0

    def add(self, out: Any, spool: Callable[[], dict[str, Any]] | None = None) -> None:
        self.point_blocks.extend(out.point_blocks)
        self.points += sum(block.point_count() for block in out.point_blocks)
        self.steps.extend(out.step_aggregates)
        for state in out.entity_states:
            self.entity_states[state.entity.key()] = state
        self.dlq.extend({**record.to_wire(), "spool": spool()} if spool else record.to_wire() for record in out.dlq)
        self.alerts.extend(out.alerts)
        self.duplicates += out.duplicates

    def empty(self) -> bool:
        return not (self.point_blocks or self.steps or self.entity_states or self.dlq or self.alerts)


class _Unwritable(Exception):
    """A write failed before anything was durable, at ``stage`` "encode" (building records) or "insert"."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(f"{stage}: {type(cause).__name__}: {cause}")
        self.stage = stage


class LocalIngest:
    """Ingests the spool into a chDB store; the caller must hold the store lock.

    A write that fails is retried entry by entry from the last saved state, so that only the frames that cannot
    be written are set aside (``unstorable``); see :meth:`_isolate`.
    """

    def __init__(self, *, spool_dir: Path, data_dir: Path, step_timeout_ms: int | None = None,
                 max_batch_points: int = 100_000, sink: Any = None, heartbeat_timeout_ms: int | None = None,
                 restored_grace: bool = True) -> None:
        from trackstream.sinks.sink import Sink
        from trackstream.streams.liveness import DEFAULT_HEARTBEAT_TIMEOUT_MS
        from trackstream.streams.processor import DEFAULT_STEP_TIMEOUT_MS

        claim_spool(spool_dir, data_dir)  # before anything is read from it
        self.spool_dir = spool_dir
        self.data_dir = data_dir
        self.max_batch_points = max_batch_points
        self.step_timeout_ms = step_timeout_ms or DEFAULT_STEP_TIMEOUT_MS
        # a run rank silent this long is crashed (streams.liveness); a one-off catch-up trusts the producers' clocks
        self.heartbeat_timeout_ms = heartbeat_timeout_ms or DEFAULT_HEARTBEAT_TIMEOUT_MS
        self.restored_grace = restored_grace
        self.sink = sink if sink is not None else Sink.open(data_dir=str(data_dir))
        self.positions: dict[str, SpoolPosition] = {}
        self._saved_positions: dict[str, SpoolPosition] = {}
        self._entity_blobs: dict[bytes, bytes] = {}
        self._load_state()
        self._rules_file = RulesFile(data_dir)
        self._rules: dict[str, Any] = {}  # rule id -> AlertRule, from <data_dir>/alert_rules.jsonl
        self._notifier: Any = None  # a WebhookNotifier once some rule has a webhook
        self.processor = self._restored_processor()
        self._refresh_rules()

    def _restored_processor(self) -> Any:
        """A processor holding exactly the last saved state."""
        from trackstream.streams.processor import Processor

        processor = Processor(step_timeout_ms=self.step_timeout_ms, heartbeat_timeout_ms=self.heartbeat_timeout_ms,
                              restored_grace=self.restored_grace)
        processor.restore(self._entity_blobs)
        processor.set_alert_rules(self._rules.values())
        return processor

    def _refresh_rules(self) -> None:
        """Take up the store's alert rules when their file changed (trackstream/alert_rules.py)."""
        rules = self._rules_file.poll()
        if rules is None:
            return
        self._rules = {rule.id: rule for rule in rules}
        self.processor.set_alert_rules(rules)
        log.info("trackstream local: %d alert rule(s) in force", len(rules))
        if self._notifier is None and any(rule.webhook for rule in rules):
            from trackstream.streams.webhooks import WebhookNotifier

            self._notifier = WebhookNotifier()

    def _notify(self, alerts: list[Any]) -> None:
        """POST each durable alert to its rule's webhook (in the background; never raises)."""
        for alert in alerts:
            rule = self._rules.get(alert.rule_id)
            if rule is not None and rule.webhook and self._notifier is not None:
                self._notifier.notify(rule, alert)

    def _load_state(self) -> None:
        path = self.data_dir / STATE_FILE
        if not path.exists():
            return
        state = orjson.loads(path.read_bytes())
        self.positions = {pid: SpoolPosition(*pos) for pid, pos in state["positions"].items()}
        self._saved_positions = dict(self.positions)
        self._entity_blobs = {base64.b64decode(k): base64.b64decode(v) for k, v in state["entities"].items()}

    def _save_state(self, blobs: dict[bytes, bytes]) -> None:
        state = {
            "v": STATE_VERSION,
            "positions": {pid: [pos.segment, pos.offset] for pid, pos in self.positions.items()},
            "entities": {base64.b64encode(k).decode(): base64.b64encode(v).decode() for k, v in blobs.items()},
        }
        tmp = self.data_dir / (STATE_FILE + ".tmp")
        with open(tmp, "wb") as handle:
            handle.write(orjson.dumps(state))
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.data_dir / STATE_FILE)

    def _write(self, batch: _Batch, stats: PassStats) -> None:
        """Records to the store, dead letters to ``dlq.jsonl``, then positions and state in one file replace.

        Raises :class:`_Unwritable` when the records or the state cannot be built or inserted; an error while
        appending dead letters or saving the state (the data directory failing) propagates as it is.
        """
        if batch.empty() and self.positions == self._saved_positions:
            return
        try:
            dirty = self.processor.take_dirty()  # only entities changed since the last save
            prepared = self.sink.prepare(batch.point_blocks, batch.steps, list(batch.entity_states.values()),
                                         alerts=batch.alerts)
        except Exception as exc:
            raise _Unwritable("encode", exc) from exc
        lines = b"".join(dlq_line(record) for record in batch.dlq)
        began = time.perf_counter()
        try:
            self.sink.write_prepared(prepared)
        except Exception as exc:
            raise _Unwritable("insert", exc) from exc
        inserted = time.perf_counter()
        if lines:
            with open(self.data_dir / DLQ_FILE, "ab") as handle:
                handle.write(lines)
                os.fsync(handle.fileno())
        blobs = {**self._entity_blobs, **dirty}
        self._save_state(blobs)
        self._entity_blobs, self._saved_positions = blobs, dict(self.positions)
        self._notify(batch.alerts)
        stats.add(PassStats(envelopes=batch.envelopes, points=batch.points, duplicates=batch.duplicates,
                            dead_letters=len(batch.dlq), writes=1, damaged=batch.damaged,
                            insert_s=inserted - began, state_s=time.perf_counter() - inserted))

    def _take(self, batch: _Batch, producer_id: str, entry: Frame | Damage, *, torn: bool = False,
              now_ns: int | None) -> None:
        """Process one spool entry into ``batch`` and move the producer's position past it."""
        from trackstream.streams.records import DlqRecord, Output, SourcePosition

        batch.entries.append((producer_id, entry, torn))
        if isinstance(entry, Frame):
            start = entry.start
            source = SourcePosition(f"spool/{producer_id}", start.segment, start.offset)
            try:
                out = self.processor.process(entry.payload, source=source, key=entry.key, now_ns=now_ns)
            except Exception as exc:  # the processor's own guard missed it: still one frame, not the runner
                log.exception("trackstream local: processing the frame at %s failed", source)
                out = Output(dlq=[DlqRecord("internal_error", f"{type(exc).__name__}: {exc}", source,
                                            entry.payload, key=entry.key)])
            batch.add(out, lambda: spool_position(producer_id, start))
            batch.envelopes += 1
        else:
            batch.dlq.append(damage_record(producer_id, entry, torn=torn))
            batch.damaged += 1
        self.positions[producer_id] = entry.after

    def ingest_pass(self, *, now_ns: int | None = None) -> PassStats:
        """Read every spool from its saved position to its current end, process, write, save."""
        stats = PassStats()
        self._refresh_rules()
        batch = _Batch()
        readers: list[tuple[str, SpoolReader]] = []
        keep: set[str] = set()
        for spool in list_spools(self.spool_dir):
            producer_id = spool.path.name
            if not spool.alive:  # killed with durability="spool": its last points are in journals (one listdir if not)
                recovered = recover_journals(spool.path)
                if recovered.skipped_live:  # it is being recovered by `trackstream sync`: next pass
                    continue
                if recovered.kept:  # a journal it could not read: ingest the rest, keep the directory
                    keep.add(producer_id)
            reader = SpoolReader(spool.path)
            readers.append((producer_id, reader))
            for entry in reader.entries(self.positions.get(producer_id, START)):
                self._take(batch, producer_id, entry, now_ns=now_ns)
                if batch.points >= self.max_batch_points:
                    retry = self._flush(batch, stats, now_ns=now_ns)
                    batch = _Batch()
                    for again in retry:  # refused by the store with no later write yet: retried after the next
                        self._take(batch, *again[:2], torn=again[2], now_ns=now_ns)
            if reader.torn is not None and not spool.alive:  # dead before the read began: a crash's torn tail
                log.warning("trackstream local: ignored the torn final frame (%d bytes) of the dead producer %s",
                            reader.torn.size, spool.path)
                self._take(batch, producer_id, reader.torn, torn=True, now_ns=now_ns)
        self._flush(batch, stats, now_ns=now_ns, tick=True)
        self._clean_up([(pid, reader) for pid, reader in readers if pid not in keep])
        return stats

    def _flush(self, batch: _Batch, stats: PassStats, *, now_ns: int | None, tick: bool = False) -> list[_Entry]:
        """Write ``batch``; returns the entries left unwritten, to retry (see :meth:`_isolate`)."""
        if tick:
            batch.add(self.processor.tick(now_ns))
        try:
            self._write(batch, stats)
        except _Unwritable as exc:
            log.warning("trackstream local: a write of %d spool entries failed (%s); retrying them one by one",
                        len(batch.entries), exc)
            return self._isolate(batch.entries, stats, now_ns=now_ns, tick=tick)
        return []

    def _rollback(self, deferred: list[tuple[str, Frame | Damage, dict[str, Any]]]) -> None:
        """Back to the last saved state, then past the entries whose dead letters wait for the next write."""
        self.processor = self._restored_processor()
        self.positions = dict(self._saved_positions)
        for producer_id, entry, _record in deferred:
            self.positions[producer_id] = entry.after

    def _isolate(self, entries: list[_Entry], stats: PassStats, *, now_ns: int | None, tick: bool) -> list[_Entry]:
        """Write ``entries`` one by one from the last saved state; set aside each one that cannot be written.

        A set-aside entry's dead letter goes out with the next write. A frame whose records the store refuses
        is set aside only once the store has taken a later write: a second refusal in a row means the store is
        failing, and its error propagates. A refusal with no later write is not consumed: it and what follows
        it are returned, to be retried.
        """
        self._rollback([])
        deferred: list[tuple[str, Frame | Damage, dict[str, Any]]] = []
        refused_at: int | None = None  # index in deferred of a frame the store refused, not vouched for yet
        for producer_id, entry, torn in entries:
            single = _Batch(dlq=[record for _, _, record in deferred])
            self._take(single, producer_id, entry, torn=torn, now_ns=now_ns)
            try:
                self._write(single, stats)
            except _Unwritable as exc:
                if exc.stage == "insert" and refused_at is not None:
                    self._rollback([])
                    raise (exc.__cause__ or exc) from None
                if exc.stage == "insert":
                    refused_at = len(deferred)
                log.warning("trackstream local: set aside the frame of %s at %s: %s", producer_id,
                            getattr(entry, "start", entry), exc)
                deferred.append((producer_id, entry, unstorable_record(producer_id, entry, exc)))
                self._rollback(deferred)
                continue
            deferred, refused_at = [], None
        retry: list[_Entry] = []
        if refused_at is not None:
            log.warning("trackstream local: the store refused the last write; it will be retried")
            retry = [(producer_id, entry, False) for producer_id, entry, _ in deferred[refused_at:]]
            deferred = deferred[:refused_at]
            self._rollback(deferred)
        last = _Batch(dlq=[record for _, _, record in deferred])
        if tick:
            last.add(self.processor.tick(now_ns))
        try:
            self._write(last, stats)
        except _Unwritable as exc:  # timed-out step aggregates: they stay pending and are retried next pass
            log.warning("trackstream local: writing timed-out step aggregates failed (%s)", exc)
            self._rollback(deferred)
            self._write(_Batch(dlq=[record for _, _, record in deferred]), stats)
        return retry

    def _clean_up(self, readers: list[tuple[str, SpoolReader]]) -> None:
        """Delete what is durably ingested: consumed segments, and dead producers read to their end."""
        for producer_id, reader in readers:
            position = self.positions.get(producer_id, START)
            reader.delete_consumed(position)
            if reader.remove_if_drained(position):
                self.positions.pop(producer_id, None)
        listed = {producer_id for producer_id, _ in readers}
        for producer_id in [pid for pid in self.positions if pid not in listed]:
            if not (self.spool_dir / producer_id).exists():  # removed by `trackstream sync --discard-damaged`
                self.positions.pop(producer_id)

    def close(self) -> None:
        """Deliver the webhooks still queued (up to 10 s), close the sink and its chDB store handle; positions and
        state saved by the last write stay on disk."""
        if self._notifier is not None:
            self._notifier.close(timeout_s=10.0)
        self.sink.close()


def data_path(data_dir: Path | None) -> Path:
    """The embedded store's directory: ``data_dir``, else ``$TRACKSTREAM_DATA_DIR``, else the default."""
    return StoreSettings.resolve(data_dir=data_dir).data_path


def catch_up(*, spool_dir: Path | None = None, data_dir: Path | None = None) -> PassStats:
    """One ingest pass; the caller holds the store lock. Raises
    :class:`~trackstream.spool_claim.SpoolClaimed` when the spool feeds another store."""
    ingest = LocalIngest(spool_dir=spool_dir_from(spool_dir), data_dir=data_path(data_dir), restored_grace=False)
    try:
        stats = ingest.ingest_pass()
    finally:
        ingest.close()
    if stats.envelopes:
        log.info("caught up with the spool: %d envelopes, %d points", stats.envelopes, stats.points)
    return stats
