"""Distributed runs through the whole write path (Processor -> Sink -> chDB) against a brute-force oracle.

Every query (compare with each aggregate, runs() summaries, curves at several resolutions, the SDK read-back) must
equal what a straightforward computation over the logged points gives: per (rank, step) the last write in write
order (producer incarnation, then seq; never the clock), per step the mean over the ranks, newest generation only.
The runs cover the paths a read can take:

- pooled: every rank logs every step (also after an overwrite): read from the stream's cross-rank rows and their
  rollups;
- a rank that logs only some steps (the others are emitted on timeout, after the complete ones, so the cross-rank
  rows of two writes interleave), a late rank (its steps were emitted on timeout, then again with it), a replayed
  point block, a re-logged step, a resumed rank on a host whose clock is 5 minutes behind: read by scanning the
  ranks; one rank with a step written twice: read with FINAL.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pytest
from test_query_bruteforce import assert_buckets, backend, close, specials_of

from trackstream.schemas import EntityRef, Envelope, Event, MetricBatch, encode
from trackstream.schemas.processed import EntityState, point_version
from trackstream.sinks import sql as q
from trackstream.sinks.backend import Backend
from trackstream.sinks.errors import QueryError
from trackstream.sinks.query import AGGREGATES, QueryService
from trackstream.sinks.schema import CROSS_RANK, POINTS, migrate
from trackstream.sinks.sink import Sink
from trackstream.streams import Output, Processor, SourcePosition

__all__ = ["backend"]

PROJECT = "ranks"
T0_NS = 1_700_000_000_000_000_000
SECOND_NS = 1_000_000_000
Logged = tuple[int, int, int, float, int]  # generation, rank, step, value, version


@dataclass
class Fleet:
    """Producers of several runs, processed and written the way the embedded runner does, one output at a time."""

    backend: Backend
    processor: Processor = field(default_factory=lambda: Processor(step_timeout_ms=1_000, step_retention_ms=60_000))
    now_ns: int = T0_NS
    offset: int = 0
    seqs: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    incarnations: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    generations: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    points: dict[tuple[str, str], list[Logged]] = field(default_factory=lambda: defaultdict(list))
    outputs: list[Output] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sink = Sink(self.backend)

    def log(self, producer: str, run: str, rank: int, world_size: int, steps: list[int],  # noqa: PLR0917
            values: list[float], *, metric: str = "loss", clock_skew_s: float = 0.0,
            overwrite: bool = False, kind: str = "series") -> Envelope:
        """One envelope of ``producer`` (rank ``rank``) processed now and its output written."""
        seq = self.seqs[producer]
        self.seqs[producer] += 1
        incarnations = self.incarnations[run]
        incarnation = incarnations.setdefault(producer, len(incarnations))
        sent = self.now_ns + int(clock_skew_s * SECOND_NS)
        events = [Event("overwrite", sent, {"metric": metric})] if overwrite else []
        if overwrite:
            self.generations[(run, metric)] += 1
        times = [sent + i * 1_000 for i in range(len(steps))]
        envelope = Envelope(producer_id=producer, seq=seq, sent_ns=sent, entity=EntityRef(PROJECT, "run", run),
                            rank=rank, world_size=world_size, events=events,
                            metrics=[MetricBatch(metric, kind, steps, times, values)])  # type: ignore[arg-type]
        generation = self.generations[(run, metric)]
        self.points[(run, metric)].extend((generation, rank, step, value, point_version(incarnation, seq))
                                          for step, value in zip(steps, values, strict=True))
        self.process(encode(envelope))
        return envelope

    def process(self, raw: bytes) -> None:
        self.now_ns += 10_000_000
        self.offset += 1
        out = self.processor.process(raw, source=SourcePosition("ranks.metrics", 0, self.offset), key=b"k",
                                     now_ns=self.now_ns)
        assert not out.dlq, out.dlq
        self.write(out)

    def tick(self, after_s: float = 0.0) -> None:
        self.now_ns += int(after_s * SECOND_NS)
        self.write(self.processor.tick(now_ns=self.now_ns))

    def write(self, out: Output) -> None:
        self.outputs.append(out)
        self.sink.write(point_blocks=out.point_blocks, steps=out.step_aggregates, entity_states=out.entity_states)


def curve(rank: int, steps: list[int], *, shift: float = 0.0) -> list[float]:
    return [float(np.float32(1.0 / (1 + s) + 0.01 * rank + shift)) for s in steps]


def build(fleet: Fleet) -> None:
    every = list(range(500))
    for start in range(0, 500, 100):  # pooled: four ranks, every step, envelopes of 100 steps in rank order
        for rank in range(4):
            chunk = every[start:start + 100]
            values = curve(rank, chunk)
            if start == 0 and rank == 1:
                values[7] = math.nan
            if start == 0 and rank in (2, 3):
                values[8] = math.inf if rank == 2 else -math.inf  # a step whose mean is NaN
            fleet.log(f"pooled-{rank}", "run-pooled", rank, 4, chunk, values)
    for rank in range(4):  # ragged: rank 2 logs every third step; the other steps time out with three ranks
        steps = every[:300:3] if rank == 2 else every[:300]
        fleet.log(f"ragged-{rank}", "run-ragged", rank, 4, steps, curve(rank, steps))
    fleet.tick(after_s=2)
    for rank in range(3):  # late: rank 3 arrives after its steps were emitted on timeout with three ranks
        fleet.log(f"late-{rank}", "run-late", rank, 4, every[:300], curve(rank, every[:300]))
    fleet.tick(after_s=2)
    fleet.log("late-3", "run-late", 3, 4, every[:300], curve(3, every[:300]))
    for rank in range(2):  # replay: a point block written twice, an envelope processed twice
        fleet.log(f"replay-{rank}", "run-replay", rank, 2, every[:200], curve(rank, every[:200]))
    replayed = next(out for out in reversed(fleet.outputs) if out.point_blocks)
    fleet.write(replayed)
    again = fleet.log("replay-0", "run-replay", 0, 2, every[200:300], curve(0, every[200:300]))
    fleet.process(encode(again))
    for rank in range(2):  # re-logged: rank 1 logs steps 100..149 again, later, with other values
        fleet.log(f"relog-{rank}", "run-relog", rank, 2, every[:200], curve(rank, every[:200]))
    fleet.log("relog-1", "run-relog", 1, 2, every[100:150], curve(1, every[100:150], shift=5.0))
    for rank in range(2):  # overwrite: generation 1 holds only steps 0..99
        fleet.log(f"over-{rank}", "run-over", rank, 2, every[:300], curve(rank, every[:300]))
    fleet.log("over-0", "run-over", 0, 2, every[:100], curve(0, every[:100], shift=1.0), overwrite=True)
    fleet.log("over-1", "run-over", 1, 2, every[:100], curve(1, every[:100], shift=1.0))
    for rank in range(2):  # resume: rank 0 dies at step 149; its new incarnation's clock is 5 minutes behind
        steps = every[:150] if rank == 0 else every[:200]
        fleet.log(f"resume-{rank}", "run-resume", rank, 2, steps, curve(rank, steps))
    fleet.log("resume-0b", "run-resume", 0, 2, every[100:200], curve(0, every[100:200], shift=2.0),
              clock_skew_s=-300)
    fleet.log("solo-a", "run-solo", 0, 1, every[:150], [float(s) for s in every[:150]])  # the example
    fleet.log("solo-b", "run-solo", 0, 1, every[100:200], [float(s + 1000) for s in every[100:200]],
              clock_skew_s=-300)
    fleet.tick(after_s=2)
    fleet.tick(after_s=120)  # past retention: nothing left pending
    states = [EntityState(EntityRef(PROJECT, "run", run), run, "running", {"i": i}, {}, i + 1, 0, [], 0, 10**6)
              for i, run in enumerate(sorted({run for run, _ in fleet.points}))]
    fleet.sink.write(entity_states=states)


RUNS = ("run-late", "run-over", "run-pooled", "run-ragged", "run-relog", "run-replay", "run-resume", "run-solo")


@pytest.fixture
def fleet(backend: Backend) -> Fleet:
    built = Fleet(backend)
    build(built)
    return built


def per_step(fleet: Fleet, run: str, metric: str = "loss") -> tuple[np.ndarray, np.ndarray]:
    """The oracle: newest generation, last write per (rank, step) by version, mean over ranks per step."""
    logged = fleet.points[(run, metric)]
    newest = max(point[0] for point in logged)
    last: dict[tuple[int, int], tuple[int, int, float]] = {}
    for order, (generation, rank, step, value, version) in enumerate(logged):
        if generation == newest and ((rank, step) not in last or (version, order) >= last[(rank, step)][:2]):
            last[(rank, step)] = (version, order, value)
    by_step: dict[int, list[float]] = defaultdict(list)
    for (_rank, step), (_version, _order, value) in last.items():
        by_step[step].append(value)
    steps = np.array(sorted(by_step))
    with np.errstate(invalid="ignore"):
        values = np.array([np.mean(by_step[s]) for s in steps])
    return steps, values


def expected_compare(steps: np.ndarray, values: np.ndarray, agg: str) -> tuple[float, int | None]:
    ok = ~np.isnan(values)
    if agg == "last":
        return float(values[-1]), int(steps[-1])
    if agg == "first":
        return float(values[0]), int(steps[0])
    if agg == "mean":
        return float(np.mean(values[ok])), int(steps[-1])
    if agg == "min":
        return float(np.min(values[ok])), int(steps[ok][np.argmin(values[ok])])
    return float(np.max(values[ok])), int(steps[ok][np.argmax(values[ok])])


def test_each_run_takes_the_read_path_its_history_allows(fleet: Fleet, backend: Backend) -> None:
    rows = backend.query(f"SELECT entity_id, mode, src FROM ({q.view('metric = {metric:String}')})",
                         {"project": PROJECT, "entity_type": "run", "metric": "loss"})[1]
    modes = {run: (mode, src) for run, mode, src in rows}
    assert modes["run-pooled"] == ("clean", CROSS_RANK)
    for run in ("run-ragged", "run-late", "run-replay", "run-relog", "run-resume"):
        assert modes[run][0] == "ranks", (run, modes[run])
    assert modes["run-solo"][0] == "dirty"  # one rank, a step written twice: FINAL by version
    assert modes["run-over"][0] == "clean"  # generation 1 was written once by both ranks: pooled


def test_compare_equals_the_oracle_on_every_path(fleet: Fleet, backend: Backend) -> None:
    for agg in AGGREGATES:
        got = {row["id"]: row for row in QueryService(backend=backend).compare(PROJECT, "loss", agg=agg)}
        assert sorted(got) == list(RUNS)
        for run in RUNS:
            value, step = expected_compare(*per_step(fleet, run), agg)
            assert close(got[run]["value"], value), (run, agg, got[run], value)
            assert got[run]["step"] == step, (run, agg, got[run], step)
            specials = specials_of(*per_step(fleet, run))
            assert {key: got[run][key] for key in specials} == specials, (run, agg, got[run])
    pooled = next(r for r in QueryService(backend=backend).compare(PROJECT, "loss") if r["id"] == "run-pooled")
    assert (pooled["nan_count"], pooled["first_nan_step"]) == (2, 7)  # NaN at 7, inf + -inf at 8


def test_a_step_relogged_after_a_resume_wins_whatever_the_clock(fleet: Fleet, backend: Backend) -> None:
    service = QueryService(backend=backend)
    mean = {row["id"]: row["value"] for row in service.compare(PROJECT, "loss", agg="mean")}
    assert mean["run-solo"] == 599.5  # steps 100..199 from the resumed process: 1100..1199, not 100..149
    series = service.entity_metrics(EntityRef(PROJECT, "run", "run-solo"))["loss"]
    assert isinstance(series, list)
    assert series[120] == 1120.0


def test_runs_summaries_equal_the_oracle(fleet: Fleet, backend: Backend) -> None:
    runs = {run["id"]: run for run in QueryService(backend=backend).runs(PROJECT)}
    for run in RUNS:
        steps, values = per_step(fleet, run)
        finite = values[~np.isnan(values)]
        summary = runs[run]["metrics"]["loss"]
        assert summary["count"] == len(steps), (run, summary)
        assert summary["last_step"] == int(steps[-1])
        assert close(summary["last"], float(values[-1])), (run, summary)
        assert close(summary["min"], float(finite.min())), (run, summary)
        assert close(summary["max"], float(finite.max())), (run, summary)
        specials = specials_of(steps, values)
        assert {key: summary[key] for key in specials} == specials, (run, summary)


def test_curves_equal_the_oracle_on_every_path(fleet: Fleet, backend: Backend) -> None:
    for points in (1, 3, 7, 64, 1000):
        _check_curves(fleet, QueryService(backend=backend).curves(PROJECT, list(RUNS), "loss", points=points), points)


def _check_curves(fleet: Fleet, result: dict[str, list[dict[str, float]]], points: int) -> None:
    for run in RUNS:
        steps, values = per_step(fleet, run)
        assert_buckets(result[run], steps, values, points, run)


def test_the_sdk_read_back_equals_the_oracle(fleet: Fleet, backend: Backend) -> None:
    service = QueryService(backend=backend)
    for run in RUNS:
        steps, values = per_step(fleet, run)
        series = service.entity_metrics(EntityRef(PROJECT, "run", run))["loss"]
        assert isinstance(series, list)
        assert len(series) == len(steps)
        assert all(close(a, float(b)) for a, b in zip(series, values, strict=True)), run


def test_a_store_made_before_write_order_versions_is_refused_with_what_to_do(backend: Backend) -> None:
    old_points = POINTS.replace("ReplacingMergeTree(version)", "ReplacingMergeTree(time)")
    old_points = old_points.replace(",\n    version UInt64 CODEC(Delta, ZSTD(1))", "")
    backend.create_database()
    backend.command(old_points)
    with pytest.raises(QueryError, match=r"older trackstream \(no points.version\).*new store and re-ingest"):
        migrate(backend)


def test_a_single_value_relogged_by_a_resumed_producer_reads_the_same_on_every_path(backend: Backend) -> None:
    fleet = Fleet(backend)
    fleet.log("best-a", "run-best", 0, 1, [3], [1.0], metric="best", kind="single")
    # A later write with an older clock still wins.
    fleet.log("best-b", "run-best", 0, 1, [3], [2.0], metric="best", kind="single", clock_skew_s=-300)
    service = QueryService(backend=backend)
    assert [row["value"] for row in service.compare(PROJECT, "best")] == [2.0]
    assert service.runs(PROJECT)[0]["metrics"]["best"]["last"] == 2.0
    assert service.entity_metrics(EntityRef(PROJECT, "run", "run-best")) == {"best": 2.0}


def test_cross_rank_rows_ahead_of_their_ranks_do_not_hide_the_stored_generation(backend: Backend) -> None:
    """On Kafka the steps topic may be written before the points topic: a new generation that holds only
    cross-rank rows is not the newest one yet."""
    fleet = Fleet(backend)
    steps = list(range(10))
    for rank in range(2):
        fleet.log(f"ahead-{rank}", "run-ahead", rank, 2, steps, curve(rank, steps))
    entity = EntityRef(PROJECT, "run", "run-ahead")
    aggregates = []
    for rank in range(2):  # generation 1, processed but its points not yet stored
        events = [Event("overwrite", fleet.now_ns, {"metric": "loss"})] if rank == 0 else []
        raw = encode(Envelope(producer_id=f"ahead-{rank}", seq=1, sent_ns=fleet.now_ns, entity=entity, rank=rank,
                              world_size=2, events=events, metrics=[MetricBatch("loss", "series", [0], [1], [9.0])]))
        out = fleet.processor.process(raw, source=SourcePosition("ranks.metrics", 0, 900 + rank), now_ns=fleet.now_ns)
        aggregates += out.step_aggregates
    assert [(a.generation, a.step) for a in aggregates] == [(1, 0)]
    fleet.sink.write(steps=aggregates)
    rows = QueryService(backend=backend).compare(PROJECT, "loss", agg="last")
    assert [row["step"] for row in rows] == [9]  # generation 0, until generation 1's rank points are stored
