"""Query API (docs/queries.md, contract): compare, curves, runs, sql, plus the SDK read-back (metrics, wait_ingested).

:class:`QueryService` holds one backend and returns plain JSON-able data (floats may be NaN/±Inf), so an
HTTP-backed client can offer the same methods. The module-level functions use one default service configured
from the environment (``TRACKSTREAM_CLICKHOUSE_URL``, else the chDB store in ``TRACKSTREAM_DATA_DIR``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import orjson

from trackstream.schemas.envelope import EntityRef
from trackstream.schemas.settings import StoreSettings
from trackstream.sinks import lookup
from trackstream.sinks import sql as q
from trackstream.sinks.alert_reads import read_alerts
from trackstream.sinks.backend import Backend, Row
from trackstream.sinks.connect import open_backend
from trackstream.sinks.curves import as_float, fetch_buckets, plan_curves, read_curves
from trackstream.sinks.errors import IngestTimeout, QueryError
from trackstream.sinks.run_reads import id_filter, read_entities, read_names, read_params, read_runs, specials
from trackstream.sinks.runs_table import Listings, table_page
from trackstream.sinks.schema import ADDED_COLUMNS
from trackstream.sinks.sql_guard import check_statement

AGGREGATES: Final = ("last", "min", "max", "mean", "first")
_NAN: Final = math.nan


class QueryService:
    """Reads one store: ``backend``, else ``store`` resolved with ``keywords`` (:class:`StoreSettings` fields).

    Raises :class:`~trackstream.sinks.errors.StoreUnavailable` when the store cannot be reached.
    """

    def __init__(self, store: StoreSettings | None = None, *, backend: Backend | None = None, **keywords: Any) -> None:
        self.backend = backend if backend is not None else open_backend(store, **keywords)
        self._listings = Listings()  # runs_table's recent reads

    def __repr__(self) -> str:
        return f"QueryService({self.backend!r})"

    def _rows(self, sql: str, params: Mapping[str, Any]) -> list[Row]:
        try:
            return self.backend.query(sql, params)[1]
        except QueryError as exc:
            raise no_tables_error(exc, self.backend) or exc from exc

    # -- runs ---------------------------------------------------------------------------------------

    def runs(self, project: str, *, entity_type: str = "run", runs: Sequence[str] | None = None,
             status: str | Sequence[str] | None = None, params: Mapping[str, Any] | None = None,
             tags: Mapping[str, str] | None = None, order_by: str | None = None,
             limit: int | None = None) -> list[dict[str, Any]]:
        """Runs with id, name, status, params, tags, started_at, ended_at, lost_points, ranks and metric summaries.

        ``ranks``: one ``{rank, status, host, producer_id, last_seen_at}`` per producer that wrote to the run
        (a restarted rank shows each incarnation); a rank silent past the heartbeat timeout is ``crashed``.
        ``runs`` (entity ids) reads only those; ids not stored are left out, so a page may name a run about to
        start. ``status``, ``params``, ``tags``, ``order_by`` (``"loss.min"``, ``"-loss.last"``) and ``limit``
        search them (:func:`trackstream.sinks.run_filter.search`). Raises NotFoundError for an unknown project.
        """
        return read_runs(self._rows, project, entity_type=entity_type, ids=runs, status=status, params=params,
                         tags=tags, order_by=order_by, limit=limit)

    def runs_table(self, project: str, *, entity_type: str = "run", search: str | None = None,
                   status: Sequence[str] | None = None, filters: Sequence[Mapping[str, Any]] | None = None,
                   sort: Sequence[Mapping[str, Any]] | None = None, page: int = 1, size: int = 100,
                   listing: str | None = None) -> dict[str, Any]:
        """One page of the live page's runs table over :meth:`runs`, searched, filtered and sorted here
        (:func:`trackstream.sinks.runs_table.table_page`: shapes and errors), plus ``"listing"`` (a token) and
        ``"read_at"`` (ms since the epoch). Page 1 reads the store; a later page that brings the token back reads
        the same rows (:class:`~trackstream.sinks.runs_table.Listings`), so the pages agree and scrolling is cheap.
        Raises NotFoundError for an unknown project."""
        token, read_at, rows = self._listings.rows(None if page == 1 else listing,
                                                   lambda: self.runs(project, entity_type=entity_type))
        return {**table_page(rows, search=search, status=status, filters=filters, sort=sort, page=page, size=size),
                "listing": token, "read_at": read_at}

    # -- compare --------------------------------------------------------------------------------------

    def compare(
        self,
        project: str,
        metric: str,
        *,
        agg: str = "last",
        by: Sequence[str] | None = None,
        runs: Sequence[str] | None = None,
        entity_type: str = "run",
    ) -> list[dict[str, Any]]:
        """One row per entity (id, name, value, step, params, nan_count, inf_count, first_nan_step,
        first_inf_step), or per distinct combination of the ``by`` params (:func:`_grouped`).

        The aggregate skips NaN (and counts ±Inf); the counts say how many per-step values were NaN / ±Inf and the
        first steps where (None when none), so a diverging run never looks healthy.

        Raises :class:`~trackstream.schemas.errors.NotFoundError` for an unknown project, metric, run id or ``by``
        param, naming the closest that exist."""
        if agg not in AGGREGATES:
            raise QueryError(f"agg must be one of {', '.join(AGGREGATES)}, not {agg!r}")
        if isinstance(by, str):
            by = [by]
        scope = {"project": project, "entity_type": entity_type}
        if runs:
            lookup.check_ids(self._rows, scope, list(runs))
        select, extra = id_filter(runs)
        rows = self._compare_rows(scope | extra | {"metric": metric}, "metric = {metric:String}" + select, agg)
        if not rows:
            lookup.check_metric(self._rows, scope, metric)
        params = read_params(self._rows, scope, runs) if rows else {}
        if by and rows:
            lookup.check_params(sorted({key for found in params.values() for key in found}), list(by), project)
        names = read_names(self._rows, scope, runs) if rows else {}
        result = []
        for entity_id, value, step, *special in rows:
            result.append({
                "id": entity_id, "name": names.get(entity_id, entity_id), "value": as_float(value),
                "step": None if value is None else step, "params": params.get(entity_id, {}), **specials(*special),
            })
        return _grouped(result, list(by)) if by else result

    def _compare_rows(self, params: dict[str, Any], select: str, agg: str) -> list[Row]:
        """(entity_id, value, step, nan_count, inf_count, first_nan_step, first_inf_step) per entity: from
        ``series_stats`` where exact, else by scanning points."""
        rows: list[Row] = []
        scan: list[str] = []
        for entity_id, exact, *row in self._rows(q.stats_sql(select, agg), params):
            if exact:
                rows.append((entity_id, *row))
            else:
                scan.append(entity_id)
        if scan:
            sql = q.compare_sql(select + " AND entity_id IN {scan:Array(String)}", agg)
            rows.extend(self._rows(sql, params | {"scan": scan}))
        return sorted(rows)

    # -- curves ---------------------------------------------------------------------------------------

    def curves(
        self, project: str, runs: Sequence[str] | str, metric: str, *, points: int = 1000, entity_type: str = "run",
        step_from: int | None = None, step_to: int | None = None,
    ) -> dict[str, list[dict[str, Any]]]:
        """Per run at most ``points`` buckets over step: {step_from, step_to, min, max, avg, last, nan_count,
        inf_count} (min / max / avg skip NaN; the counts are of the bucket's per-step values); an empty list
        for a run without ``metric``. Raises NotFoundError for an unknown project, run id, or a metric none of
        the project's runs logged (with the closest names). Buckets: :func:`trackstream.sinks.curves.curve_plan`.
        ``step_from`` / ``step_to`` (inclusive) restrict the buckets to a range of steps, read at full resolution
        once the range holds at most ``points`` steps (a chart's zoom)."""
        steps = None
        if step_from is not None or step_to is not None:
            steps = (-(2**63) if step_from is None else int(step_from), 2**63 - 1 if step_to is None else int(step_to))
        return read_curves(self._rows, project, [runs] if isinstance(runs, str) else list(runs), metric,
                           points=points, entity_type=entity_type, steps=steps)

    # -- live views (the page's server push, trackstream.api.events) -----------------------------------------

    def projects(self, *, entity_type: str = "run") -> list[str]:
        """The projects holding runs (or models), sorted."""
        return [project for (project,) in self._rows(q.PROJECTS, {"entity_type": entity_type})]

    def entities(self, project: str, *, entity_type: str = "run",
                 runs: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The rows of :meth:`runs` without params and metric summaries (cheap enough to poll every second);
        ``runs``: only these entity ids."""
        return read_entities(self._rows, {"project": project, "entity_type": entity_type}, runs)

    def series_heads(self, project: str, metric: str, runs: Sequence[str], *,
                     entity_type: str = "run") -> dict[str, tuple[int, int]]:
        """Per run holding ``metric``: (newest generation, its highest step), from ``series_stats``."""
        params = {"project": project, "entity_type": entity_type, "metric": metric, "ids": list(runs)}
        return {entity_id: (int(generation), int(step)) for entity_id, generation, step in self._rows(q.HEADS, params)}

    def curve_plans(self, project: str, runs: Sequence[str], metric: str, *, points: int = 1000,
                    entity_type: str = "run") -> dict[str, dict[str, Any]]:
        """How each run's ``metric`` curve is bucketed and read (:func:`trackstream.sinks.curves.plan_curves`)."""
        return plan_curves(self._rows, project, runs, metric, points=points, entity_type=entity_type)

    def curve_buckets(self, project: str, metric: str, plans: Mapping[str, Mapping[str, Any]], *,
                      since: Mapping[str, int] | None = None,
                      entity_type: str = "run") -> dict[str, list[dict[str, Any]]]:
        """Buckets of planned curves, all or from ``since[run]`` on (:func:`trackstream.sinks.curves.fetch_buckets`)."""
        return fetch_buckets(self._rows, project, metric, plans, since=since, entity_type=entity_type)

    def alerts(self, project: str, *, entity_type: str = "run", runs: Sequence[str] | None = None,
               state: str | None = None, since_ns: int | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Alert transitions, newest first: {rule_id, when, project, entity_type, run, metric, state, step, value,
        rank, threshold, time, time_ns, message, active} (:func:`trackstream.sinks.alert_reads.read_alerts`)."""
        return read_alerts(self._rows, project, entity_type=entity_type, runs=runs, state=state, since_ns=since_ns,
                           limit=limit)

    # -- SQL escape hatch -----------------------------------------------------------------------------

    def sql(self, query: str, parameters: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one read-only statement with ``{name:Type}`` parameters bound server-side; returns its rows.

        The statement must pass the allow-list of sinks/sql_guard.py (parsed by ClickHouse itself) and then runs
        with ``readonly = 1``. Raises QueryError for a refused statement (the message says what and why) or a failure.
        """
        rows: list[tuple[Any, ...]] = self.sql_table(query, parameters)["rows"]
        return rows

    def sql_table(self, query: str, parameters: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """:meth:`sql` with the result's column names: ``{"columns": [str], "rows": [tuple]}``."""
        checked = check_statement(self.backend, query, parameters)
        try:
            columns, rows = self.backend.query(checked.text, parameters, readonly=True)
        except QueryError as exc:
            raise no_tables_error(exc, self.backend) or exc from exc
        return {"columns": list(columns), "rows": rows}

    # -- one entity ---------------------------------------------------------------------------------------

    def entity(self, project: str, entity_id: str, *, entity_type: str = "run") -> dict[str, Any]:
        """One run or model as a row of :meth:`runs` without metric summaries: id, name, status, params, tags,
        started_at, ended_at, lost_points, ranks (``status`` None while only its points are stored: points and
        states travel apart). Raises :class:`~trackstream.schemas.errors.NotFoundError` (with the closest ids)
        when the project holds no such entity."""
        scope = {"project": project, "entity_type": entity_type}
        found = read_entities(self._rows, scope, [entity_id])
        if not found:  # unknown (raises), or its points are stored before its state (they travel apart)
            lookup.check_ids(self._rows, scope, [entity_id])
            found = [{"id": entity_id, "name": "", "status": None, "tags": {}, "started_at": None, "ended_at": None,
                      "lost_points": 0, "ranks": []}]
        row = found[0]
        row["params"] = read_params(self._rows, scope, [entity_id]).get(entity_id, {})
        return row

    def history(self, project: str, entity_id: str, metric: str, *, entity_type: str = "run",
                ranks: bool = False) -> list[dict[str, Any]]:
        """Every point of one series in step order: ``{"step", "value", "time_ns"}``, the value the per-step mean
        over ranks (time: the latest rank's, in ms precision); with ``ranks``, every rank's rows, with ``"rank"``.
        The newest generation (after an ``overwrite``). Raises NotFoundError for an unknown entity or metric."""
        scope = {"project": project, "entity_type": entity_type}
        params = scope | {"entity_id": entity_id, "metric": metric}
        if ranks:
            rows = self._rows(q.HISTORY_RANKS, params)
        else:
            select = "entity_id = {entity_id:String} AND metric = {metric:String}"
            rows = self._rows(q.fill(q.HISTORY, per_step=q.per_step(select)), params)
        if not rows:
            lookup.check_ids(self._rows, scope, [entity_id])
            lookup.check_entity_metric(self._rows, scope, entity_id, metric)
        keys = ("step", "value", "time_ns", "rank") if ranks else ("step", "value", "time_ns")
        return [dict(zip(keys, (int(row[0]), as_float(row[1]), int(row[2]), *map(int, row[3:])), strict=True))
                for row in rows]

    # -- SDK read-back --------------------------------------------------------------------------------

    def entity_metrics(self, entity: EntityRef) -> dict[str, float | list[float]]:
        """docs/metrics.md: single values and one-point series read as numbers, longer series as per-step lists."""
        sql = q.fill(q.ENTITY_METRICS, per_step=q.per_step("entity_id = {entity_id:String}"))
        params = {"project": entity.project, "entity_type": entity.type, "entity_id": entity.id}
        metrics: dict[str, float | list[float]] = {}
        for metric, single, latest, series in self._rows(sql, params):
            if single:
                metrics[metric] = float(latest)
            elif len(series) == 1:
                metrics[metric] = float(series[0])
            else:
                metrics[metric] = [float(value) for value in series]
        return metrics

    def wait_ingested(self, entity: EntityRef, producer_id: str, seq: int, *, timeout_s: float = 60.0) -> None:
        """Return once the producer's envelope ``seq`` (and everything before it) is queryable."""
        params = {"project": entity.project, "entity_type": entity.type, "entity_id": entity.id,
                  "producer_id": producer_id}
        deadline = time.monotonic() + timeout_s
        delay = 0.02
        seen = -1
        while True:
            (top, count), = self._rows(q.INGESTED, params)
            seen = int(top) if count else -1
            if seen >= seq:
                return
            if time.monotonic() >= deadline:
                raise IngestTimeout(
                    f"{entity.type} {entity.id!r} in project {entity.project!r}: envelope seq {seq} of producer "
                    f"{producer_id} not queryable after {timeout_s:g}s (latest ingested seq: "
                    f"{'none' if seen < 0 else seen}); is a sink running for this store ({self.backend!r})? "
                    "Start `trackstream local` (embedded) or `trackstream sink worker` (Kafka)."
                )
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.5)

    def close(self) -> None:
        """Close the backend the service reads from."""
        self.backend.close()


_MISSING_CODES: Final = {60: "UNKNOWN_TABLE", 81: "UNKNOWN_DATABASE"}
_UNKNOWN_IDENTIFIER: Final = 47


def no_tables_error(exc: QueryError, backend: Backend) -> QueryError | None:
    """A clear error for a query that failed because the store has no trackstream tables yet, or lacks columns a
    newer trackstream added (``schema.ADDED_COLUMNS``), else None.

    Reads never create or alter tables (a reader may hold SELECT only): the writers do, and ``trackstream migrate``.
    """
    text = str(exc)
    unknown = exc.code == _UNKNOWN_IDENTIFIER or "UNKNOWN_IDENTIFIER" in text
    if unknown and any(f"`{name}`" in text for _table, name in ADDED_COLUMNS):
        reason = text.split(" In scope", maxsplit=1)[0]  # the statement that follows is long and says nothing more
        return QueryError(f"the store {backend!r} was made by an older trackstream and lacks columns this one reads "
                          f"({reason}). Run `trackstream migrate` against it (or start a sink, which migrates): it "
                          "adds them in place, keeping the data", code=exc.code)
    if exc.code not in _MISSING_CODES and not any(name in str(exc) for name in _MISSING_CODES.values()):
        return None
    return QueryError(f"the store {backend!r} has no trackstream tables yet ({exc}): nothing has been written to "
                      "it. Log metrics first (writers create the tables) or create them with `trackstream migrate`",
                      code=exc.code)


def _grouped(rows: Iterable[dict[str, Any]], by: list[str]) -> list[dict[str, Any]]:
    """One row per distinct combination of the ``by`` params: mean, std (population), min, max over the runs'
    values (NaN skipped), and the runs' NaN / ±Inf counts summed with the first steps' minimum."""
    groups: dict[bytes, tuple[list[Any], list[dict[str, Any]]]] = {}
    for row in rows:
        values = [row["params"].get(name) for name in by]
        key = orjson.dumps([[type(v).__name__, v] for v in values], option=orjson.OPT_SERIALIZE_NUMPY)
        groups.setdefault(key, (values, []))[1].append(row)
    result = []
    for values, members in groups.values():
        numbers = [member["value"] for member in members]
        finite = [v for v in numbers if not math.isnan(v)]
        mean = math.fsum(finite) / len(finite) if finite else _NAN
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / len(finite)) if finite else _NAN
        result.append({
            **dict(zip(by, values, strict=True)), "runs": len(numbers), "mean": mean,
            "std": std if math.isfinite(mean) else _NAN,
            "min": min(finite) if finite else _NAN, "max": max(finite) if finite else _NAN,
            "nan_count": sum(member["nan_count"] for member in members),
            "inf_count": sum(member["inf_count"] for member in members),
            **{key: min((m[key] for m in members if m[key] is not None), default=None)
               for key in ("first_nan_step", "first_inf_step")},
        })
    return result
