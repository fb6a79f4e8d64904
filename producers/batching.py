"""Turn what the flusher drained from one handle into encoded envelopes with strictly increasing ``seq``.

Bounds: at most ``max_points`` points and 1,024 metric groups per envelope, and an encoded envelope larger than
``max_bytes`` is split in two until it fits (an envelope with one point or only events is sent as it is). Lifecycle
events ride in the first envelope of a drain, ``run_finished`` in the last one, so that an ``overwrite`` marker
precedes the points logged after it and a run ends after its last point.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from trackstream.producers.buffer import Drained
from trackstream.schemas import EntityRef, Envelope, Event, MetricBatch, encode
from trackstream.schemas.limits import GROUPS_PER_ENVELOPE_MAX


@dataclass(slots=True)
class Outgoing:
    """One encoded envelope, ready for a transport."""

    key: bytes
    seq: int
    payload: bytes
    points: int


@dataclass(frozen=True, slots=True)
class Origin:
    """Who sends: the producer incarnation and the rank that logged."""

    producer_id: str
    rank: int
    world_size: int
    host: str


class SeqCounter:
    """Strictly increasing ``seq`` of one producer incarnation, starting at 0."""

    __slots__ = ("next",)

    def __init__(self) -> None:
        self.next = 0

    def take(self) -> int:
        """Return the next ``seq`` (0, 1, 2, ...) and advance the counter by one."""
        value = self.next
        self.next += 1
        return value


def _chunks(drained: Drained, max_points: int) -> list[list[MetricBatch]]:
    """Metric groups cut into envelopes of at most ``max_points`` points and 1,024 groups (schemas/limits.py)."""
    chunks: list[list[MetricBatch]] = [[]]
    room = max_points
    for name, (steps, times, values) in drained.series.items():
        start = 0
        while start < len(values):
            if room == 0 or len(chunks[-1]) == GROUPS_PER_ENVELOPE_MAX:
                chunks.append([])
                room = max_points
            end = min(len(values), start + room)
            whole = start == 0 and end == len(values)
            chunks[-1].append(MetricBatch(
                name, "series",
                steps if whole else steps[start:end],
                times if whole else times[start:end],
                values if whole else values[start:end],
            ))
            room -= end - start
            start = end
    for name, (step, time_ns, value) in drained.singles.items():
        if room == 0 or len(chunks[-1]) == GROUPS_PER_ENVELOPE_MAX:
            chunks.append([])
            room = max_points
        chunks[-1].append(MetricBatch(name, "single", [step], [time_ns], [value]))
        room -= 1
    return chunks


def _halves(batches: list[MetricBatch]) -> tuple[list[MetricBatch], list[MetricBatch]]:
    total = sum(len(b) for b in batches)
    left: list[MetricBatch] = []
    right: list[MetricBatch] = []
    room = total // 2
    for batch in batches:
        if room >= len(batch):
            left.append(batch)
            room -= len(batch)
        elif room > 0:
            left.append(MetricBatch(batch.name, batch.kind, batch.steps[:room], batch.times_ns[:room],
                                    batch.values[:room]))
            right.append(MetricBatch(batch.name, batch.kind, batch.steps[room:], batch.times_ns[room:],
                                     batch.values[room:]))
            room = 0
        else:
            right.append(batch)
    return left, right


class EnvelopeBuilder:
    """Builds and encodes the envelopes of one producer incarnation."""

    def __init__(self, seqs: SeqCounter, *, max_points: int, max_bytes: int) -> None:
        self.seqs = seqs
        self.max_points = max_points
        self.max_bytes = max_bytes
        # Per entity key: [next entity_seq, points sent so far]; lets the stream side find lost envelopes.
        self._entity_counters: dict[bytes, list[int]] = {}

    def build(self, entity: EntityRef, origin: Origin, drained: Drained) -> list[Outgoing]:
        """Envelopes for one drained buffer, in the order they must be delivered."""
        key = entity.key()
        chunks = _chunks(drained, self.max_points)
        finished = [e for e in drained.events if e.type == "run_finished"]
        leading = [e for e in drained.events if e.type != "run_finished"]
        out: list[Outgoing] = []
        for index, chunk in enumerate(chunks):
            events = leading if index == 0 else []
            if index == len(chunks) - 1:
                events = events + finished
            if chunk or events:
                self._encode(entity, origin, key, chunk, events=events, out=out)
        return out

    def _encode(
        self, entity: EntityRef, origin: Origin, key: bytes, batches: list[MetricBatch], *,
        events: list[Event], out: list[Outgoing],
    ) -> None:
        counters = self._entity_counters.setdefault(key, [0, 0])
        envelope = Envelope(
            producer_id=origin.producer_id, seq=self.seqs.next, sent_ns=time.time_ns(), entity=entity,
            rank=origin.rank, world_size=origin.world_size, host=origin.host, metrics=batches, events=events,
            entity_seq=counters[0], entity_offset=counters[1],
        )
        payload = encode(envelope)
        points = envelope.point_count()
        if len(payload) > self.max_bytes and points > 1:
            left, right = _halves(batches)
            early = [e for e in events if e.type != "run_finished"]
            late = [e for e in events if e.type == "run_finished"]
            self._encode(entity, origin, key, left, events=early, out=out)
            self._encode(entity, origin, key, right, events=late, out=out)
            return
        counters[0] += 1
        counters[1] += points
        out.append(Outgoing(key, self.seqs.take(), payload, points))
