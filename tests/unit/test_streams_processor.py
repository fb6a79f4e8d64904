"""Processor on synthetic envelopes: exact counts and values, write order, cross-rank steps, lifecycle."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from trackstream.schemas import EntityRef, Envelope, Event, MetricBatch, encode, float_to_bits
from trackstream.schemas.processed import point_version
from trackstream.streams import Output, Processor, SourcePosition
from trackstream.streams.synthetic import RunSpec, run_envelopes

RUN = EntityRef(project="p", type="run", id="r1")


def src(offset: int = 0, partition: int = 0) -> SourcePosition:
    return SourcePosition("t.metrics", partition, offset)


def feed(processor: Processor, envelopes: list[Envelope], *, now_ns: int = 0) -> Output:
    out = Output()
    for offset, envelope in enumerate(envelopes):
        out.extend(processor.process(encode(envelope), source=src(offset), now_ns=now_ns))
    return out


def env(seq: int, metrics: list[MetricBatch], *, producer: str = "p0", rank: int = 0, world_size: int = 1,
        events: list[Event] | None = None, entity: EntityRef = RUN) -> Envelope:
    return Envelope(producer_id=producer, seq=seq, sent_ns=seq, entity=entity, rank=rank, world_size=world_size,
                    host=f"h{rank}", metrics=metrics, events=events or [])


def series(name: str, steps: list[int], values: list[float], t0: int = 0) -> MetricBatch:
    return MetricBatch(name=name, kind="series", steps=steps, times_ns=[t0 + s for s in steps], values=values)


def bits(values: list[float]) -> list[int]:
    return [float_to_bits(v) for v in values]


def test_points_pass_through_exactly_out_of_order_and_special() -> None:
    rng = random.Random(7)
    specials = [math.nan, math.inf, -math.inf, -0.0, 5e-324]
    envelopes = []
    order = list(range(600))
    rng.shuffle(order)  # steps arrive out of order across envelopes
    for seq in range(6):
        steps = order[seq * 100:(seq + 1) * 100]
        values = [rng.choice(specials) if rng.random() < 0.05 else rng.gauss(0, 10) for _ in steps]
        envelopes.append(env(seq, [series("loss", steps, values, t0=10_000 * seq)]))
    out = feed(Processor(), envelopes)
    assert out.point_count() == 600
    assert [b.seq for b in out.point_blocks] == list(range(6))
    sent = [v for e in envelopes for v in e.metrics[0].values]
    assert bits([v for b in out.point_blocks for v in b.metrics[0].values]) == bits(sent)
    assert [b.metrics[0].steps for b in out.point_blocks] == [e.metrics[0].steps for e in envelopes]
    assert [b.metrics[0].times_ns for b in out.point_blocks] == [e.metrics[0].times_ns for e in envelopes]


def test_all_nan_metric_passes_through() -> None:
    out = feed(Processor(), [env(0, [series("m", [0, 1], [math.nan, math.nan])])])
    assert out.point_count() == 2
    assert all(math.isnan(v) for v in out.point_blocks[0].metrics[0].values)


def test_producers_get_incarnations_in_the_order_first_seen() -> None:
    """A producer seen later (a resumed run, a restarted rank) writes with a larger point version whatever its seq."""
    processor = Processor()
    out = feed(processor, [env(5, [series("m", [0], [1.0])], producer="first"),
                           env(0, [series("m", [0], [2.0])], producer="second"),
                           env(6, [series("m", [1], [3.0])], producer="first"),
                           env(1, [series("m", [0], [4.0])], producer="second")])
    assert [(b.producer_id, b.incarnation) for b in out.point_blocks] == [
        ("first", 0), ("second", 1), ("first", 0), ("second", 1)]
    versions = [point_version(b.incarnation, b.seq) for b in out.point_blocks]
    assert versions[0] < versions[2] < versions[1] < versions[3]  # "second" orders after "first", whatever the seqs
    restored = Processor()
    restored.restore(processor.snapshot())
    again = feed(restored, [env(7, [series("m", [2], [5.0])], producer="first"),
                            env(0, [series("m", [2], [6.0])], producer="third")])
    assert [b.incarnation for b in again.point_blocks] == [0, 2]  # the order survives a checkpoint


def test_cross_rank_means_exact_and_emitted_when_all_ranks_reported() -> None:
    spec = RunSpec(world_size=4, steps=300, steps_per_envelope=50, nan_every=97)
    envelopes = list(run_envelopes(spec, finish=False))
    processor = Processor()
    first_three = feed(processor, envelopes[:3])  # ranks 0..2 of the first flush
    assert first_three.step_aggregates == []
    out = feed(processor, envelopes[3:])
    aggregates = {(a.metric, a.step): a for a in first_three.step_aggregates + out.step_aggregates}
    assert len(aggregates) == len(spec.metrics) * spec.steps
    assert len(out.step_aggregates) == len(aggregates)  # each step once
    for (metric, step), agg in aggregates.items():
        index = spec.metrics.index(metric)
        values = [v for e in envelopes if e.rank >= 0 for b in e.metrics if b.name == metric
                  for s, v in zip(b.steps, b.values, strict=True) if s == step]
        assert agg.count == 4
        assert agg.world_size == 4
        if any(math.isnan(v) for v in values):
            assert math.isnan(agg.mean)
            assert index == 0
            assert step % 97 == 96
        else:
            assert agg.mean == math.fsum(values) / 4
            assert agg.mean == pytest.approx(float(np.mean(values)), rel=1e-15)
        assert agg.min == np.nanmin(values)
        assert agg.max == np.nanmax(values)


def test_world_size_one_emits_no_step_aggregates() -> None:
    out = feed(Processor(), list(run_envelopes(RunSpec(world_size=1, steps=100))))
    assert out.step_aggregates == []
    assert out.point_count() == 400


def test_step_timeout_emits_partial_then_late_rank_updates() -> None:
    processor = Processor(step_timeout_ms=1_000, step_retention_ms=5_000)
    feed(processor, [env(0, [series("m", [0, 1], [1.0, 3.0])], world_size=2)], now_ns=0)
    assert processor.tick(999_999_999).step_aggregates == []
    partial = processor.tick(1_000_000_000).step_aggregates
    assert [(a.step, a.count, a.mean) for a in partial] == [(0, 1, 1.0), (1, 1, 3.0)]
    assert processor.tick(2_000_000_000).step_aggregates == []
    late = feed(processor, [env(0, [series("m", [0], [2.0])], producer="p1", rank=1, world_size=2)],
                now_ns=2_000_000_000)
    assert [(a.step, a.count, a.mean, a.min, a.max) for a in late.step_aggregates] == [(0, 2, 1.5, 1.0, 2.0)]
    processor.tick(6_000_000_000)  # step 1 leaves retention
    again = feed(processor, [env(1, [series("m", [1], [5.0])], producer="p1", rank=1, world_size=2)],
                 now_ns=6_000_000_000)
    assert again.step_aggregates == []  # a new pending step, waiting for its timeout


def test_lifecycle_status_params_tags_producers() -> None:
    started = Event("run_started", 100, {"name": "first", "params": {"lr": 0.1, "layers": 4}, "tags": {"a": "1"}})
    params = Event("params", 150, {"params": {"batch": 32}})
    tags = Event("tags", 160, {"tags": {"b": "2"}})
    processor = Processor()
    out = feed(processor, [
        env(0, [], events=[started], world_size=2),
        env(0, [series("m", [0], [1.0])], producer="p1", rank=1, world_size=2),
        env(1, [], events=[params, tags], world_size=2),
        env(1, [], producer="p1", rank=1, world_size=2, events=[Event("run_finished", 900, {"status": "failed"})]),
        env(2, [], world_size=2, events=[Event("run_finished", 800, {"status": "completed"})]),
    ])
    state = out.entity_states[-1]
    assert [s.version for s in out.entity_states] == [1, 2, 3, 4, 5]
    assert state.name == "first"
    assert state.status == "failed"
    assert state.params == {"lr": 0.1, "layers": 4, "batch": 32}
    assert state.tags == {"a": "1", "b": "2"}
    assert (state.started_ns, state.ended_ns) == (100, 900)
    assert [(p["producer_id"], p["rank"], p["host"], p["world_size"]) for p in state.producers] == [
        ("p0", 0, "h0", 2), ("p1", 1, "h1", 2)]
    assert out.entity_states[0].params == {"lr": 0.1, "layers": 4}  # records are snapshots


def test_model_entity_starts_active() -> None:
    model = EntityRef(project="p", type="model", id="bert:3")
    out = feed(Processor(), [env(0, [series("acc", [0], [0.9])], entity=model)])
    assert out.entity_states[0].status == "active"
    assert out.point_blocks[0].entity == model


def test_overwrite_bumps_generation() -> None:
    processor = Processor()
    first = feed(processor, [env(0, [series("m", [0, 1, 2], [5.0, 6.0, 7.0]), series("k", [0], [1.0])])])
    assert first.point_blocks[0].generations == [0, 0]
    overwrite = Event("overwrite", 10, {"metric": "m"})
    out = feed(processor, [env(1, [series("m", [0], [1.0])], events=[overwrite])])
    assert out.point_blocks[0].generations == [1]
    empty = feed(processor, [env(2, [], events=[Event("overwrite", 20, {"metric": "k"})])])
    assert empty.entity_states == []
    assert empty.point_blocks == []
    later = feed(processor, [env(3, [series("k", [1], [2.0]), series("m", [1], [2.0])])])
    assert later.point_blocks[0].generations == [1, 1]


def test_resent_seqs_add_nothing() -> None:
    processor = Processor()
    envelopes = list(run_envelopes(RunSpec(world_size=2, steps=200, steps_per_envelope=50)))
    first = feed(processor, envelopes)
    again = feed(processor, envelopes)
    assert again.duplicates == len(envelopes)
    assert again.is_empty()
    assert first.point_count() == 2 * 200 * 4


def test_late_envelope_of_a_producer_is_accepted_once() -> None:
    processor = Processor()
    e0, e1, e2 = (env(seq, [series("m", [seq], [float(seq)])]) for seq in (3, 7, 9))
    out = feed(processor, [e0, e2, e1, e1, e2])
    assert sorted(b.seq for b in out.point_blocks) == [3, 7, 9]
    assert out.duplicates == 2


def test_dlq_record_keeps_source_and_raw() -> None:
    processor = Processor()
    out = processor.process(b"\xff not json", source=SourcePosition("x.metrics", 2, 41), key=b"k")
    (record,) = out.dlq
    assert (record.reason, record.source, record.raw, record.key) == (
        "malformed", SourcePosition("x.metrics", 2, 41), b"\xff not json", b"k")
