"""The stream processing itself: validate, deduplicate, aggregate. Plain Python, no faust, no I/O.

The faust worker (:mod:`trackstream.streams.app`) and the embedded local runner both drive a :class:`Processor`::

    processor = Processor(step_timeout_ms=30_000)
    out = processor.process(raw, source=SourcePosition(topic, partition, offset), key=message_key)
    out = processor.tick()                       # periodically: step aggregates whose ranks timed out
    for key, blob in processor.take_dirty().items():
        checkpoint[key] = blob                   # AFTER the outputs are durable (see trackstream.streams.app)

State lives per entity (:class:`~trackstream.streams.entity.EntityCtx`) and moves as bytes by entity key: a worker
that is
assigned a partition installs its entities with :meth:`Processor.restore` (or lazily through ``loader``), and
drops them with :meth:`Processor.drop_partitions` when the partition is revoked.

Outputs are a deterministic function of (state, input): replaying an input against the state from before it
yields identical records, which is what makes at-least-once delivery safe downstream.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from trackstream.schemas.alerts import AlertRule
from trackstream.schemas.envelope import MAX_ENVELOPE_BYTES, EntityRef
from trackstream.schemas.processed import EntityState, PointBlock
from trackstream.schemas.validation import Rejection, Validated, validate
from trackstream.streams.aggregate import Emitted, aggregate_steps
from trackstream.streams.alerts import AlertEvaluator
from trackstream.streams.dedup import digest
from trackstream.streams.entity import EntityCtx
from trackstream.streams.liveness import DEFAULT_HEARTBEAT_TIMEOUT_MS
from trackstream.streams.records import DlqRecord, Output, SourcePosition

log = logging.getLogger(__name__)

DEFAULT_STEP_TIMEOUT_MS: Final = 30_000
DEFAULT_STEP_RETENTION_MS: Final = 600_000
GC_YOUNG_THRESHOLD: Final = 100_000
# Rejected groups of one envelope: the first DLQ record carries the raw envelope; later ones only its size and
# SHA-256 when it is larger than this (1,024 bad groups must not write 1,024 copies of a 4 MiB envelope).
SHARED_RAW_MAX: Final = 64 * 1024
Loader = Callable[[bytes], bytes | None]


def tune_gc(*, young_threshold: int = GC_YOUNG_THRESHOLD) -> None:
    """Make the cyclic garbage collector cheap for a process that mostly runs a :class:`Processor`.

    Processing allocates many short-lived containers per envelope (pending steps, step aggregates, their
    wire dicts) and none of them form reference cycles, yet with the default thresholds the collector
    takes about a quarter of the CPU on a multi-rank run. This freezes the heap built so far (imports,
    the framework: never scanned again) and collects the young generation every ``young_threshold``
    net allocations instead of 700. Process-wide: call it from a worker's or runner's main, not a library.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(young_threshold, 20, 100)


class Processor:
    """Holds per-entity state and turns raw envelopes into processed records.

    ``step_timeout_ms``: how long a step waits for all ``world_size`` ranks before its aggregate is emitted
    with the ranks it has. ``step_retention_ms``: how long a step emitted on timeout stays open for late ranks
    (each late rank re-emits it with a higher count). ``loader``: returns the checkpointed state bytes of an
    entity this processor has not seen yet (or None), e.g. a lookup in the local runner's checkpoint files.
    """

    def __init__(self, *, step_timeout_ms: int = DEFAULT_STEP_TIMEOUT_MS,
                 step_retention_ms: int = DEFAULT_STEP_RETENTION_MS,
                 max_envelope_bytes: int = MAX_ENVELOPE_BYTES, loader: Loader | None = None,
                 heartbeat_timeout_ms: int = DEFAULT_HEARTBEAT_TIMEOUT_MS, restored_grace: bool = True) -> None:
        self.heartbeat_timeout_ns = heartbeat_timeout_ms * 1_000_000
        self.restored_grace = restored_grace
        self._next_sweep_ns = 0
        self.step_timeout_ns = step_timeout_ms * 1_000_000
        self.step_retention_ns = max(step_retention_ms, step_timeout_ms) * 1_000_000
        self.max_envelope_bytes = max_envelope_bytes
        self.loader = loader
        self._entities: dict[bytes, EntityCtx] = {}
        self._dirty: set[bytes] = set()
        self._with_steps: set[bytes] = set()
        self.alerts = AlertEvaluator()

    def set_alert_rules(self, rules: Iterable[AlertRule]) -> None:
        """Evaluate these alert rules from now on (replacing the previous ones; see :mod:`.alerts`). Their
        transitions come out in ``Output.alerts``."""
        self.alerts.set_rules(rules)

    # --- processing -------------------------------------------------------------------------------------

    def process(self, raw: bytes, *, source: SourcePosition, key: bytes | None = None,
                now_ns: int | None = None) -> Output:
        """Process one raw message; never raises for bad input (it goes to ``Output.dlq``).

        A message without a value (a tombstone) is ``malformed``.
        """
        out = Output()
        if not isinstance(raw, bytes):
            raw = b"" if raw is None else bytes(raw)
        try:
            validated = validate(raw, max_bytes=self.max_envelope_bytes)
        except Rejection as exc:
            out.dlq.append(DlqRecord(exc.reason, exc.detail, source, raw, key=key))
            return out
        except Exception as exc:  # a validation bug (or e.g. a RecursionError) must not stop the worker
            log.exception("validation failed at %s", source)
            out.dlq.append(DlqRecord("internal_error", f"validation failed: {type(exc).__name__}: {exc}", source,
                                     raw, key=key))
            return out
        try:
            self.process_validated(validated, raw=raw, source=source, key=key, now_ns=now_ns, out=out)
        except Exception as exc:  # a bug on one envelope must not stop the worker
            log.exception("processing failed at %s", source)
            out.dlq.append(DlqRecord("internal_error", f"{type(exc).__name__}: {exc}", source, raw, key=key))
        return out

    def process_validated(self, validated: Validated, *, raw: bytes, source: SourcePosition,
                          key: bytes | None = None, now_ns: int | None = None,
                          out: Output | None = None) -> Output:
        """Process an envelope that :func:`~trackstream.schemas.validation.validate` accepted (``raw``: for the DLQ).

        An already-seen ``(producer_id, seq)`` is a duplicate (counted in ``Output.duplicates``) when its bytes are
        those accepted before, and a conflicting re-send otherwise: dead-lettered (``conflicting_resend``, its points
        as ``count``), counted in ``Output.conflicts`` and in the entity's ``conflicting_resends``, and not applied.
        """
        out = Output() if out is None else out
        env = validated.envelope
        entity_key = env.entity.key()
        ctx = self._entity(entity_key, validated, source.partition)
        changed = ctx.see_producer(env)
        changed = ctx.see_envelope(env, time.time_ns() if now_ns is None else now_ns) or changed
        sent = env.point_count() + sum(bad.count for bad in validated.bad)
        track = ctx.tracks[env.producer_id]
        fingerprint = digest(raw)
        accepted = track.accept(env.seq, getattr(env, "entity_seq", None), getattr(env, "entity_offset", None), sent,
                                fingerprint)
        self._dirty.add(entity_key)
        if not accepted:
            kept = track.conflict(env.seq, fingerprint)
            if kept is None:
                out.duplicates += 1
            else:
                ctx.conflicting_resends += 1
                out.conflicts += 1
                detail = (f"(producer_id, seq) = ({env.producer_id!r}, {env.seq}) was accepted before with other "
                          f"content (digest {kept}, this one {fingerprint}); {sent} points not applied")
                log.warning("conflicting re-send at %s: %s", source, detail)
                out.dlq.append(DlqRecord("conflicting_resend", detail, source, raw, key=key or entity_key,
                                         count=sent))
            if changed:
                out.entity_states.append(self._bump(ctx))
            return out
        for index, bad in enumerate(validated.bad):
            shared = index > 0 and len(raw) > SHARED_RAW_MAX
            out.dlq.append(DlqRecord(bad.reason, bad.detail, source, raw, key=key or entity_key,
                                     metric=bad.metric, count=bad.count, points=bad.raw,
                                     raw_max=0 if shared else None))
        for event in env.events:
            ctx.apply_event(event, env.producer_id)
            changed = changed or event.type not in ("overwrite", "heartbeat")  # a heartbeat changes only liveness
        lost = ctx.lost_points()
        if lost != ctx.state.lost_points:
            ctx.state.lost_points, changed = lost, True
        self._points(ctx, entity_key, validated, now_ns=now_ns, out=out)
        if changed:
            out.entity_states.append(self._bump(ctx))
        return out

    def _points(self, ctx: EntityCtx, entity_key: bytes, validated: Validated, *, now_ns: int | None,
                out: Output) -> None:
        env = validated.envelope
        entity = env.entity
        generations = []
        cross_rank = ctx.world_size > 1
        now = time.time_ns() if now_ns is None else now_ns
        if env.metrics:
            ctx.last_point_ns = now
        for batch in env.metrics:
            name = batch.name
            if self.alerts.rules_for(entity.project, entity.type, name):
                self.alerts.observe(ctx.alerts, entity, env.rank, name, batch.steps, batch.times_ns, batch.values,
                                    into=out.alerts, now_ns=now)
                self._dirty.add(entity_key)
            generations.append(ctx.generations.get(name, 0))
            if cross_rank and batch.kind == "series":
                tracker = ctx.steps_for(name)
                emit: Emitted = []
                tracker.add(env.rank, batch.steps, batch.times_ns, batch.values, world_size=ctx.world_size,
                            now_ns=now, emit=emit)
                self._with_steps.add(entity_key)
                aggregate_steps(emit, entity, name, generation=tracker.generation, world_size=ctx.world_size,
                                into=out.step_aggregates)
        if env.metrics:
            out.point_blocks.append(PointBlock(entity=entity, rank=env.rank, producer_id=env.producer_id,
                                               seq=env.seq, metrics=env.metrics, generations=generations,
                                               incarnation=ctx.incarnation(env.producer_id)))

    @staticmethod
    def _bump(ctx: EntityCtx) -> EntityState:
        state = ctx.state
        state.version += 1
        return dataclasses.replace(state, params=dict(state.params), tags=dict(state.tags),
                                   producers=[dict(p) for p in state.producers])

    def tick(self, now_ns: int | None = None) -> Output:
        """Emit step aggregates whose ranks did not all report within the timeout; forget stale late steps; mark
        crashed the run ranks silent for ``heartbeat_timeout_ms`` (at most once a second, see :mod:`.liveness`)."""
        now = time.time_ns() if now_ns is None else now_ns
        out = Output()
        if now >= self._next_sweep_ns:  # at most once a second: every entity is looked at
            self._next_sweep_ns = now + 1_000_000_000
            for entity_key, held in self._entities.items():
                if held.expire(now, self.heartbeat_timeout_ns, grace=self.restored_grace):
                    self._dirty.add(entity_key)
                    out.entity_states.append(self._bump(held))
                before = len(out.alerts)
                self.alerts.sweep(held.alerts, held.state.entity, status=held.state.status,
                                  last_point_ns=held.last_point_ns, now_ns=now, into=out.alerts)
                if len(out.alerts) > before:
                    self._dirty.add(entity_key)
        for entity_key in list(self._with_steps):
            ctx = self._entities.get(entity_key)
            if ctx is None:
                self._with_steps.discard(entity_key)
                continue
            for metric, tracker in ctx.steps.items():
                emit: Emitted = []
                if tracker.expire(now, self.step_timeout_ns, self.step_retention_ns, emit):
                    self._dirty.add(entity_key)
                aggregate_steps(emit, ctx.state.entity, metric, generation=tracker.generation,
                                world_size=ctx.world_size, into=out.step_aggregates)
            if not any(t.pending or t.late for t in ctx.steps.values()):
                self._with_steps.discard(entity_key)
        return out

    # --- state ------------------------------------------------------------------------------------------

    def _entity(self, entity_key: bytes, validated: Validated, partition: int) -> EntityCtx:
        ctx = self._entities.get(entity_key)
        if ctx is None:
            blob = self.loader(entity_key) if self.loader is not None else None
            if blob is not None:
                ctx = self._install(entity_key, EntityCtx.from_bytes(blob))
            else:
                ctx = self._entities[entity_key] = EntityCtx.new(validated.envelope, partition)
        ctx.partition = partition
        return ctx

    def _install(self, entity_key: bytes, ctx: EntityCtx) -> EntityCtx:
        self._entities[entity_key] = ctx
        if any(t.pending or t.late for t in ctx.steps.values()):
            self._with_steps.add(entity_key)
        return ctx

    def entity_keys(self) -> list[bytes]:
        """The entity keys (orjson of ``[project, type, id]``) of every entity held in memory."""
        return list(self._entities)

    def entity(self, ref: EntityRef) -> EntityCtx | None:
        """The in-memory state of an entity (for inspection and tests)."""
        return self._entities.get(ref.key())

    def partition_of(self, entity_key: bytes) -> int:
        """The source partition an entity's envelopes arrive on (where its checkpoint belongs)."""
        return self._entities[entity_key].partition

    def take_dirty(self) -> dict[bytes, bytes]:
        """Serialized state of every entity changed since the last call (write it after outputs are durable)."""
        dirty = {key: self._entities[key].to_bytes() for key in self._dirty if key in self._entities}
        self._dirty.clear()
        return dirty

    def snapshot(self) -> dict[bytes, bytes]:
        """Serialized state of every entity held."""
        return {key: ctx.to_bytes() for key, ctx in self._entities.items()}

    def restore(self, states: Mapping[bytes, bytes]) -> None:
        """Install checkpointed entity states (replacing any held for those keys)."""
        for entity_key, blob in states.items():
            self._install(entity_key, EntityCtx.from_bytes(blob))

    def drop_partitions(self, partitions: Iterable[int]) -> int:
        """Forget the entities of revoked partitions (their new owner loads the checkpoint); returns how many."""
        gone = set(partitions)
        keys = [key for key, ctx in self._entities.items() if ctx.partition in gone]
        for key in keys:
            del self._entities[key]
            self._dirty.discard(key)
            self._with_steps.discard(key)
        return len(keys)
