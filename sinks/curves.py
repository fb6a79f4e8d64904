"""curves: downsampled series, at most ``points`` buckets per run over step (docs/queries.md).

The buckets are planned per series (:func:`curve_plan`) and read by how each series is stored: from the
``series_blocks`` rollups of a clean source, else by scanning ``points`` (sinks/sql.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from trackstream.sinks import lookup
from trackstream.sinks import sql as q
from trackstream.sinks.backend import Row
from trackstream.sinks.errors import QueryError
from trackstream.sinks.schema import BLOCK_STEPS

RowsFn = Callable[[str, Mapping[str, Any]], list[Row]]


def as_float(value: Any) -> float:
    """A value read from the store as a float: NULL (no value) reads as NaN."""
    return math.nan if value is None else float(value)


def read_curves(rows: RowsFn, project: str, ids: Sequence[str], metric: str, *, points: int,
                entity_type: str) -> dict[str, list[dict[str, Any]]]:
    """:meth:`trackstream.sinks.query.QueryService.curves` over ``rows`` (runs a query, returns its rows)."""
    if points < 1:
        raise QueryError("points must be >= 1")
    result: dict[str, list[dict[str, Any]]] = {entity_id: [] for entity_id in ids}
    if not ids:
        return result
    scope = {"project": project, "entity_type": entity_type}
    lookup.check_ids(rows, scope, ids)
    lookup.check_metric(rows, scope, metric)
    params: dict[str, Any] = {"project": project, "entity_type": entity_type, "metric": metric}
    plans: dict[str, list[tuple[str, int, int, int, int]]] = {}
    for entity_id, generation, lo, hi, single, ranks, clean, src in rows(
            q.fill(q.PLAN, select="metric = {metric:String} AND entity_id IN {ids:Array(String)}"),
            params | {"ids": ids}):
        origin, width, level = curve_plan(lo, hi, points, clean=bool(clean and not single))
        category = f"rollup{level}" if level else "ranks" if ranks > 1 and not clean else \
            "clean" if clean else "dirty"
        plans.setdefault(category, []).append((entity_id, generation, origin, width, src))
    for category, planned in plans.items():
        ids_, generations, los, widths, srcs = (list(column) for column in zip(*planned, strict=True))
        bound = params | {"ids": ids_, "generations": generations, "los": los, "widths": widths, "srcs": srcs}
        if category.startswith("rollup"):
            sql, level = q.CURVES_ROLLUP, int(category.removeprefix("rollup"))
            bound |= {"level": level, "block_steps": BLOCK_STEPS[level]}
        else:
            sql = q.curves_sql(category)
        for entity_id, *_bucket, step_from, step_to, low, high, avg, last, nans, infs in rows(sql, bound):
            result[entity_id].append({
                "step_from": step_from, "step_to": step_to, "min": as_float(low), "max": as_float(high),
                "avg": as_float(avg), "last": as_float(last), "nan_count": int(nans), "inf_count": int(infs),
            })
    return result


def curve_plan(lo: int, hi: int, points: int, *, clean: bool) -> tuple[int, int, int]:
    """(origin, width, rollup level or 0) of the curve buckets of a series spanning steps ``lo..hi``.

    Buckets are ``width`` steps wide from ``origin``: ``width = ceil((hi - lo + 1) / points)`` from ``lo``; once
    that width reaches a level-1 rollup block, whole blocks of a level (origin rounded down to a block, width
    up), so a curve has at most ``points`` buckets and at least about half as many. Level 2 (coarser blocks,
    fewer rows to read) is chosen when its width is at most 25% wider than level 1's. The buckets do not depend
    on the path: a series with a ``clean`` source (its one rank, or its pooled cross-rank mean) is read from
    ``series_blocks`` at that level, others from points.
    """
    width = -(-(hi - lo + 1) // points)
    if width < BLOCK_STEPS[1]:
        return lo, width, 0
    plans = []
    for level, size in BLOCK_STEPS.items():
        origin = lo // size * size
        plans.append((origin, -(-(hi - origin + 1) // (points * size)) * size, level))
    origin, width, level = plans[1] if plans[1][1] * 4 <= plans[0][1] * 5 else plans[0]
    return origin, width, level if clean else 0
