"""The statistics paths (``series_stats`` for compare, ``series_blocks`` for curves) against the scan of points.

Whichever path serves a query, the result is the same: the fast paths are used only for series that provably
hold no duplicate, and replays (with or without deduplication token) never change a result.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from test_query_bruteforce import ENTITIES, PROJECT, World, backend, close, world

from trackstream.sinks import sql as q
from trackstream.sinks.backend import Backend
from trackstream.sinks.curves import curve_plan
from trackstream.sinks.query import AGGREGATES, QueryService
from trackstream.sinks.sink import Sink

__all__ = ["backend", "world"]  # fixtures used by the tests below


def _scan_compare(backend: Backend, agg: str) -> dict[str, tuple[Any, ...]]:
    """(value, step, nan_count, inf_count, first_nan_step, first_inf_step) per entity, by scanning points."""
    sql = q.compare_sql("metric = {metric:String}", agg)
    rows = backend.query(sql, {"project": PROJECT, "entity_type": "run", "metric": "loss"})[1]
    return {entity: tuple(rest) for entity, *rest in rows}


def _stats_exact(backend: Backend) -> dict[str, bool]:
    rows = backend.query(q.stats_sql("metric = {metric:String}", "last"),
                         {"project": PROJECT, "entity_type": "run", "metric": "loss"})[1]
    return {row[0]: bool(row[1]) for row in rows}


def _same(api: float, sql: float | None) -> bool:
    """The API reports a missing value (SQL NULL) as NaN."""
    return close(api, math.nan if sql is None else float(sql))


@pytest.mark.parametrize("agg", AGGREGATES)
def test_stats_path_agrees_with_scan(world: World, backend: Backend, agg: str) -> None:
    exact = _stats_exact(backend)
    assert {e for e, ok in exact.items() if ok} == {"run-0", "run-1", "run-2", "run-over", "run-nan", "run-long"}
    scanned = _scan_compare(backend, agg)
    for row in QueryService(backend=backend).compare(PROJECT, "loss", agg=agg):
        value, step, *specials = scanned[row["id"]]
        assert _same(row["value"], value), (row, value)
        assert row["step"] == (None if value is None else step), (row, step)
        assert [row["nan_count"], row["inf_count"], row["first_nan_step"], row["first_inf_step"]] == specials, row


def test_curves_rollup_path_agrees_with_scan(world: World, backend: Backend) -> None:
    """Rollups for clean series (block-aligned buckets), the scan for the others; same buckets either way."""
    service = QueryService(backend=backend)
    params = {"project": PROJECT, "entity_type": "run", "metric": "loss", "ids": list(ENTITIES)}
    plan = {row[0]: bool(row[5] == 1 and row[6]) for row in backend.query(
        q.fill(q.PLAN, select="metric = {metric:String} AND entity_id IN {ids:Array(String)}"), params)[1]}
    assert {e for e, ok in plan.items() if ok} == {"run-0", "run-1", "run-2", "run-over", "run-nan", "run-long"}
    levels = set()
    for points in (1, 2, 3, 5):
        fast = service.curves(PROJECT, list(ENTITIES), "loss", points=points)
        for entity in ("run-0", "run-1", "run-2", "run-long"):
            lo, hi = fast[entity][0]["step_from"], fast[entity][-1]["step_to"]
            origin, width, level = curve_plan(lo, hi, points, clean=True)
            if not level:
                continue
            levels.add(level)
            sql = q.curves_sql("dirty")  # FINAL scan of points: the reference
            rows = backend.query(sql, params | {"ids": [entity], "generations": [0], "los": [origin],
                                                "widths": [width], "srcs": [0]})[1]
            scanned = [{"step_from": r[2], "step_to": r[3], "min": r[4], "max": r[5], "avg": r[6], "last": r[7],
                        "nan_count": r[8], "inf_count": r[9]} for r in rows]
            _assert_same(fast[entity], scanned)
    assert levels == {1, 2}


def _snapshot(service: QueryService) -> list[Any]:
    compares = [service.compare(PROJECT, "loss", agg=agg) for agg in AGGREGATES]
    curves = [service.curves(PROJECT, list(ENTITIES), "loss", points=points) for points in (2, 7, 1000)]
    return [compares, curves, service.compare(PROJECT, "best", agg="last")]


def _assert_same(a: Any, b: Any) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    elif isinstance(a, float):
        assert close(a, b), (a, b)
    else:
        assert a == b


def test_replays_change_no_result(world: World, backend: Backend) -> None:
    service = QueryService(backend=backend)
    before = _snapshot(service)
    sink = Sink(backend)
    sink.write(world.blocks, dedup_key="replay")
    sink.write(world.blocks, dedup_key="replay")  # deduplicated: the statistics stay exact
    assert _stats_exact(backend)["run-0"] is False  # written twice overall (first without a token)
    _assert_same(before, _snapshot(service))


def test_deduplicated_replay_keeps_fast_path(backend: Backend) -> None:
    w = World(seed=3)
    block = w.log("run-0", "loss", list(range(200)), w.curve(200))
    sink = Sink(backend)
    service = QueryService(backend=backend)
    sink.write([block], dedup_key="k")
    before = _snapshot_one(service)
    sink.write([block], dedup_key="k")
    assert _stats_exact(backend)["run-0"] is True
    _assert_same(before, _snapshot_one(service))
    sink.write([block])  # no token: now a duplicate, served by the scan with the same result
    assert _stats_exact(backend)["run-0"] is False
    _assert_same(before, _snapshot_one(service))


def _snapshot_one(service: QueryService) -> list[Any]:
    return [[service.compare(PROJECT, "loss", agg=agg) for agg in AGGREGATES],
            service.curves(PROJECT, ["run-0"], "loss", points=3)]
