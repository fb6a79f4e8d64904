"""The read queries (docs/queries.md). Every value is a ``{name:Type}`` parameter; only identifiers are fixed text.

Shared semantics, also what the brute-force tests compute:

- Only the newest ``generation`` of an (entity, metric) is visible (an overwrite hides everything before it).
- ``points FINAL`` collapses replayed points and keeps the later value of a step logged twice.
- ``series_stats`` and ``series_blocks`` (written with every batch of points, sinks/rollup.py) answer compare
  and long curves without scanning points, but only for series that provably hold no duplicate row: one rank,
  and write segments that never share a step. A replay without deduplication token, a step logged twice, or several
  ranks fall back to the scan, so results never depend on which path served them. (Mean and count are the
  duplicate-sensitive ones; last/first/min/max would survive exact replays, but a re-logged step would not.)
  A write that stored points but crashed before its statistics, then replayed without token, leaves two
  identical copies in points and one in the statistics: still exact. Ties of min / max go to the smallest step.
- curves buckets: ``query.curve_plan`` (block-aligned once a bucket spans 64 steps), the same on every path;
  the scan of one-rank series without duplicates skips ``FINAL``.
- A series is read per step: the mean over ranks. ``single`` values: the latest by time wins (ties: higher step).
- min / max / mean skip NaN (a NaN step is kept in ``last`` / ``first``); ±Inf count as values.
- runs() metric summaries follow the same rules (stats where exact, else ``points FINAL``): ``count`` is the
  number of distinct steps, ``last`` / ``last_step`` the highest step, min / max over the per-step cross-rank
  mean. The streams' ``summaries`` table is not read: it deduplicates by (producer_id, seq) only, so points
  re-sent by another producer (a re-import, a replay from a new incarnation) count twice there.
"""

from __future__ import annotations

from typing import Final

_SCOPE: Final = "project = {project:String} AND entity_type = {entity_type:String}"

# True when no (rank, step) of a series was inserted twice: its insert segments are pairwise disjoint.
_DISJOINT: Final = "arrayAll((a, b) -> a.1 > b.2, arrayPopFront(arraySort(<SEG>)), arrayPopBack(arraySort(<SEG>)))"


def disjoint(segments: str) -> str:
    """SQL condition, true when the ``(first_step, last_step)`` tuples of array expression ``segments`` do not overlap.

    After sorting, each segment must start after the previous one ends: no (rank, step) was inserted twice.
    """
    return _DISJOINT.replace("<SEG>", segments)


# The newest generation of each selected (entity, metric), how many ranks wrote it and whether it is clean (no
# duplicate rows in ``points``), from ``series_stats``.
_NEWEST: Final = """
    SELECT entity_id, metric, generation FROM (
        SELECT entity_id, metric, generation, uniqExact(rank) AS ranks, anyLast(kind) AS kind,
               <CLEAN> AS clean
        FROM series_stats
        WHERE <SCOPE> AND <SELECT>
        GROUP BY entity_id, metric, generation
        ORDER BY generation DESC
        LIMIT 1 BY entity_id, metric
    ) WHERE <RANKS> AND <KIND>
"""

# One row per (entity, metric, step): the value (cross-rank mean), the latest value by time (for single values)
# and the kind. Series written by one rank are read straight from ``points`` (a step is one row there), with
# ``FINAL`` only when the series holds duplicates; only several ranks need the per-step GROUP BY.
_ONE_RANK: Final = """
    SELECT entity_id, metric, step, value AS v, value AS lv, time AS t, kind
    FROM points <FINAL>
    WHERE <SCOPE> AND <SELECT> AND (entity_id, metric, generation) IN (<NEWEST>)
"""
_RANKS: Final = """
    SELECT entity_id, metric, step, if(count() = 1, any(value), avg(value)) AS v, argMax(value, time) AS lv,
           max(time) AS t, anyLast(kind) AS kind
    FROM points FINAL
    WHERE <SCOPE> AND <SELECT> AND (entity_id, metric, generation) IN (<NEWEST>)
    GROUP BY entity_id, metric, step
"""


def fill(template: str, **parts: str) -> str:
    """Substitute ``<NAME>`` placeholders (braces are left alone: they are ClickHouse query parameters)."""
    for name, text in parts.items():
        template = template.replace(f"<{name.upper()}>", text)
    return template


def newest(select: str, ranks: str = "1", kind: str = "1") -> str:
    """SQL subquery of ``(entity_id, metric, generation)``: the newest generation per selected (entity, metric).

    Read from ``series_stats``; ``ranks`` and ``kind`` are conditions on its ``ranks``, ``kind`` and ``clean`` columns.
    """
    return fill(_NEWEST, scope=_SCOPE, select=select, ranks=ranks, kind=kind,
                clean=disjoint("groupArrayArray(segments)"))


def per_step(select: str, kind: str = "1") -> str:
    """Per-step rows for the (entity, metric) pairs matched by ``select`` (a condition on bound parameters)."""
    clean = fill(_ONE_RANK, scope=_SCOPE, select=select, final="", newest=newest(select, "ranks = 1 AND clean", kind))
    dirty = fill(_ONE_RANK, scope=_SCOPE, select=select, final="FINAL",
                 newest=newest(select, "ranks = 1 AND NOT clean", kind))
    several = fill(_RANKS, scope=_SCOPE, select=select, newest=newest(select, "ranks > 1", kind))
    return f"{clean}\n    UNION ALL\n{dirty}\n    UNION ALL\n{several}"


_NOT_NAN: Final = "NOT isNaN(v)"

# compare by scanning points: only the requested aggregate is computed; series and single values are separate
# branches, chosen from ``series_stats.kind``. Ties of min / max go to the smallest step.
COMPARE_AGGREGATES: Final = {
    "last": "argMax(v, step), max(step)",
    "first": "argMin(v, step), min(step)",
    "min": f"minIfOrNull(v, {_NOT_NAN}), argMinIf(step, (v, step), {_NOT_NAN})",
    "max": f"maxIfOrNull(v, {_NOT_NAN}), argMaxIf(step, (v, -step), {_NOT_NAN})",
    "mean": f"avgIf(v, {_NOT_NAN}), max(step)",
}
_COMPARE: Final = """
SELECT entity_id, <AGGREGATE> FROM (<SERIES>) GROUP BY entity_id
UNION ALL
SELECT entity_id, argMax(lv, (t, step)), argMax(step, (t, step)) FROM (<SINGLE>) GROUP BY entity_id
"""


def compare_sql(select: str, agg: str) -> str:
    """Rows (entity_id, value, step) for every entity matched by ``select``, by scanning ``points``."""
    return fill(_COMPARE, aggregate=COMPARE_AGGREGATES[agg], series=per_step(select, "kind != 'single'"),
                single=per_step(select, "kind = 'single'"))


# compare from the statistics alone: per entity, the newest generation's merged statistics. ``exact`` says
# whether they answer the query (one rank, and no duplicate rows or a single value); otherwise the caller scans.
# Only the tuple aggregate the requested ``agg`` needs is computed (they are the expensive part).
STATS_AGGREGATES: Final = {
    "last": ("max(last)", "pick.2", "pick.1"),
    "first": ("min(first)", "pick.2", "pick.1"),
    "min": ("min(low)", "if(finite > 0, pick.1, NULL)", "if(finite > 0, pick.2, NULL)"),
    "max": ("max(high)", "if(finite > 0, pick.1, NULL)", "if(finite > 0, -pick.2, NULL)"),
    "mean": ("0", "if(finite > 0, total / finite, nan)", "max_step"),
}
_STATS: Final = f"""
SELECT entity_id, ranks = 1 AND (single OR {disjoint("seg")}) AS exact,
       if(single, latest.3, <VALUE>) AS value, if(single, latest.2, <STEP>) AS step
FROM (
    SELECT entity_id, generation, if(min(rank) = max(rank), 1, 2) AS ranks, anyLast(kind) = 'single' AS single,
           groupArrayArray(segments) AS seg, sum(finite) AS finite, sum(total) AS total,
           max(max_step) AS max_step, <PICK> AS pick, maxIf(latest, kind = 'single') AS latest
    FROM series_stats
    WHERE {_SCOPE} AND <SELECT>
    GROUP BY entity_id, generation
    ORDER BY generation DESC
    LIMIT 1 BY entity_id
)
"""


def stats_sql(select: str, agg: str) -> str:
    """Rows (entity_id, exact, value, step) from ``series_stats`` for the entities matched by ``select``."""
    pick, value, step = STATS_AGGREGATES[agg]
    return fill(_STATS, select=select, pick=pick, value=value, step=step)


# curves planning: per entity the newest generation's step range, kind, ranks and cleanliness.
PLAN: Final = f"""
SELECT entity_id, generation, lo, hi, kind = 'single', ranks, {disjoint("seg")} AS clean FROM (
    SELECT entity_id, generation, min(min_step) AS lo, max(max_step) AS hi, uniqExact(rank) AS ranks,
           anyLast(kind) AS kind, groupArrayArray(segments) AS seg
    FROM series_stats
    WHERE {_SCOPE} AND <SELECT>
    GROUP BY entity_id, generation
    ORDER BY generation DESC
    LIMIT 1 BY entity_id
)
"""

# Per-entity bucket origin and width (steps), bound as arrays.
_BOUNDS: Final = """
    SELECT t.1 AS entity_id, t.2 AS generation, t.3 AS lo, t.4 AS width
    FROM (SELECT arrayJoin(arrayZip({ids:Array(String)}, {generations:Array(UInt32)}, {los:Array(Int64)},
                                    {widths:Array(Int64)})) AS t)
"""

# Per-step rows of the planned entities, by how they were written: one rank without duplicates (no FINAL
# needed), one rank with duplicates (FINAL), several ranks (FINAL, mean over ranks per step).
_ROWS: Final = {
    "clean": "SELECT entity_id, generation, step, value AS v FROM points WHERE <WHERE>",
    "dirty": "SELECT entity_id, generation, step, value AS v FROM points FINAL WHERE <WHERE>",
    "ranks": """SELECT entity_id, generation, step, if(count() = 1, any(value), avg(value)) AS v FROM points FINAL
        WHERE <WHERE> GROUP BY entity_id, generation, step""",
}
_ROWS_WHERE: Final = f"{_SCOPE} AND metric = {{metric:String}} AND entity_id IN {{ids:Array(String)}}"

CURVES: Final = """
SELECT s.entity_id AS entity_id, intDiv(s.step - b.lo, b.width) AS bucket,
       min(s.step) AS step_from, max(s.step) AS step_to,
       minIfOrNull(s.v, NOT isNaN(s.v)) AS min, maxIfOrNull(s.v, NOT isNaN(s.v)) AS max,
       avgIf(s.v, NOT isNaN(s.v)) AS avg, argMax(s.v, s.step) AS last
FROM (<ROWS>) AS s
INNER JOIN (<BOUNDS>) AS b ON s.entity_id = b.entity_id AND s.generation = b.generation
GROUP BY entity_id, bucket
ORDER BY entity_id, bucket
"""


def curves_sql(category: str) -> str:
    """curves by scanning points for the entities of one plan category (``clean``, ``dirty``, ``ranks``)."""
    return fill(CURVES, rows=fill(_ROWS[category], where=_ROWS_WHERE), bounds=_BOUNDS)


# curves from ``series_blocks``, whose rows go straight into buckets (``lo`` and ``width`` are in steps, whole
# blocks: see ``query.curve_plan``); ``i`` finds an entity's bucket origin and width in the bound arrays.
CURVES_ROLLUP: Final = f"""
SELECT entity_id, indexOf({{ids:Array(String)}}, entity_id) AS i,
       intDiv(block * {{block_steps:Int64}} - {{los:Array(Int64)}}[i], {{widths:Array(Int64)}}[i]) AS bucket,
       min(min_step) AS step_from, max(max_step) AS step_to,
       if(sum(finite) > 0, min(low), NULL) AS min, if(sum(finite) > 0, max(high), NULL) AS max,
       sum(total) / sum(finite) AS avg, argMax(last.2, last.1) AS last
FROM series_blocks
WHERE {_ROWS_WHERE} AND level = {{level:UInt8}} AND generation = {{generations:Array(UInt32)}}[i]
GROUP BY entity_id, i, bucket
ORDER BY entity_id, bucket
"""


ENTITY_METRICS: Final = """
SELECT metric, anyLast(kind) = 'single' AS single, argMax(lv, (t, step)) AS latest,
       arrayMap(x -> x.2, arraySort(x -> x.1, groupArray((step, v)))) AS series
FROM (<PER_STEP>)
GROUP BY metric
"""

RUNS: Final = f"""
SELECT entity_id, name, status, mapKeys(tags) AS tag_keys, mapValues(tags) AS tag_values, started_ns, ended_ns,
       lost_points, producers
FROM entities FINAL
WHERE {_SCOPE} <SELECT>
ORDER BY started_ns, entity_id
"""

NAMES: Final = f"""
SELECT entity_id, name FROM entities FINAL
WHERE {_SCOPE} <SELECT>
"""

PARAMS: Final = f"""
SELECT entity_id, key, type, json, text FROM params FINAL
WHERE {_SCOPE} <SELECT>
ORDER BY entity_id, key
"""

# runs(): per (entity, metric) summary (kind, count, last, last_step, min, max) of the newest generation, from
# ``series_stats`` where exact (the same rule as compare: one rank, and a single value or disjoint segments, so
# ``rows`` counts distinct steps), else ``exact`` = 0 and the caller scans (``SUMMARY_SCAN``). A single value
# summarises as count 1 with last = min = max = the latest value by time.
SUMMARY_STATS: Final = f"""
SELECT entity_id, metric, generation, kind_, ranks = 1 AND (single OR {disjoint("seg")}) AS exact,
       if(single, 1, rows_) AS count_, if(single, latest_.3, last_.2), if(single, latest_.2, last_.1),
       if(single, latest_.3, if(finite_ > 0, low_.1, nan)), if(single, latest_.3, if(finite_ > 0, high_.1, nan))
FROM (
    SELECT entity_id, metric, generation, if(min(rank) = max(rank), 1, 2) AS ranks, anyLast(kind) AS kind_,
           kind_ = 'single' AS single, groupArrayArray(segments) AS seg, sum(rows) AS rows_, sum(finite) AS finite_,
           max(last) AS last_, min(low) AS low_, max(high) AS high_, maxIf(latest, kind = 'single') AS latest_
    FROM series_stats
    WHERE {_SCOPE} <SELECT>
    GROUP BY entity_id, metric, generation
    ORDER BY generation DESC
    LIMIT 1 BY entity_id, metric
)
"""

# The same summaries by scanning ``points FINAL`` for the (entity, metric, generation) triples bound as parallel
# arrays: per step the cross-rank mean (``v``) and the latest value by time (``lv``, for single values); then
# per series the step count, last, and NaN-free min / max of ``v``, and the latest ``lv`` (ties: higher step).
# The caller picks the series or the single-value figures by kind.
SUMMARY_SCAN: Final = f"""
SELECT entity_id, metric, count(), argMax(v, step), max(step), minIfOrNull(v, NOT isNaN(v)),
       maxIfOrNull(v, NOT isNaN(v)), argMax(lv, (t, step)), argMax(step, (t, step))
FROM (
    SELECT entity_id, metric, step, if(count() = 1, any(value), avg(value)) AS v, argMax(value, time) AS lv,
           max(time) AS t
    FROM points FINAL
    WHERE {_SCOPE} AND entity_id IN {{scan_ids:Array(String)}}
      AND (entity_id, metric, generation) IN (
          SELECT k.1, k.2, k.3 FROM (SELECT arrayJoin(arrayZip({{scan_ids:Array(String)}},
              {{scan_metrics:Array(String)}}, {{scan_generations:Array(UInt32)}})) AS k))
    GROUP BY entity_id, metric, step
)
GROUP BY entity_id, metric
"""


INGESTED: Final = """
SELECT max(seq), count() FROM ingested
WHERE project = {project:String} AND entity_type = {entity_type:String} AND entity_id = {entity_id:String}
  AND producer_id = {producer_id:String}
"""
