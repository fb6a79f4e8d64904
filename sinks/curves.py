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
                entity_type: str, steps: tuple[int, int] | None = None) -> dict[str, list[dict[str, Any]]]:
    """:meth:`trackstream.sinks.query.QueryService.curves` over ``rows`` (runs a query, returns its rows)."""
    if points < 1:
        raise QueryError("points must be >= 1")
    if steps is not None and steps[0] > steps[1]:
        raise QueryError(f"step_from must be <= step_to, not {steps[0]} > {steps[1]}")
    if not ids:
        return {}
    scope = {"project": project, "entity_type": entity_type}
    lookup.check_ids(rows, scope, ids)
    lookup.check_metric(rows, scope, metric)
    plans = plan_curves(rows, project, ids, metric, points=points, entity_type=entity_type, steps=steps)
    since = None if steps is None else dict.fromkeys(plans, steps[0])
    return {entity_id: [] for entity_id in ids} | fetch_buckets(
        rows, project, metric, plans, since=since, until=None if steps is None else steps[1], entity_type=entity_type)


def plan_curves(rows: RowsFn, project: str, ids: Sequence[str], metric: str, *, points: int,
                entity_type: str, steps: tuple[int, int] | None = None) -> dict[str, dict[str, Any]]:
    """Per entity holding ``metric``, how its curve is bucketed and read: ``{"origin", "width"}`` (steps, see
    :func:`curve_plan`) and the read path (``category``: rollup1, rollup2, clean, dirty, ranks; ``generation``,
    ``src``, ``level``). Entities without the metric are left out; with ``steps`` (first, last), the buckets
    span only that range (read from points: a zoom), and entities without a point in it are left out."""
    params = {"project": project, "entity_type": entity_type, "metric": metric, "ids": list(ids)}
    plans: dict[str, dict[str, Any]] = {}
    for entity_id, generation, first, last, single, ranks, clean, src in rows(
            q.fill(q.PLAN, select="metric = {metric:String} AND entity_id IN {ids:Array(String)}"), params):
        lo, hi = (first, last) if steps is None else (max(first, steps[0]), min(last, steps[1]))
        if lo > hi:
            continue
        origin, width, level = curve_plan(lo, hi, points, clean=bool(clean and not single and steps is None))
        category = f"rollup{level}" if level else "ranks" if ranks > 1 and not clean else \
            "clean" if clean else "dirty"
        plans[entity_id] = {"origin": origin, "width": width, "level": level, "category": category,
                            "generation": generation, "src": src}
    return plans


def fetch_buckets(rows: RowsFn, project: str, metric: str, plans: Mapping[str, Mapping[str, Any]], *,
                  since: Mapping[str, int] | None = None, until: int | None = None,
                  entity_type: str) -> dict[str, list[dict[str, Any]]]:
    """The buckets of each planned entity (:func:`plan_curves`), in step order; with ``since``, only the buckets
    of the entities in it from that step on (read from points: a curve's newest buckets, while a run logs).

    A bucket: ``{step_from, step_to, min, max, avg, last, nan_count, inf_count}``."""
    params: dict[str, Any] = {"project": project, "entity_type": entity_type, "metric": metric}
    groups: dict[str, list[str]] = {}
    for entity_id, plan in plans.items():
        if since is None or entity_id in since:
            category = plan["category"]
            groups.setdefault("clean" if since is not None and category.startswith("rollup") else category,
                              []).append(entity_id)
    result: dict[str, list[dict[str, Any]]] = {}
    for category, ids in groups.items():
        bound = params | {"ids": ids, **{f"{key}s": [plans[i][key] for i in ids]
                                         for key in ("generation", "origin", "width", "src")}}
        bound["los"] = bound.pop("origins")
        if category.startswith("rollup"):
            sql, level = q.CURVES_ROLLUP, int(category.removeprefix("rollup"))
            bound |= {"level": level, "block_steps": BLOCK_STEPS[level]}
        else:
            sql = q.curves_sql(category, since=since is not None, until=until is not None)
            if since is not None:
                bound["sinces"] = [since[i] for i in ids]
            if until is not None:
                bound["until"] = until
        for entity_id, *_bucket, step_from, step_to, low, high, avg, last, nans, infs in rows(sql, bound):
            result.setdefault(entity_id, []).append({
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
