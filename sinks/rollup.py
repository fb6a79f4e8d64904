"""Per-series statistics and step-block rollups, computed with numpy while a batch of points is built.

Both are inserted next to ``points`` (same deduplication key, own token per table) into the aggregating tables
``series_stats`` and ``series_blocks`` (:mod:`trackstream.sinks.schema`), so compare and long curves read thousands
of rows instead of scanning points. They are exact only for a series without duplicate rows; ``segments`` records
the step ranges each write covered, one per series and write (twice when a write's own segments of a series still
overlap or are not ordered by step; a step repeated within one write was already reduced to its last write by
``sinks.batch.points_tables``), so "segments pairwise disjoint" proves a series clean and readers fall back to
scanning ``points FINAL`` otherwise (sinks/sql.py). ``covers`` counts the rank points the rows stand for, which
proves a series' cross-rank rows complete.

Work per point is a handful of vectorised passes (``reduceat`` over the contiguous segments of one metric batch);
everything else runs per segment or per series.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trackstream.sinks.errors import require
from trackstream.sinks.schema import BLOCK_STEPS, NO_STEP

if TYPE_CHECKING:
    import pyarrow as pa

NS_PER_MS = 1_000_000
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Points:
    """Flat point columns of one batch, in segments (one per metric batch) that share one series key."""

    steps: Any  # int64[n]
    times_ns: Any  # int64[n]
    values: Any  # float64[n]
    lengths: Any  # int64[segments]
    series: Any  # int64[segments]: a series id per segment (same id = same entity, metric, generation, rank)
    single: Any  # bool[segments]: kind == single
    covers: Any = None  # int64[n]: rank points each point stands for (a cross-rank mean: its count); None = 1 each


def _first_per_segment(hit: Any, starts: Any, segments: int) -> Any:
    """Index of the first True of ``hit`` in each segment (-1 where none)."""
    np = require("numpy")
    idx = np.flatnonzero(hit)
    out = np.full(segments, -1, dtype=np.int64)
    if idx.size:
        seg = np.searchsorted(starts, idx, side="right") - 1
        first = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])
        out[seg[first]] = idx[first]
    return out


def _segment_stats(p: Points) -> dict[str, Any]:
    np = require("numpy")
    n_seg = len(p.lengths)
    starts = np.concatenate(([0], np.cumsum(p.lengths)[:-1])).astype(np.int64)
    ends = starts + p.lengths - 1
    nan, inf = np.isnan(p.values), np.isinf(p.values)
    ordered = np.ones(len(p.steps), dtype=bool)
    ordered[1:] = p.steps[1:] > p.steps[:-1]
    ordered[starts] = True
    with np.errstate(invalid="ignore"):
        low = np.minimum.reduceat(np.where(nan, np.inf, p.values), starts)
        high = np.maximum.reduceat(np.where(nan, -np.inf, p.values), starts)
        low_at = _first_per_segment(p.values == np.repeat(low, p.lengths), starts, n_seg)
        high_at = _first_per_segment(p.values == np.repeat(high, p.lengths), starts, n_seg)
        total = np.add.reduceat(np.where(nan, 0.0, p.values), starts)  # +inf + -inf = nan, like SQL sum
    times_ms = p.times_ns // NS_PER_MS
    latest_at = ends.copy()
    for s in np.flatnonzero(p.single):  # single values are few: latest by (time, step) the plain way
        lo, hi = starts[s], ends[s] + 1
        latest_at[s] = lo + max(range(hi - lo), key=lambda i: (times_ms[lo + i], p.steps[lo + i]))
    covers = p.lengths if p.covers is None else np.add.reduceat(p.covers, starts)
    return {
        "rows": p.lengths, "covers": covers, "ordered": np.logical_and.reduceat(ordered, starts),
        "min_step": p.steps[starts], "max_step": p.steps[ends],
        "lo_step": np.minimum.reduceat(p.steps, starts), "hi_step": np.maximum.reduceat(p.steps, starts),
        "last_time": np.maximum.reduceat(times_ms, starts),
        "finite": np.add.reduceat(~nan, starts).astype(np.uint64),
        "infinite": np.add.reduceat(inf, starts).astype(np.uint64),
        "nan_step": np.minimum.reduceat(np.where(nan, p.steps, NO_STEP), starts),
        "inf_step": np.minimum.reduceat(np.where(inf, p.steps, NO_STEP), starts),
        "total": total,
        "first": p.values[starts], "last": p.values[ends],
        "low": low, "low_step": p.steps[low_at], "high": high, "high_step": p.steps[high_at],
        "latest_time": times_ms[latest_at], "latest_step": p.steps[latest_at], "latest": p.values[latest_at],
    }


def _reduce(values: Any, starts: Any, op: str) -> Any:
    np = require("numpy")
    return getattr(np, op).reduceat(values, starts)


def series_stats(p: Points) -> tuple[Any, dict[str, pa.Array]]:
    """(series id per row, columns of ``series_stats`` without the key columns): one row per series."""
    np, pa = require("numpy"), require("pyarrow")
    if not len(p.lengths):
        return p.series, {}
    s = _segment_stats(p)
    order = np.lexsort((s["lo_step"], p.series))  # segments grouped by series, by first step
    sid = p.series[order]
    starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
    ends = np.r_[starts[1:], len(order)] - 1
    lo, hi = s["lo_step"][order], s["hi_step"][order]
    overlap = np.zeros(len(order), dtype=bool)
    overlap[1:] = lo[1:] <= hi[:-1]
    overlap[starts] = False
    clean = ~_reduce(overlap | ~s["ordered"][order], starts, "logical_or")

    def pick(name: str, at: Any) -> Any:
        return s[name][order][at]

    finite = _reduce(s["finite"][order], starts, "add")
    # min / max over the series' segments, ties to the smallest step; segments without a finite value never win
    seg_finite = s["finite"][order] > 0
    low_key = np.lexsort((pick("low_step", slice(None)), np.where(seg_finite, pick("low", slice(None)), np.nan),
                          np.repeat(np.arange(len(starts)), ends - starts + 1)))
    high_key = np.lexsort((pick("high_step", slice(None)), np.where(seg_finite, -pick("high", slice(None)), np.nan),
                           np.repeat(np.arange(len(starts)), ends - starts + 1)))
    low_at, high_at = low_key[starts], high_key[starts]
    has = finite > 0
    bounds = np.stack([_reduce(lo, starts, "minimum"), _reduce(hi, starts, "maximum")], axis=1)
    copies = np.where(clean, 1, 2)  # a series' step range once, or twice when the write itself overlaps
    repeated = np.repeat(bounds, copies, axis=0)
    segments = pa.ListArray.from_arrays(pa.array(np.r_[0, np.cumsum(copies)].astype(np.int32)),
                                        pa.StructArray.from_arrays([pa.array(repeated[:, 0]), pa.array(repeated[:, 1])],
                                                                   names=["1", "2"]))
    latest = np.lexsort((pick("latest_step", slice(None)), pick("latest_time", slice(None)),
                         np.repeat(np.arange(len(starts)), ends - starts + 1)))[ends]

    def struct(*arrays: Any) -> Any:
        return pa.StructArray.from_arrays([pa.array(a) for a in arrays], names=[str(i + 1) for i in range(len(arrays))])

    columns = {
        "rows": pa.array(_reduce(s["rows"][order], starts, "add").astype(np.uint64)),
        "covers": pa.array(_reduce(s["covers"][order], starts, "add").astype(np.uint64)),
        "segments": segments,
        "min_step": pa.array(bounds[:, 0]), "max_step": pa.array(bounds[:, 1]),
        "last_time": pa.array(_reduce(s["last_time"][order], starts, "maximum"), pa.timestamp("ms", tz="UTC")),
        "finite": pa.array(finite.astype(np.uint64)), "total": pa.array(_reduce(s["total"][order], starts, "add")),
        "first": struct(pick("min_step", starts), pick("first", starts)),
        "last": struct(pick("max_step", ends), pick("last", ends)),
        "low": struct(np.where(has, pick("low", low_at), np.inf), np.where(has, pick("low_step", low_at), _INT64_MAX)),
        "high": struct(np.where(has, pick("high", high_at), -np.inf),
                       np.where(has, -pick("high_step", high_at), -_INT64_MAX)),
        "latest": struct(pick("latest_time", latest), pick("latest_step", latest), pick("latest", latest)),
        "infinite": pa.array(_reduce(s["infinite"][order], starts, "add")),
        "nan_step": pa.array(_reduce(s["nan_step"][order], starts, "minimum")),
        "inf_step": pa.array(_reduce(s["inf_step"][order], starts, "minimum")),
    }
    return sid[starts], columns


def _blocks(series: Any, steps: Any, cuts: Any, level: int, columns: dict[str, Any]) -> dict[str, Any]:
    """Reduce rows (points, or level-1 blocks) into aligned blocks of ``level``; ``cuts`` marks forced breaks."""
    np = require("numpy")
    block = steps // BLOCK_STEPS[level]
    starts = np.flatnonzero(np.r_[True, (block[1:] != block[:-1]) | cuts[1:]])
    ends = np.r_[starts[1:], len(block)] - 1
    with np.errstate(invalid="ignore"):
        return {
            "series": series[starts], "level": np.full(len(starts), level, dtype=np.uint8), "block": block[starts],
            "min_step": np.minimum.reduceat(columns["min_step"], starts),
            "max_step": np.maximum.reduceat(columns["max_step"], starts),
            "finite": np.add.reduceat(columns["finite"], starts),
            "total": np.add.reduceat(columns["total"], starts),  # +inf + -inf = nan, like SQL sum
            "low": np.minimum.reduceat(columns["low"], starts),
            "high": np.maximum.reduceat(columns["high"], starts),
            "last_step": columns["last_step"][ends], "last": columns["last"][ends],
            "nans": np.add.reduceat(columns["nans"], starts), "infinite": np.add.reduceat(columns["infinite"], starts),
        }


def series_blocks(p: Points) -> tuple[Any, dict[str, pa.Array]]:
    """(series id per row, columns of ``series_blocks`` without the key columns): per segment, one row per run of
    its points in one block, at each level (series values only; exact for segments ordered by step)."""
    np, pa = require("numpy"), require("pyarrow")
    keep = np.repeat(~p.single, p.lengths)
    seg_id = np.repeat(np.arange(len(p.lengths)), p.lengths)[keep]
    steps, values = p.steps[keep], p.values[keep]
    if not len(steps):
        return p.series[:0], {}
    nan = np.isnan(values)
    points = {"min_step": steps, "max_step": steps, "finite": (~nan).astype(np.uint64),
              "total": np.where(nan, 0.0, values), "low": np.where(nan, np.inf, values),
              "high": np.where(nan, -np.inf, values), "last_step": steps, "last": values,
              "nans": nan.astype(np.uint64), "infinite": np.isinf(values).astype(np.uint64)}
    new_segment = np.r_[True, seg_id[1:] != seg_id[:-1]]
    one = _blocks(seg_id, steps, new_segment, 1, points)
    two = _blocks(one["series"], one["min_step"], np.r_[True, one["series"][1:] != one["series"][:-1]], 2, one)
    rows = {name: np.concatenate((one[name], two[name])) for name in one}
    columns = {name: pa.array(rows[name]) for name in
               ("level", "block", "min_step", "max_step", "finite", "total", "low", "high", "nans", "infinite")}
    columns["last"] = pa.StructArray.from_arrays([pa.array(rows["last_step"]), pa.array(rows["last"])],
                                                 names=["1", "2"])
    return p.series[rows["series"]], columns
