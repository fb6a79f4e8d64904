"""Everything the processor keeps for one entity (run or model): the unit of state, partitioned by entity key.

An :class:`EntityCtx` holds the lifecycle (status, params, tags, times, producers), the dedup tracks per
producer (in the order first seen: their incarnations), the overwrite generation per metric, and the pending
cross-rank steps. It
serializes to plain JSON-able lists/dicts (:meth:`to_wire`) and bytes (:meth:`to_bytes`), so a checkpoint
is "the bytes of every changed entity", and a rebalance moves entities by key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from trackstream.schemas.envelope import EntityRef, Envelope, Event
from trackstream.schemas.limits import NESTING_MAX, nesting_depth
from trackstream.schemas.processed import EntityState
from trackstream.streams import liveness
from trackstream.streams.aggregate import StepTracker
from trackstream.streams.alert_state import RunAlerts
from trackstream.streams.dedup import ProducerTrack

log = logging.getLogger(__name__)

# 2: pending steps as {step: [...]}; 3: dedup tracks carry digests, "conflicting_resends"; 4: no running summaries,
# step trackers as column pieces (streams/step_columns.py). 1 to 3 still load (their summaries are ignored); code
# before 4 cannot read 4.
STATE_VERSION: Final = 4
TERMINAL_RANK: Final = {"completed": 1, "killed": 2, "failed": 3}
INITIAL_STATUS: Final = {"run": "running", "model": "active"}


@dataclass(slots=True)
class EntityCtx:
    """State of one entity; ``state`` is the lifecycle record emitted on change (its ``version`` grows)."""

    state: EntityState
    partition: int
    world_size: int = 1
    tracks: dict[str, ProducerTrack] = field(default_factory=dict)
    generations: dict[str, int] = field(default_factory=dict)
    steps: dict[str, StepTracker] = field(default_factory=dict)
    conflicting_resends: int = 0
    # producer id -> when this processor last saw it (processor clock; not checkpointed: see streams.liveness)
    seen_at: dict[str, int] = field(default_factory=dict)
    # producer id -> incarnation, derived from the order of ``tracks`` (never pruned, kept in order by the state)
    _incarnations: dict[str, int] = field(default_factory=dict)
    # the alert rules' state for this entity (firing or not, running minimum, last point): checkpointed with it
    alerts: RunAlerts = field(default_factory=RunAlerts)
    # when this processor last saw one of its points (processor clock; not checkpointed, like ``seen_at``)
    last_point_ns: int | None = None

    @classmethod
    def new(cls, envelope: Envelope, partition: int) -> EntityCtx:
        """Fresh state for the entity of ``envelope``, first seen on source ``partition``.

        Status starts as ``running`` for a run and ``active`` for a model; no producer is recorded yet.
        """
        entity = envelope.entity
        state = EntityState(entity=entity, name="", status=INITIAL_STATUS.get(entity.type, "running"))
        return cls(state=state, partition=partition)

    def see_producer(self, envelope: Envelope) -> bool:
        """Record a producer on first sight; True when the entity state changed."""
        self.world_size = max(self.world_size, envelope.world_size)
        if envelope.producer_id in self.tracks:
            return False
        self.tracks[envelope.producer_id] = ProducerTrack()
        self.state.producers.append({
            "producer_id": envelope.producer_id, "rank": envelope.rank, "world_size": envelope.world_size,
            "host": envelope.host, "status": "running", "last_seen_ns": envelope.sent_ns,
        })
        if self.state.entity.type == "run":
            liveness.started(self.state, envelope.producer_id)
        return True

    def see_envelope(self, envelope: Envelope, now_ns: int) -> bool:
        """Note that ``envelope``'s producer is alive (at ``now_ns``, processor clock); True when the entity's
        lifecycle changed (a crashed rank came back)."""
        self.seen_at[envelope.producer_id] = now_ns
        return self.state.entity.type == "run" and liveness.seen(self.state, envelope.producer_id, envelope.sent_ns)

    def expire(self, now_ns: int, timeout_ns: int, *, grace: bool = True) -> bool:
        """Mark crashed the ranks silent for ``timeout_ns`` (see :mod:`.liveness`); True when the state changed.

        A producer this processor has not seen itself (state restored from a checkpoint) gets a full timeout from
        now with ``grace``; without it, its own clock alone decides (a reader that has just read every spool).
        """
        if self.state.entity.type != "run":
            return False
        for item in self.state.producers:
            self.seen_at.setdefault(str(item.get("producer_id")), now_ns if grace else int(item.get("last_seen_ns", 0)))
        return liveness.expire(self.state, self.seen_at, now_ns, timeout_ns)

    def lost_points(self) -> int:
        """Points missing from holes in ``entity_seq``, summed over this entity's producers (see :mod:`.dedup`)."""
        return sum(track.lost_points() for track in self.tracks.values())

    def apply_event(self, event: Event, producer_id: str = "") -> None:
        """Apply one lifecycle event sent by ``producer_id`` (an ``overwrite`` starts the metric's next generation).

        A run's status follows from its ranks (:mod:`.liveness`); a model's from its events.
        """
        state, data = self.state, event.data
        per_rank = state.entity.type == "run" and liveness.entry(state, producer_id) is not None
        if event.type == "run_started":
            state.name = data.get("name") or state.name
            state.params.update(_storable(data.get("params", {})))
            state.tags.update(_storable(data.get("tags", {})))
            if state.started_ns == 0 or event.time_ns < state.started_ns:
                state.started_ns = event.time_ns
            if per_rank:
                liveness.started(state, producer_id)
            elif state.status in TERMINAL_RANK and event.time_ns > state.ended_ns:
                state.status, state.ended_ns = "running", 0
        elif event.type == "run_finished":
            status = data.get("status", "completed")
            if per_rank:
                liveness.finished(state, producer_id, status, event.time_ns)
                return
            if TERMINAL_RANK.get(status, 0) >= TERMINAL_RANK.get(state.status, 0):
                state.status = status
            state.ended_ns = max(state.ended_ns, event.time_ns)
        elif event.type == "params":
            state.params.update(_storable(data.get("params", {})))
        elif event.type == "tags":
            state.tags.update(_storable(data.get("tags", {})))
        elif event.type == "overwrite":
            metric = data["metric"]
            self.generations[metric] = self.generations.get(metric, 0) + 1

    def incarnation(self, producer_id: str) -> int:
        """The producer's place among this entity's producers in the order the processor first saw them (0 for the
        first): the write order of its points across incarnations, whatever the hosts' clocks
        (:func:`~trackstream.schemas.processed.point_version`). Raises KeyError for a producer never seen."""
        found = self._incarnations.get(producer_id)
        if found is None:
            self._incarnations = {pid: index for index, pid in enumerate(self.tracks)}
            found = self._incarnations[producer_id]
        return found

    def steps_for(self, metric: str) -> StepTracker:
        """The cross-rank step tracker of the metric's current generation (a fresh, empty one after an overwrite)."""
        generation = self.generations.get(metric, 0)
        tracker = self.steps.get(metric)
        if tracker is None or tracker.generation != generation:
            tracker = self.steps[metric] = StepTracker(generation=generation, pending={}, late={})
        return tracker

    def to_wire(self) -> dict[str, Any]:
        """The whole state as a JSON-ready dict with ``"v": STATE_VERSION`` (4): lifecycle fields, ``tracks`` (in
        the order the producers were first seen), ``generations`` and ``steps`` (only trackers with pending or late
        steps) keyed by metric, ``conflicting_resends`` (envelopes dead-lettered as conflicting re-sends of an
        accepted ``seq``) and, once an alert rule has state for the entity, ``alerts``.
        """
        state = self.state
        return {
            "v": STATE_VERSION,
            "entity": [state.entity.project, state.entity.type, state.entity.id],
            "partition": self.partition,
            "world_size": self.world_size,
            "name": state.name, "status": state.status, "params": state.params, "tags": state.tags,
            "started_ns": state.started_ns, "ended_ns": state.ended_ns, "producers": state.producers,
            "lost_points": state.lost_points, "version": state.version,
            "tracks": {pid: track.to_wire() for pid, track in self.tracks.items()},
            "generations": self.generations,
            "steps": {metric: t.to_wire() for metric, t in self.steps.items() if t.pending or t.late},
            "conflicting_resends": self.conflicting_resends,
            **({"alerts": self.alerts.to_wire()} if self.alerts != RunAlerts() else {}),
        }

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> EntityCtx:
        """Rebuild the state from :meth:`to_wire`'s dict; version-1 step trackers still load, and the running
        summaries of states before version 4 are ignored.

        A missing key raises KeyError; ``v`` is not checked.
        """
        project, entity_type, entity_id = wire["entity"]
        state = EntityState(
            entity=EntityRef(project=project, type=entity_type, id=entity_id), name=wire["name"],
            status=wire["status"], params=wire["params"], tags=wire["tags"], started_ns=wire["started_ns"],
            ended_ns=wire["ended_ns"], producers=wire["producers"], lost_points=wire["lost_points"],
            version=wire["version"],
        )
        return cls(
            state=state, partition=wire["partition"], world_size=wire["world_size"],
            tracks={pid: ProducerTrack.from_wire(t) for pid, t in wire["tracks"].items()},
            generations=dict(wire["generations"]),
            steps={metric: StepTracker.from_wire(t) for metric, t in wire["steps"].items()},
            conflicting_resends=wire.get("conflicting_resends", 0),
            alerts=RunAlerts.from_wire(wire["alerts"]) if "alerts" in wire else RunAlerts(),
        )

    def to_bytes(self) -> bytes:
        """The state as JSON bytes (orjson of :meth:`to_wire`): the value of a checkpoint record."""
        return orjson.dumps(self.to_wire())

    @classmethod
    def from_bytes(cls, raw: bytes) -> EntityCtx:
        """Parse the JSON bytes written by :meth:`to_bytes` (see :meth:`from_wire`)."""
        return cls.from_wire(orjson.loads(raw))


def _storable(mapping: Any) -> dict[str, Any]:
    """Params or tags as they may enter the state: a value nested past the limit is replaced by a note.

    Validation rejects such events already (:mod:`trackstream.schemas.limits`); this keeps the state and the
    entity records encodable whatever reaches here, since orjson writes at most 254 levels.
    """
    if not isinstance(mapping, dict):
        return {}
    kept: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict | list) and nesting_depth(value, limit=NESTING_MAX) >= NESTING_MAX:
            log.warning("%r nests more than %d levels deep: stored as a note", key, NESTING_MAX)
            kept[str(key)] = f"(nested deeper than {NESTING_MAX} levels, not stored)"
        else:
            kept[str(key)] = value
    return kept
