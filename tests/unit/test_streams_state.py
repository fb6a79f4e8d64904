"""Processor state: serialize/restore equivalence, partition moves, per-entity seq loss accounting, messages."""

from __future__ import annotations

import math
from dataclasses import dataclass

import orjson

from trackstream.schemas import EntityRef, Envelope, MetricBatch, encode
from trackstream.schemas.processed import (
    decode_entity_states,
    decode_point_block,
    decode_step_aggregates,
)
from trackstream.schemas.topics import Topics
from trackstream.schemas.validation import Validated
from trackstream.streams import Output, Processor, SourcePosition, output_messages
from trackstream.streams.aggregate import VALUES
from trackstream.streams.dedup import MAX_AHEAD, RECENT_SIZE, ProducerTrack
from trackstream.streams.synthetic import RunSpec, run_envelopes


def feed(processor: Processor, envelopes: list[Envelope], *, partition: int = 0, now_ns: int = 0) -> Output:
    out = Output()
    for offset, envelope in enumerate(envelopes):
        source = SourcePosition("t.metrics", partition, offset)
        out.extend(processor.process(encode(envelope), source=source, now_ns=now_ns))
    return out


def interleaved_runs() -> list[Envelope]:
    a = list(run_envelopes(RunSpec(run_id="a", world_size=3, steps=120, steps_per_envelope=40, nan_every=7)))
    b = list(run_envelopes(RunSpec(run_id="b", world_size=1, steps=120, steps_per_envelope=30)))
    return [e for pair in zip(a, b, strict=False) for e in pair] + a[len(b):] + b[len(a):]


def as_json(out: Output) -> bytes:
    return b"\n".join(m.value for m in output_messages(out, Topics("x")) if b'"time_ns"' not in m.value[:0])


def test_restored_state_continues_exactly_like_the_original() -> None:
    envelopes = interleaved_runs()
    half = len(envelopes) // 2
    original = Processor(step_timeout_ms=1)
    feed(original, envelopes[:half])
    original.tick(0)  # nothing timed out at t=0
    copy = Processor(step_timeout_ms=1)
    copy.restore({key: orjson.loads(orjson.dumps(blob.decode())).encode() for key, blob in original.snapshot().items()})
    assert copy.snapshot() == original.snapshot()
    rest_a, rest_b = feed(original, envelopes[half:]), feed(copy, envelopes[half:])
    assert as_json(rest_a) == as_json(rest_b)
    assert as_json(original.tick(10**12)) == as_json(copy.tick(10**12))
    assert copy.snapshot() == original.snapshot()


def test_replay_against_restored_state_drops_duplicates_and_repeats_outputs() -> None:
    envelopes = interleaved_runs()
    processor = Processor()
    feed(processor, envelopes[:10])
    checkpoint = processor.snapshot()
    after = feed(processor, envelopes[10:20])
    crashed = Processor()
    crashed.restore(checkpoint)
    replay = feed(crashed, envelopes[5:20])  # the replay starts before the checkpoint
    assert replay.duplicates == 5
    assert as_json(replay) == as_json(after)


def test_nonfinite_state_survives_serialization() -> None:
    run = EntityRef("p", "run", "nf")
    envelope = Envelope(producer_id="p0", seq=0, sent_ns=0, entity=run, world_size=2, metrics=[
        MetricBatch("m", "series", [0, 1], [0, 1], [math.inf, math.nan])])
    processor = Processor()
    feed(processor, [envelope])
    copy = Processor()
    copy.restore(processor.snapshot())
    ctx = copy.entity(run)
    assert ctx is not None
    pending = ctx.steps["m"].pending
    assert pending[0][VALUES] == {0: math.inf}
    assert math.isnan(pending[1][VALUES][0])


def test_dirty_entities_and_partition_moves() -> None:
    a, b = RunSpec(run_id="a"), RunSpec(run_id="b")
    processor = Processor()
    feed(processor, list(run_envelopes(a, finish=False))[:1], partition=0)
    feed(processor, list(run_envelopes(b, finish=False))[:1], partition=1)
    dirty = processor.take_dirty()
    assert set(dirty) == {a.entity.key(), b.entity.key()}
    assert processor.take_dirty() == {}
    assert processor.drop_partitions([1]) == 1
    assert processor.entity_keys() == [a.entity.key()]
    table = dict(dirty)
    owner = Processor(loader=table.get)  # a new owner of partition 1 loads lazily from the checkpoint
    out = feed(owner, list(run_envelopes(b, finish=False))[:2], partition=1)
    assert out.duplicates == 1
    assert len(out.point_blocks) == 1
    assert out.point_blocks[0].seq == 1  # the checkpoint's dedup track: only the second envelope is new
    loaded = owner.entity(b.entity)
    assert loaded is not None
    assert loaded.tracks.keys() == orjson.loads(dirty[b.entity.key()])["tracks"].keys()


def test_output_messages_are_keyed_by_entity_and_decode() -> None:
    out = feed(Processor(), list(run_envelopes(RunSpec(run_id="k", world_size=2, steps=10, steps_per_envelope=5))))
    messages = output_messages(out, Topics("x"))
    key = EntityRef("bench", "run", "k").key()
    assert {m.key for m in messages} == {key}
    by_topic: dict[str, list[bytes]] = {}
    for m in messages:
        by_topic.setdefault(m.topic, []).append(m.value)
    assert sum(decode_point_block(v).point_count() for v in by_topic["x.points"]) == 2 * 10 * 4
    assert len([s for v in by_topic["x.steps"] for s in decode_step_aggregates(v)]) == 10 * 4
    assert set(by_topic) == {"x.points", "x.steps", "x.entities"}
    assert decode_entity_states(by_topic["x.entities"][-1])[0].status == "completed"


@dataclass(slots=True)
class SeqEnvelope(Envelope):
    """An envelope with the per-(producer, entity) counters this module asks the wire format for."""

    entity_seq: int | None = None
    entity_offset: int | None = None


def seq_env(seq: int, entity_seq: int, entity_offset: int | None, points: int) -> SeqEnvelope:
    steps = list(range(entity_offset or 0, (entity_offset or 0) + points))
    return SeqEnvelope(producer_id="p0", seq=seq, sent_ns=0, entity=EntityRef("p", "run", "s"),
                       metrics=[MetricBatch("m", "series", steps, steps, [1.0] * points)],
                       entity_seq=entity_seq, entity_offset=entity_offset)


def feed_validated(processor: Processor, envelopes: list[SeqEnvelope]) -> Output:
    out = Output()
    for offset, envelope in enumerate(envelopes):
        processor.process_validated(Validated(envelope=envelope), raw=b"", out=out,
                                    source=SourcePosition("t", 0, offset))
    return out


def test_entity_seq_gaps_count_lost_points_until_filled() -> None:
    processor = Processor()
    # producer seqs jump (other entities in between); entity_seq is contiguous: 0, 1, [2 missing], 3
    out = feed_validated(processor, [seq_env(10, 0, 0, 5), seq_env(14, 1, 5, 5), seq_env(30, 3, 17, 4)])
    assert out.entity_states[-1].lost_points == 7
    late = feed_validated(processor, [seq_env(20, 2, 10, 7), seq_env(20, 2, 10, 7), seq_env(14, 1, 5, 5)])
    assert late.duplicates == 2
    assert late.entity_states[-1].lost_points == 0
    assert late.point_count() == 7


def test_producer_track_gives_up_a_hole_after_max_ahead() -> None:
    track = ProducerTrack()
    assert track.accept(0, 0, 0, 1)
    for es in range(2, MAX_AHEAD + 3):
        assert track.accept(es, es, es, 1)
    assert track.lost_points() == 1
    assert track.lost_final == 1
    assert not track.ahead
    assert not track.accept(1, 1, 1, 1)  # too late: counted as lost, not accepted twice


def test_seq_mode_window() -> None:
    track = ProducerTrack()
    for seq in range(0, 2 * RECENT_SIZE, 2):
        assert track.accept(seq, None, None, 1)
    assert track.accept(RECENT_SIZE + 1, None, None, 1)  # late, inside the window: new
    assert not track.accept(RECENT_SIZE + 1, None, None, 1)
    assert not track.accept(1, None, None, 1)  # older than the window: treated as a duplicate
    assert len(track.recent) == RECENT_SIZE


def test_fast_step_encoder_matches_the_generic_one() -> None:
    from trackstream.schemas.processed import StepAggregate, encode_records
    from trackstream.streams.records import encode_step_aggregates

    run = EntityRef("p", "run", "x")
    records = [StepAggregate(run, "m", 1, 7, math.nan, -math.inf, 2.5, 3, 4, 99),
               StepAggregate(run, "m", 0, 8, -0.0, 1e-300, math.inf, 1, 4, 100)]
    assert encode_step_aggregates(records) == encode_records(records)


def test_states_checkpointed_with_running_summaries_still_load() -> None:
    """States before version 4 carry a running summary per metric: they load, and the summaries are dropped."""
    from trackstream.streams.entity import STATE_VERSION, EntityCtx

    processor = Processor()
    feed(processor, list(run_envelopes(RunSpec(run_id="old", world_size=2, steps=10, steps_per_envelope=5),
                                       finish=False))[:3])
    ((key, blob),) = processor.snapshot().items()
    current = orjson.loads(blob)
    assert current["v"] == STATE_VERSION == 4
    assert "summaries" not in current
    nan_bits, inf_bits = 0x7FF8000000000001, 0xFFF0000000000000
    legacy = current | {"v": 3, "summaries": {
        "loss": ["series", 0, 3, {"$f64": nan_bits}, 2, 30, {"$f64": inf_bits}, 1, 2.5, 0, 10, 4],
        "acc": ["series", 0, 3, [nan_bits], 2, 30, [inf_bits], 1, 2.5, 0, 10, 4]}}  # before the one float codec
    ctx = EntityCtx.from_bytes(orjson.dumps(legacy))
    assert orjson.loads(ctx.to_bytes()) == current
    restored = Processor()
    restored.restore({key: orjson.dumps(legacy)})
    assert restored.snapshot() == processor.snapshot()
