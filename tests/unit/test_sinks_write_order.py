"""Write order in the sink's batches: point versions, the last write of a step repeated within one batch, and the
cross-rank step aggregates stored as points of rank CROSS_RANK (pure: pyarrow tables, no store)."""

from __future__ import annotations

import itertools
import math

import pytest

from trackstream.schemas.envelope import EntityRef, MetricBatch
from trackstream.schemas.processed import PointBlock, StepAggregate, point_version
from trackstream.sinks.batch import PointColumns, points_tables
from trackstream.sinks.schema import CROSS_RANK

RUN = EntityRef("p", "run", "r")
T = 1_700_000_000_000_000_000


def block(steps: list[int], values: list[float], *, seq: int, incarnation: int = 0, rank: int = 0,
          kind: str = "series") -> PointBlock:
    batch = MetricBatch("loss", kind, steps, [T + s for s in steps], values)  # type: ignore[arg-type]
    return PointBlock(RUN, rank, f"producer-{incarnation}", seq, [batch], [0], incarnation=incarnation)


def rows(table: object) -> list[tuple[int, int, float, int]]:
    data = table.to_pydict()  # type: ignore[attr-defined]
    return sorted(zip(data["rank"], data["step"], [v if v is not None else math.nan for v in data["value32"]],
                      data["version"], strict=True))


def test_a_version_grows_with_seq_then_incarnation_whatever_the_clock() -> None:
    assert point_version(0, 5) < point_version(0, 6) < point_version(1, 0) < point_version(2, 0)
    assert point_version(2**30, 2**50) == point_version(2**24 - 1, 2**40 - 1) < 2**64
    tables = points_tables([block([0, 1], [1.0, 2.0], seq=3, incarnation=2)])
    assert set(tables["points"].column("version").to_pylist()) == {point_version(2, 3)}


@pytest.mark.parametrize("later", ["same-block", "next-block"])
def test_a_step_written_twice_in_one_batch_keeps_its_last_write(later: str) -> None:
    if later == "same-block":
        blocks = [block([0, 1, 2, 1], [0.0, 1.0, 2.0, 11.0], seq=0)]
    else:  # the resumed incarnation's clock is an hour behind: the times say older, the version says later
        first = block([0, 1, 2], [0.0, 1.0, 2.0], seq=7)
        second = block([1, 3], [11.0, 3.0], seq=0, incarnation=1)
        second.metrics[0].times_ns[:] = [T - 3_600 * 10**9] * 2
        blocks = [first, second]
    tables = points_tables(blocks)
    got = [(step, value) for _rank, step, value, _version in rows(tables["points"])]
    want = [(0, 0.0), (1, 11.0), (2, 2.0)] + ([(3, 3.0)] if later == "next-block" else [])
    assert got == want
    stats = tables["series_stats"].to_pydict()
    assert stats["rows"] == [len(want)]
    segments = sorted((segment["1"], segment["2"]) for segment in stats["segments"][0])
    disjoint = all(a[1] < b[0] for a, b in itertools.pairwise(segments))
    assert disjoint == (later == "same-block")  # [0, 2] and [1, 3] interleave: readers use FINAL, by version


def test_ordered_batches_are_left_as_they_are() -> None:
    tables = points_tables([block([0, 1, 2], [0.0, 1.0, 2.0], seq=0), block([3, 4], [3.0, 4.0], seq=1)])
    assert [step for _rank, step, _value, _version in rows(tables["points"])] == [0, 1, 2, 3, 4]
    assert tables["points"].column("step").to_pylist() == [0, 1, 2, 3, 4]  # not reordered


def test_step_aggregates_are_points_of_the_cross_rank_with_their_counts() -> None:
    steps = [StepAggregate(RUN, "loss", 0, step, float(step), 0.0, 0.0, count, 4, T + step)
             for step, count in ((0, 4), (1, 4), (2, 3), (2, 4))]  # step 2: emitted on timeout, then with rank 3
    columns = PointColumns()
    columns.segments.add_steps(steps)
    tables = points_tables(columns)
    assert rows(tables["points"]) == [(CROSS_RANK, 0, 0.0, 4), (CROSS_RANK, 1, 1.0, 4), (CROSS_RANK, 2, 2.0, 4)]
    stats = tables["series_stats"].to_pydict()
    assert stats["rank"] == [CROSS_RANK]
    assert stats["rows"] == [3]
    assert stats["covers"] == [12]
    assert tables["ingested"].num_rows == 0


def test_rank_points_cover_themselves() -> None:
    stats = points_tables([block([0, 1, 2], [0.0, 1.0, 2.0], seq=0, rank=3)])["series_stats"].to_pydict()
    assert stats["rows"] == stats["covers"] == [3]
