"""Envelope building: per-entity envelopes bounded by points and bytes, strictly increasing seq, event order."""

from __future__ import annotations

import math

from trackstream.producers.batching import EnvelopeBuilder, Origin, SeqCounter
from trackstream.producers.buffer import Drained
from trackstream.schemas import EntityRef, Event, decode

RUN = EntityRef("proj", "run", "r1")
ORIGIN = Origin("pid0", 1, 4, "host-a")


def drained(points: int, *, keys: int = 1, events: list[Event] | None = None) -> Drained:
    out = Drained(events=list(events or []))
    for k in range(keys):
        out.series[f"m{k}"] = (list(range(points)), [10**18 + i for i in range(points)],
                               [float(i) / 3 for i in range(points)])
    return out


def test_one_small_drain_is_one_envelope_with_provenance() -> None:
    builder = EnvelopeBuilder(SeqCounter(), max_points=1000, max_bytes=1 << 20)
    data = drained(5, keys=2)
    data.singles["acc"] = (0, 123, 0.5)
    data.series["x"] = ([0, 1], [1, 2], [math.nan, -math.inf])
    [out] = builder.build(RUN, ORIGIN, data)
    envelope = decode(out.payload)
    assert (envelope.producer_id, envelope.seq, envelope.rank, envelope.world_size, envelope.host) == (
        "pid0", 0, 1, 4, "host-a")
    assert envelope.entity == RUN
    assert out.key == RUN.key()
    assert out.points == 13
    kinds = {(b.name, b.kind): b for b in envelope.metrics}
    assert kinds["acc", "single"].values == [0.5]
    assert kinds["m1", "series"].steps == [0, 1, 2, 3, 4]
    values = kinds["x", "series"].values
    assert math.isnan(values[0])
    assert values[1] == -math.inf


def test_envelopes_are_split_by_points_and_seqs_increase_across_builds() -> None:
    seqs = SeqCounter()
    builder = EnvelopeBuilder(seqs, max_points=100, max_bytes=1 << 20)
    first = builder.build(RUN, ORIGIN, drained(130, keys=3))
    second = builder.build(EntityRef("proj", "model", "m"), ORIGIN, drained(10))
    assert [o.seq for o in first + second] == list(range(len(first) + len(second)))
    assert all(o.points <= 100 for o in first)
    assert sum(o.points for o in first) == 390
    rebuilt: dict[str, list[int]] = {}
    for out in first:
        for batch in decode(out.payload).metrics:
            rebuilt.setdefault(batch.name, []).extend(batch.steps)
    assert rebuilt == {f"m{k}": list(range(130)) for k in range(3)}


def test_an_envelope_over_the_byte_bound_is_split_until_it_fits() -> None:
    builder = EnvelopeBuilder(SeqCounter(), max_points=100_000, max_bytes=20_000)
    outs = builder.build(RUN, ORIGIN, drained(5000, keys=2))
    assert len(outs) > 1
    assert all(len(o.payload) <= 20_000 for o in outs)
    assert sum(o.points for o in outs) == 10_000
    assert [o.seq for o in outs] == list(range(len(outs)))


def test_events_lead_and_run_finished_comes_last() -> None:
    builder = EnvelopeBuilder(SeqCounter(), max_points=10, max_bytes=1 << 20)
    events = [Event("run_started", 1, {"name": "n", "params": {}, "tags": {}}),
              Event("overwrite", 2, {"metric": "m0"}), Event("run_finished", 3, {"status": "completed"})]
    outs = [decode(o.payload) for o in builder.build(RUN, ORIGIN, drained(25, events=events))]
    assert [e.type for e in outs[0].events] == ["run_started", "overwrite"]
    assert [e.type for e in outs[-1].events] == ["run_finished"]
    assert all(not o.events for o in outs[1:-1])
    only_events = builder.build(RUN, ORIGIN, Drained(events=[events[2]]))
    assert len(only_events) == 1
    assert decode(only_events[0].payload).events[0].data == {"status": "completed"}


def assert_entity_counters(payloads: list[bytes]) -> dict[tuple[str, EntityRef], int]:
    """Per (producer, entity): entity_seq contiguous from 0 in seq order, entity_offset = points sent before.

    Duplicates (same producer and seq) are dropped first; returns the envelope count per (producer, entity).
    """
    unique = {(e.producer_id, e.seq): e for e in map(decode, payloads)}
    tracks: dict[tuple[str, EntityRef], tuple[int, int]] = {}
    for _, envelope in sorted(unique.items()):
        track = (envelope.producer_id, envelope.entity)
        count, points = tracks.get(track, (0, 0))
        assert (envelope.entity_seq, envelope.entity_offset) == (count, points), (
            f"seq {envelope.seq} of {track}: entity_seq/offset {envelope.entity_seq}/{envelope.entity_offset}, "
            f"expected {count}/{points}")
        tracks[track] = (count + 1, points + envelope.point_count())
    return {track: count for track, (count, _) in tracks.items()}


def test_entity_seq_and_offset_count_per_entity_across_builds() -> None:
    builder = EnvelopeBuilder(SeqCounter(), max_points=100, max_bytes=1 << 20)
    model = EntityRef("proj", "model", "m")
    outs = []
    outs += builder.build(RUN, ORIGIN, drained(130, keys=3, events=[Event("run_started", 1, {})]))
    outs += builder.build(model, ORIGIN, drained(10))
    outs += builder.build(RUN, Origin("pid0", 2, 4, "host-b"), drained(7))
    outs += builder.build(RUN, ORIGIN, Drained(events=[Event("run_finished", 2, {"status": "completed"})]))
    outs += builder.build(model, ORIGIN, drained(250))
    counts = assert_entity_counters([o.payload for o in outs])
    assert counts == {("pid0", RUN): 4 + 1 + 1, ("pid0", model): 1 + 3}
    first = decode(outs[0].payload)
    assert (first.entity_seq, first.entity_offset) == (0, 0)


def test_entity_counters_stay_exact_when_an_envelope_is_split_by_bytes() -> None:
    builder = EnvelopeBuilder(SeqCounter(), max_points=100_000, max_bytes=20_000)
    events = [Event("overwrite", 1, {"metric": "m0"}), Event("run_finished", 2, {"status": "killed"})]
    outs = builder.build(RUN, ORIGIN, drained(5000, keys=3, events=events))
    outs += builder.build(RUN, ORIGIN, drained(3001))
    assert len(outs) > 4, "the byte bound split the envelopes recursively"
    assert_entity_counters([o.payload for o in outs])
    offsets = [decode(o.payload).entity_offset for o in outs]
    assert offsets[-1] == 15_000 + 3001 - outs[-1].points
    assert [o.seq for o in outs] == list(range(len(outs)))
