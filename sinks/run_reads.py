"""The runs listing (``QueryService.runs``, docs/queries.md) and the entity reads it shares with compare and the
live page: entities, params, names and per-metric summaries, over a ``rows`` function (runs a query, returns its
rows), as :mod:`trackstream.sinks.curves` and :mod:`trackstream.sinks.alert_reads` do.

``scope`` is ``{"project", "entity_type"}``; ``ids`` (a sequence of entity ids, or None for all) narrows every
read in SQL, so a page that shows ten runs of a project of 10,000 reads ten.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from trackstream.sinks import lookup, run_filter
from trackstream.sinks import sql as q
from trackstream.sinks.backend import Row
from trackstream.sinks.batch import param_value
from trackstream.sinks.curves import as_float

RowsFn = Callable[[str, Mapping[str, Any]], list[Row]]


def id_filter(ids: Sequence[str] | None) -> tuple[str, dict[str, Any]]:
    """The SQL condition (`` AND entity_id IN {ids:Array(String)}``, or none) and its bound parameters."""
    if ids is None:
        return "", {}
    return " AND entity_id IN {ids:Array(String)}", {"ids": list(ids)}


def specials(nans: int, infs: int, nan_step: int | None, inf_step: int | None) -> dict[str, Any]:
    """The NaN / ±Inf fields of a compare row or metric summary: ``nan_count``, ``inf_count``, ``first_nan_step``
    and ``first_inf_step`` (None when there is none)."""
    return {"nan_count": int(nans), "inf_count": int(infs),
            "first_nan_step": None if nan_step is None else int(nan_step),
            "first_inf_step": None if inf_step is None else int(inf_step)}


def read_params(rows: RowsFn, scope: dict[str, Any], ids: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """Per entity id, its params with the JSON types they were logged with."""
    select, extra = id_filter(ids)
    params: dict[str, dict[str, Any]] = {}
    for entity_id, key, kind, json_text, text in rows(q.fill(q.PARAMS, select=select), scope | extra):
        params.setdefault(entity_id, {})[key] = param_value(kind, json_text, text)
    return params


def read_entities(rows: RowsFn, scope: dict[str, Any], ids: Sequence[str] | None) -> list[dict[str, Any]]:
    """The entities in start order: id, name, status, tags, started_at, ended_at, lost_points, ranks."""
    select, extra = id_filter(ids)
    return [
        {
            "id": entity_id, "name": name, "status": status, "tags": dict(zip(keys, values, strict=True)),
            "started_at": started, "ended_at": ended, "lost_points": lost, "ranks": ranks,
        }
        for entity_id, name, status, keys, values, started, ended, lost, ranks in rows(
            q.fill(q.RUNS, select=select), scope | extra)
    ]


def read_names(rows: RowsFn, scope: dict[str, Any], ids: Sequence[str] | None) -> dict[str, str]:
    """Per entity id, its name."""
    select, extra = id_filter(ids)
    return dict(rows(q.fill(q.NAMES, select=select), scope | extra))


def read_runs(rows: RowsFn, project: str, *, entity_type: str = "run", ids: Sequence[str] | None = None,
              status: str | Sequence[str] | None = None, params: Mapping[str, Any] | None = None,
              tags: Mapping[str, str] | None = None, order_by: str | None = None,
              limit: int | None = None) -> list[dict[str, Any]]:
    """``QueryService.runs`` over ``rows`` (see there); ``ids``: only these entities (ids not stored are left out,
    so a page can name a run about to start). Raises NotFoundError for an unknown project."""
    scope = {"project": project, "entity_type": entity_type}
    entities = read_entities(rows, scope, ids)
    if not entities:
        lookup.check_project(rows, project)
        return run_filter.search([], status=status, params=params, tags=tags, order_by=order_by, limit=limit)
    params_filter, found = params, read_params(rows, scope, ids)
    metrics: dict[str, dict[str, Any]] = {}
    for entity_id, metric, kind, count, last, last_step, low, high, *special in summary_rows(rows, scope, ids):
        metrics.setdefault(entity_id, {})[metric] = {
            "kind": kind, "count": count, "last": as_float(last), "last_step": last_step, "min": as_float(low),
            "max": as_float(high), **specials(*special),
        }
    for entity in entities:
        entity["params"] = found.get(entity["id"], {})
        entity["metrics"] = metrics.get(entity["id"], {})
    return run_filter.search(entities, status=status, params=params_filter, tags=tags, order_by=order_by,
                             limit=limit)


def summary_rows(rows: RowsFn, scope: dict[str, Any], ids: Sequence[str] | None) -> list[Row]:
    """Per (entity, metric): kind, count, last, last_step, min, max, then NaN and ±Inf counts and first steps,
    of the newest generation, exact, sorted by entity and metric.

    Read like compare: from ``series_stats`` where that is exact, else by scanning ``points`` (FINAL) for
    the remaining pairs, so a replay from another producer never counts a point twice. A series counts its
    distinct steps; with several ranks every figure is over the per-step cross-rank mean.
    """
    select, extra = id_filter(ids)
    found: list[Row] = []
    scan: dict[tuple[str, str], tuple[int, str]] = {}
    for entity_id, metric, generation, kind, exact, *summary in rows(
            q.fill(q.SUMMARY_STATS, select=select), scope | extra):
        if exact:
            found.append((entity_id, metric, kind, *summary))
        else:
            scan[(entity_id, metric)] = (generation, kind)
    if scan:
        scan_ids, names = (list(column) for column in zip(*scan, strict=True))
        bound = scope | {"scan_ids": scan_ids, "scan_metrics": names,
                         "scan_generations": [generation for generation, _kind in scan.values()]}
        for entity_id, metric, count, last, last_step, low, high, *special, latest, at in rows(
                q.SUMMARY_SCAN, bound):
            kind = scan[(entity_id, metric)][1]
            if kind == "single":
                nan, inf = math.isnan(latest), math.isinf(latest)
                found.append((entity_id, metric, kind, 1, latest, at, latest, latest, int(nan), int(inf),
                              at if nan else None, at if inf else None))
            else:
                found.append((entity_id, metric, kind, count, last, last_step, low, high, *special))
    return sorted(found, key=lambda row: (row[0], row[1]))
