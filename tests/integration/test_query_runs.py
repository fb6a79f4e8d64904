"""``runs()`` metric summaries against a brute-force numpy computation, with the same points delivered twice.

Points re-sent by another producer (a re-import, a new producer incarnation replaying) must not count twice:
``runs()`` reads the summaries from the same exact machinery as compare, the statistics where they provably hold
no duplicate, else ``points FINAL``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import orjson
from test_query_bruteforce import PROJECT, World, backend, close, expected_specials, generate, per_step

from trackstream.api.wire import to_wire
from trackstream.schemas.envelope import EntityRef
from trackstream.schemas.processed import EntityState, PointBlock
from trackstream.sinks import sql as q
from trackstream.sinks.backend import Backend
from trackstream.sinks.query import QueryService
from trackstream.sinks.sink import Sink

__all__ = ["backend"]  # fixture used by the tests below


def resend(w: World, block: PointBlock, producer_id: str) -> PointBlock:
    """The same points (steps, times, values) again, as another producer sends them."""
    again = dataclasses.replace(block, producer_id=producer_id, seq=0)
    for batch, generation in zip(block.metrics, block.generations, strict=True):
        for step, time_ns, value in zip(batch.steps, batch.times_ns, batch.values, strict=True):
            w.points.append((block.entity.id, batch.name, generation, block.rank, step, time_ns // 1_000_000, value,
                             batch.kind))
    w.blocks.append(again)
    return again


def duplicated_world() -> World:
    """The brute-force world (replay without token, re-logged steps, ranks, overwrites) plus re-sent points."""
    w = generate()
    for block in [b for b in w.blocks if b.entity.id in ("run-0", "run-ranks", "run-long")]:
        resend(w, block, f"reimport-{block.producer_id}")  # every series of these runs, singles too
    w.log("run-twice", "loss", list(range(50)), w.curve(50, special=True))
    resend(w, w.blocks[-1], "second-producer")
    resend(w, w.blocks[-1], "third-producer")
    w.log("run-twice", "best", [3], [0.25], kind="single")
    resend(w, w.blocks[-1], "second-producer")
    w.log("run-twice", "acc", [7], [math.nan])  # one point, NaN: min / max NaN, count 1
    return w


def expected_summary(w: World, entity: str, metric: str) -> dict[str, Any]:
    steps, values, single = per_step(w, entity, metric)
    specials = expected_specials(w, entity, metric)
    if single is not None:
        return {"kind": "single", "count": 1, "last": single[6], "last_step": single[4], "min": single[6],
                "max": single[6], **specials}
    finite = values[~np.isnan(values)]
    return {"kind": "series", "count": len(steps), "last": float(values[-1]), "last_step": int(steps[-1]),
            "min": float(finite.min()) if finite.size else math.nan,
            "max": float(finite.max()) if finite.size else math.nan, **specials}


def test_runs_summaries_match_brute_force_after_duplicate_deliveries(backend: Backend) -> None:
    w = duplicated_world()
    sink = Sink(backend)
    for block in w.blocks:
        sink.write([block])  # no deduplication token: a repeated block lands twice in points
    entities = sorted({p[0] for p in w.points})
    sink.write(entity_states=[EntityState(EntityRef(PROJECT, "run", e), e, "running", {"i": i}, {}, i + 1, 0, [], 0, 1)
                              for i, e in enumerate(entities)])
    service = QueryService(backend=backend)

    exact = {(row[0], row[1]): bool(row[4]) for row in backend.query(
        q.fill(q.SUMMARY_STATS, select=""), {"project": PROJECT, "entity_type": "run"})[1]}
    assert {("run-1", "loss"), ("run-1", "best"), ("run-nan", "loss")} <= {pair for pair, ok in exact.items() if ok}
    # a single value written twice is scanned too: which write is the last is a question for points' versions
    scanned = {("run-0", "loss"), ("run-0", "acc"), ("run-0", "best"), ("run-twice", "loss"), ("run-twice", "best"),
               ("run-ranks", "loss"), ("run-special", "loss")}
    assert scanned <= {pair for pair, ok in exact.items() if not ok}  # both paths are exercised

    runs = {r["id"]: r for r in service.runs(PROJECT)}
    assert sorted(runs) == entities
    for entity in entities:
        got = runs[entity]["metrics"]
        assert set(got) == {p[1] for p in w.points if p[0] == entity}, entity
        for metric, summary in got.items():
            want = expected_summary(w, entity, metric)
            assert summary["kind"] == want["kind"], (entity, metric, summary, want)
            assert summary["count"] == want["count"], (entity, metric, summary, want)
            assert summary["last_step"] == want["last_step"], (entity, metric, summary, want)
            for key in ("last", "min", "max"):
                assert close(summary[key], want[key]), (entity, metric, key, summary, want)
            for key in ("nan_count", "inf_count", "first_nan_step", "first_inf_step"):
                assert summary[key] == want[key], (entity, metric, key, summary, want)
        assert runs[entity]["params"] == {"i": entities.index(entity)}
        assert runs[entity]["status"] == "running"
        assert runs[entity]["lost_points"] == 0
    assert runs["run-twice"]["metrics"]["loss"]["count"] == 50
    assert runs["run-twice"]["metrics"]["best"] == {"kind": "single", "count": 1, "last": 0.25, "last_step": 3,
                                                    "min": 0.25, "max": 0.25, "nan_count": 0, "inf_count": 0,
                                                    "first_nan_step": None, "first_inf_step": None}
    assert runs["run-twice"]["metrics"]["acc"]["nan_count"] == 1  # a one-point NaN series

    # Some runs by id, read from the store alone (both summary paths among them): the same rows; an id not stored
    # yet is left out; the live page's entity rows narrow likewise.
    some = ["run-twice", "run-1", "run-special"]
    wire = lambda rows: orjson.dumps(to_wire(rows))  # noqa: E731 - NaN equals itself in its wire form
    assert wire(service.runs(PROJECT, runs=[*some, "run-not-yet"])) == wire([runs[e] for e in entities if e in some])
    assert [r["id"] for r in service.entities(PROJECT, runs=some)] == [e for e in entities if e in some]
    assert service.runs(PROJECT, runs=["run-not-yet"]) == []


def test_runs_summaries_are_unchanged_by_a_resend_from_another_producer(backend: Backend) -> None:
    w = World(seed=3)
    sink = Sink(backend)
    for rank in range(2):
        sink.write([w.log("run-a", "loss", list(range(100)), w.curve(100, special=True), rank=rank)])
    sink.write([w.log("run-a", "lr", [0, 1], [0.1, 0.01], kind="single")])
    sink.write(entity_states=[EntityState(EntityRef(PROJECT, "run", "run-a"), "a", "running", {}, {}, 1, 0, [], 0, 1)])
    service = QueryService(backend=backend)
    before = service.runs(PROJECT)
    for block in list(w.blocks):
        sink.write([resend(w, block, f"again-{block.producer_id}")])
    after = service.runs(PROJECT)
    assert repr(after) == repr(before)
    assert before[0]["metrics"]["loss"]["count"] == 100
