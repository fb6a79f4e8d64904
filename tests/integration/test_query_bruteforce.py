"""Every query against a brute-force numpy computation on the same generated data (chDB, and the server if any).

The data exercises what makes the queries hard: NaN/±Inf, single values, overwrites (generations), several
ranks, a replayed block (written twice without a deduplication token) and a step logged twice (later wins).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from trackstream.schemas.envelope import EntityRef, MetricBatch
from trackstream.schemas.processed import EntityState, PointBlock
from trackstream.sinks.backend import Backend
from trackstream.sinks.curves import curve_plan
from trackstream.sinks.query import QueryService
from trackstream.sinks.schema import BLOCK_STEPS
from trackstream.sinks.sink import Sink

PROJECT = "proj'\\\"; DROP TABLE points; --"
T0_MS = 1_700_000_000_000
Point = tuple[str, str, int, int, int, int, float, str]  # entity, metric, generation, rank, step, time_ms, value, kind


@pytest.fixture
def backend(clickhouse_backend: Any) -> Iterator[Backend]:
    if clickhouse_backend.kind == "chdb":
        from trackstream.sinks.chdb_backend import ChdbBackend

        store: Backend = ChdbBackend(clickhouse_backend.data_dir, database=clickhouse_backend.database)
    else:
        from trackstream.schemas.settings import StoreSettings
        from trackstream.sinks.server_backend import ServerBackend

        store = ServerBackend(StoreSettings.resolve(url=clickhouse_backend.url, database=clickhouse_backend.database))
    yield store
    store.close()


class World:
    """Generated points, as written to the sink and as the brute force sees them."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = np.random.default_rng(seed)
        self.points: list[Point] = []
        self.blocks: list[PointBlock] = []
        self.clock = T0_MS

    def log(self, entity: str, metric: str, steps: list[int], values: list[float], *, rank: int = 0,
            generation: int = 0, kind: str = "series") -> PointBlock:
        times = []
        for step, value in zip(steps, values, strict=True):
            self.clock += int(self.rng.integers(1, 5))
            times.append(self.clock)
            self.points.append((entity, metric, generation, rank, step, self.clock, value, kind))
        batch = MetricBatch(metric, kind, list(steps), [t * 1_000_000 for t in times], list(values))  # type: ignore[arg-type]
        block = PointBlock(EntityRef(PROJECT, "run", entity), rank, f"producer-{entity}-{rank}",
                           len(self.blocks), [batch], [generation])
        self.blocks.append(block)
        return block

    def curve(self, n: int, special: bool = False) -> list[float]:
        values = (np.exp(-np.arange(n) / 50) + self.rng.normal(0, 0.05, n)).astype(np.float32).astype(float)
        out = [float(v) for v in values]
        if special:
            out[3], out[10], out[20] = math.nan, math.inf, -math.inf
        return out


def generate() -> World:
    w = World()
    for i in range(3):
        w.log(f"run-{i}", "loss", list(range(0, 300, 1 + i)), w.curve(len(range(0, 300, 1 + i))))
        w.log(f"run-{i}", "acc", [0], [0.5 + i])  # a one-point series reads as a number
        w.log(f"run-{i}", "best", [0, 1], [0.1 * i, 0.2 * i], kind="single")
    for rank in range(3):  # several ranks, rank 2 misses some steps
        steps = list(range(0, 200, 1 if rank < 2 else 3))
        w.log("run-ranks", "loss", steps, w.curve(len(steps)), rank=rank)
    w.log("run-over", "loss", list(range(500)), w.curve(500))
    w.log("run-over", "loss", list(range(40)), w.curve(40), generation=1)  # overwrite: only these remain
    special = w.log("run-special", "loss", list(range(120)), w.curve(120, special=True))
    w.blocks.append(special)  # replayed block
    w.log("run-special", "loss", [5, 6], [42.0, -42.0])  # steps logged again later: these win
    w.log("run-nan", "loss", list(range(10)), [math.nan] * 10)
    w.log("run-long", "loss", list(range(-700, 3000)), w.curve(3700, special=True))  # level-2 rollups
    return w


def per_step(w: World, entity: str, metric: str) -> tuple[np.ndarray, np.ndarray, Point | None]:
    """Brute force: newest generation, latest value per (rank, step), mean over ranks per step."""
    rows = [p for p in w.points if p[0] == entity and p[1] == metric]
    newest = max(p[2] for p in rows)
    rows = [p for p in rows if p[2] == newest]
    latest: dict[tuple[int, int], Point] = {}
    for p in rows:
        if (p[3], p[4]) not in latest or p[5] > latest[(p[3], p[4])][5]:
            latest[(p[3], p[4])] = p
    by_step: dict[int, list[float]] = defaultdict(list)
    for (_rank, step), p in latest.items():
        by_step[step].append(p[6])
    steps = np.array(sorted(by_step))
    values = np.array([np.mean(by_step[s]) if len(by_step[s]) > 1 else by_step[s][0] for s in steps])
    single = max(rows, key=lambda p: (p[5], p[4])) if rows[0][7] == "single" else None
    return steps, values, single


def close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def expected_compare(w: World, entity: str, metric: str, agg: str) -> tuple[float, int | None]:
    steps, values, single = per_step(w, entity, metric)
    if single is not None:
        return single[6], single[4]
    ok = ~np.isnan(values)
    if agg == "last":
        return float(values[-1]), int(steps[-1])
    if agg == "first":
        return float(values[0]), int(steps[0])
    if agg == "mean":
        return (float(np.mean(values[ok])) if ok.any() else math.nan), int(steps[-1])
    if not ok.any():
        return math.nan, None
    if agg == "min":
        return float(np.min(values[ok])), int(steps[ok][np.argmin(values[ok])])
    assert agg == "max", agg
    return float(np.max(values[ok])), int(steps[ok][np.argmax(values[ok])])


def specials_of(steps: np.ndarray, values: np.ndarray) -> dict[str, Any]:
    """Brute force: how many of the per-step ``values`` are NaN / ±Inf and the first step of each."""
    nan, inf = np.isnan(values), np.isinf(values)
    return {"nan_count": int(nan.sum()), "inf_count": int(inf.sum()),
            "first_nan_step": int(steps[nan].min()) if nan.any() else None,
            "first_inf_step": int(steps[inf].min()) if inf.any() else None}


def expected_specials(w: World, entity: str, metric: str) -> dict[str, Any]:
    """:func:`specials_of` a series' per-step values; of a single value's latest value."""
    steps, values, single = per_step(w, entity, metric)
    if single is not None:
        return specials_of(np.array([single[4]]), np.array([single[6]]))
    return specials_of(steps, values)


@pytest.fixture
def world(backend: Backend) -> World:
    w = generate()
    sink = Sink(backend)
    params = {"lr": 0.1, "seed": 1, "opt": "adam's \\ 'x'); DROP TABLE params; --", "flag": True,
              "layers": [64, 64], "none": None}
    states = [EntityState(EntityRef(PROJECT, "run", e), f"name of {e} 'q' \\", "running",
                          params | {"group": i % 2}, {"tag'\\": "v'\"\\"}, i + 1, 0, [], 0, 1)
              for i, e in enumerate(sorted({p[0] for p in w.points}))]
    for block in w.blocks:
        sink.write([block])
    sink.write(entity_states=states)
    return w


ENTITIES = ("run-0", "run-1", "run-2", "run-ranks", "run-over", "run-special", "run-nan", "run-long")


@pytest.mark.parametrize("agg", ["last", "first", "min", "max", "mean"])
def test_compare_matches_brute_force(world: World, backend: Backend, agg: str) -> None:
    service = QueryService(backend=backend)
    rows = {r["id"]: r for r in service.compare(PROJECT, "loss", agg=agg)}
    assert set(rows) == set(ENTITIES)
    for entity in ENTITIES:
        value, step = expected_compare(world, entity, "loss", agg)
        assert close(rows[entity]["value"], value), (entity, rows[entity], value)
        assert rows[entity]["step"] == step, (entity, rows[entity], step)
        specials = expected_specials(world, entity, "loss")
        assert {key: rows[entity][key] for key in specials} == specials, (entity, rows[entity])
        assert rows[entity]["params"]["opt"] == "adam's \\ 'x'); DROP TABLE params; --"
        assert rows[entity]["name"] == f"name of {entity} 'q' \\"


def test_compare_single_values_latest_wins(world: World, backend: Backend) -> None:
    rows = QueryService(backend=backend).compare(PROJECT, "best", agg="min", runs=["run-1", "run-2"])
    assert [(r["id"], r["value"], r["step"]) for r in rows] == [("run-1", 0.2, 1), ("run-2", 0.4, 1)]
    assert all((r["nan_count"], r["inf_count"], r["first_nan_step"]) == (0, 0, None) for r in rows)


def test_compare_grouped_by_params(world: World, backend: Backend) -> None:
    rows = QueryService(backend=backend).compare(PROJECT, "loss", agg="max", by=["group", "lr"])
    groups: dict[int, list[float]] = defaultdict(list)
    for i, entity in enumerate(sorted(ENTITIES)):
        groups[i % 2].append(expected_compare(world, entity, "loss", "max")[0])
    assert len(rows) == 2
    for row in rows:
        values = np.array([v for v in groups[row["group"]] if not math.isnan(v)])
        assert row["lr"] == 0.1
        assert row["runs"] == len(groups[row["group"]])
        assert close(row["mean"], float(values.mean()))
        assert close(row["std"], float(values.std()))
        assert row["min"] == values.min()
        assert row["max"] == values.max()
        members = [expected_specials(world, e, "loss") for i, e in enumerate(sorted(ENTITIES)) if i % 2 == row["group"]]
        assert row["nan_count"] == sum(m["nan_count"] for m in members)
        assert row["inf_count"] == sum(m["inf_count"] for m in members)
        nan_steps = [m["first_nan_step"] for m in members if m["first_nan_step"] is not None]
        assert row["first_nan_step"] == min(nan_steps, default=None)


def assert_buckets(got: list[dict[str, float]], steps: np.ndarray, values: np.ndarray, points: int,
                   context: object, *, plan: tuple[int, int] | None = None) -> None:
    """``got`` (curves buckets of one entity) are the brute-force buckets of its per-step ``values`` at ``steps``
    (bucketed by ``plan`` = (origin, width) when given, else as curves plans the whole series)."""
    origin, width = plan or curve_plan(int(steps[0]), int(steps[-1]), points, clean=True)[:2]
    buckets = (steps - origin) // width
    expected = []
    for b in np.unique(buckets):
        s, v = steps[buckets == b], values[buckets == b]
        ok = v[~np.isnan(v)]
        expected.append((int(s[0]), int(s[-1]), int(np.isnan(v).sum()), int(np.isinf(v).sum()),
                         float(ok.min()) if ok.size else math.nan, float(ok.max()) if ok.size else math.nan,
                         float(ok.mean()) if ok.size else math.nan, float(v[-1])))
    found = [(b["step_from"], b["step_to"], b["nan_count"], b["inf_count"], b["min"], b["max"], b["avg"], b["last"])
             for b in got]
    assert len(found) == len(expected), (context, points)
    for g, e in zip(found, expected, strict=True):
        assert g[:4] == e[:4], (context, points, g, e)
        assert all(close(x, y) for x, y in zip(g[4:], e[4:], strict=True)), (context, points, g, e)


@pytest.mark.parametrize("points", [1, 2, 3, 5, 7, 64, 1000])
def test_curves_match_brute_force(world: World, backend: Backend, points: int) -> None:
    result = QueryService(backend=backend).curves(PROJECT, list(ENTITIES), "loss", points=points)
    for entity in ENTITIES:
        steps, values, _ = per_step(world, entity, "loss")
        origin, width, _rollup = curve_plan(int(steps[0]), int(steps[-1]), points, clean=True)
        if width >= BLOCK_STEPS[1]:
            assert origin % BLOCK_STEPS[1] == 0
            assert width % BLOCK_STEPS[1] == 0
        assert len(result[entity]) <= points
        assert_buckets(result[entity], steps, values, points, entity)
        finite = values[~np.isnan(values)]
        if finite.size:  # extremes are never sampled away
            assert min(b["min"] for b in result[entity]) == finite.min()
            assert max(b["max"] for b in result[entity]) == finite.max()


def test_entity_metrics_read_back(world: World, backend: Backend) -> None:
    service = QueryService(backend=backend)
    for entity in ENTITIES:
        got = service.entity_metrics(EntityRef(PROJECT, "run", entity))
        for metric in {p[1] for p in world.points if p[0] == entity}:
            _steps, values, single = per_step(world, entity, metric)
            want: Any = single[6] if single else (float(values[0]) if len(values) == 1 else list(values))
            if isinstance(want, list):
                assert len(got[metric]) == len(want)  # type: ignore[arg-type]
                assert all(close(a, b) for a, b in zip(got[metric], want, strict=True))  # type: ignore[arg-type]
            else:
                assert close(got[metric], want), (entity, metric)  # type: ignore[arg-type]


def test_exact_values_round_trip(world: World, backend: Backend) -> None:
    """Single-rank values come back bit for bit (NaN, ±Inf, -0.0, float64 that are not float32)."""
    service = QueryService(backend=backend)
    Sink(backend).write([world.log("run-bits", "x", [0, 1, 2, 3, 4], [-0.0, 1 / 3, 1e-310, math.inf, 0.1])])
    got = service.entity_metrics(EntityRef(PROJECT, "run", "run-bits"))["x"]
    want = [-0.0, 1 / 3, 1e-310, math.inf, 0.1]
    assert [np.float64(v).view(np.uint64) for v in got] == [np.float64(v).view(np.uint64) for v in want]  # type: ignore[union-attr]


def test_runs_round_trip_verbatim(world: World, backend: Backend) -> None:
    runs = {r["id"]: r for r in QueryService(backend=backend).runs(PROJECT)}
    assert set(runs) == set(ENTITIES)
    run = runs["run-0"]
    assert run["params"] == {"lr": 0.1, "seed": 1, "opt": "adam's \\ 'x'); DROP TABLE params; --", "flag": True,
                             "layers": [64, 64], "none": None, "group": 0}
    assert type(run["params"]["seed"]) is int
    assert type(run["params"]["lr"]) is float
    assert run["tags"] == {"tag'\\": "v'\"\\"}
    assert run["name"] == "name of run-0 'q' \\"
    assert run["status"] == "running"
    assert run["lost_points"] == 0
    assert run["ended_at"] is None


def test_sql_is_read_only_and_binds_parameters(world: World, backend: Backend) -> None:
    service = QueryService(backend=backend)
    (count,), = service.sql(
        "SELECT count() FROM points WHERE project = {p:String} AND entity_id = {e:String}"
        " AND metric IN {m:Array(String)}",
        {"p": PROJECT, "e": "run-0", "m": ["loss", "acc"]},
    )
    assert count == 301
    for bad in ("INSERT INTO points SELECT * FROM points", "SELECT 1; DROP TABLE points", "DROP TABLE points",
                "ALTER TABLE points DELETE WHERE 1", "  /* x */ TRUNCATE TABLE points"):
        with pytest.raises(Exception, match=r"allowed|one statement"):
            service.sql(bad)
    assert service.sql("SELECT count() FROM points")[0][0] > 0


@pytest.mark.parametrize(("step_from", "step_to", "points"), [(0, 99, 1000), (-500, 10, 7), (5, 5, 3), (150, 2999, 64),
                                                             (2000, 10**9, 1000), (10**6, 10**7, 10)])
def test_curves_of_a_step_range_match_brute_force(world: World, backend: Backend, step_from: int, step_to: int,
                                                   points: int) -> None:
    """A zoom: only the range's steps, in buckets planned over the range (full resolution once it is narrow)."""
    result = QueryService(backend=backend).curves(PROJECT, list(ENTITIES), "loss", points=points,
                                                  step_from=step_from, step_to=step_to)
    for entity in ENTITIES:
        steps, values, _ = per_step(world, entity, "loss")
        inside = (steps >= step_from) & (steps <= step_to)
        if not inside.any():
            assert result[entity] == [], entity
            continue
        lo, hi = max(int(steps[0]), step_from), min(int(steps[-1]), step_to)
        origin, width, _level = curve_plan(lo, hi, points, clean=False)
        assert all(b["step_from"] >= step_from and b["step_to"] <= step_to for b in result[entity])
        assert_buckets(result[entity], steps[inside], values[inside], points, entity, plan=(origin, width))
    if step_to - step_from < points:  # narrow: one bucket per step
        assert all(b["step_from"] == b["step_to"] for buckets in result.values() for b in buckets)
