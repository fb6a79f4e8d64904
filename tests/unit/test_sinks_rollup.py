"""Per-series statistics and block rollups (sinks/rollup.py) against a plain Python computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trackstream.sinks.rollup import Points, series_blocks, series_stats
from trackstream.sinks.schema import BLOCK_STEPS, NO_STEP


def _points(segments: list[tuple[int, list[int], list[float]]], single: set[int] | None = None) -> Points:
    steps = [s for _, st, _ in segments for s in st]
    values = [v for _, _, vs in segments for v in vs]
    return Points(np.array(steps, dtype=np.int64), np.array(steps, dtype=np.int64) * 10**6 + 5,
                  np.array(values, dtype=np.float64), np.array([len(st) for _, st, _ in segments], dtype=np.int64),
                  np.array([sid for sid, _, _ in segments], dtype=np.int64),
                  np.array([i in (single or set()) for i in range(len(segments))]))


def _row(columns: dict, i: int) -> dict:
    return {name: column[i].as_py() for name, column in columns.items()}


def test_stats_of_one_series_across_segments() -> None:
    nan, inf = math.nan, math.inf
    p = _points([(7, [10, 11, 12], [nan, 2.0, -1.0]), (3, [0], [5.0]), (7, [0, 1, 2], [-1.0, inf, nan])])
    sids, columns = series_stats(p)
    assert sids.tolist() == [3, 7]
    row = _row(columns, 1)
    assert row["rows"] == 6
    assert row["finite"] == 4
    assert row["total"] == inf
    assert (row["min_step"], row["max_step"]) == (0, 12)
    assert row["segments"] == [{"1": 0, "2": 12}]
    assert row["first"] == {"1": 0, "2": -1.0}
    assert row["last"] == {"1": 12, "2": -1.0}
    assert row["low"] == {"1": -1.0, "2": 0}  # tie: the smallest step
    assert row["high"] == {"1": inf, "2": -1}
    assert (row["infinite"], row["nan_step"], row["inf_step"]) == (1, 2, 1)  # NaN at steps 10 and 2, inf at 1
    assert _row(columns, 0)["nan_step"] == _row(columns, 0)["inf_step"] == NO_STEP


def test_overlapping_or_unordered_segments_mark_the_series() -> None:
    _, columns = series_stats(_points([(1, [0, 1, 2], [1.0] * 3), (1, [2, 3], [1.0] * 2), (2, [5, 4], [1.0] * 2)]))
    assert [len(s) for s in columns["segments"].to_pylist()] == [2, 2]


def test_all_nan_series_has_no_extremes() -> None:
    _, columns = series_stats(_points([(0, [0, 1], [math.nan, math.nan])]))
    row = _row(columns, 0)
    assert row["finite"] == 0
    assert row["low"]["1"] == math.inf
    assert row["high"]["1"] == -math.inf
    assert (row["rows"] - row["finite"], row["infinite"], row["nan_step"], row["inf_step"]) == (2, 0, 0, NO_STEP)


def test_single_values_latest_by_time_then_step() -> None:
    p = Points(np.array([4, 9, 1], dtype=np.int64), np.array([3, 3, 2], dtype=np.int64) * 10**6,
               np.array([1.0, 2.0, 3.0]), np.array([3], dtype=np.int64), np.array([0], dtype=np.int64),
               np.array([True]))
    assert _row(series_stats(p)[1], 0)["latest"] == {"1": 3, "2": 9, "3": 2.0}
    assert series_blocks(p)[1] == {}


@pytest.mark.parametrize("seed", range(5))
def test_blocks_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    steps = np.sort(rng.choice(np.arange(-1300, 1700), 1000, replace=False))
    values = rng.normal(size=1000)
    values[rng.integers(0, 1000, 60)] = math.nan
    values[rng.integers(0, 1000, 20)] = math.inf  # +inf only: the block totals stay comparable
    cut = int(rng.integers(1, 999))
    p = _points([(0, steps[:cut].tolist(), values[:cut].tolist()), (0, steps[cut:].tolist(), values[cut:].tolist())])
    _sids, columns = series_blocks(p)
    for level, size in BLOCK_STEPS.items():
        _check_level(columns, level, size, steps, values)


def _check_level(columns: dict, level: int, size: int, steps: np.ndarray, values: np.ndarray) -> None:
    got: dict[int, list] = {}
    for i in range(len(columns["block"])):
        row = _row(columns, i)
        if row["level"] == level:
            got.setdefault(row["block"], []).append(row)
    assert set(got) == set(np.unique(steps // size).tolist())
    for block in np.unique(steps // size):
        mask = steps // size == block
        s, v = steps[mask], values[mask]
        rows = got[int(block)]
        assert sum(r["finite"] for r in rows) == np.count_nonzero(~np.isnan(v))
        assert sum(r["nans"] for r in rows) == np.count_nonzero(np.isnan(v))
        assert sum(r["infinite"] for r in rows) == np.count_nonzero(np.isinf(v))
        assert math.isclose(sum(r["total"] for r in rows), float(np.nansum(v)), abs_tol=1e-12)
        assert min(r["min_step"] for r in rows) == s.min()
        assert max(r["max_step"] for r in rows) == s.max()
        finite = v[~np.isnan(v)]
        if finite.size:
            assert min(r["low"] for r in rows) == finite.min()
            assert max(r["high"] for r in rows) == finite.max()
        last = max((r["last"]["1"], r["last"]["2"]) for r in rows)
        assert last[0] == s[-1]
        assert (last[1] == v[-1] or (math.isnan(last[1]) and math.isnan(v[-1])))
