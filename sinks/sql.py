"""The read queries (docs/queries.md). Every value is a ``{name:Type}`` parameter; only identifiers are fixed text.

Shared semantics, also what the brute-force tests compute:

- Only the newest ``generation`` of an (entity, metric) is visible (an overwrite hides everything before it).
- ``points FINAL`` collapses replayed points and keeps the later value of a step logged twice.
- ``points FINAL`` keeps the last write of a (rank, step): the highest ``version`` (write order, not clocks).
- A series is read from one *source* rank when that is exact: its only rank, or, for a series of several ranks,
  rank ``CROSS_RANK`` (the stream's per-step mean over the ranks, sinks/schema.py) when it is *pooled*: every rank's
  series is clean, the cross-rank series is clean, and its step counts cover every rank point
  (``covers`` = ``rows``), so each step's mean is over every rank that logged it, each exactly once. Otherwise the
  ranks are scanned (``points FINAL``, mean per step), so results never depend on which path served them.
- ``series_stats`` and ``series_blocks`` (written with every batch of points, sinks/rollup.py) answer compare
  and long curves from the source without scanning points, but only for a source that provably holds no
  duplicate row (*clean*: write segments that never share a step). A replay without deduplication token or a
  step logged twice falls back to the scan. (Mean and count are the duplicate-sensitive ones; last/first/min/max
  would survive exact replays, but a re-logged step would not.) A write that stored points but crashed before
  its statistics, then replayed without token, leaves two identical copies in points and one in the statistics:
  still exact. Ties of min / max go to the smallest step.
- curves buckets: ``curves.curve_plan`` (block-aligned once a bucket spans 64 steps), the same on every path;
  the scan of a clean source skips ``FINAL``.
- A series is read per step: the mean over ranks. ``single`` values: the latest by time wins (ties: higher step).
- min / max / mean skip NaN (a NaN step is kept in ``last`` / ``first``); ±Inf count as values. Never silently:
  compare rows, runs() summaries and curves buckets count the per-step values that are NaN and ±Inf (compare and
  summaries also give the smallest step of each). A single value counts its latest value only.
- runs() metric summaries follow the same rules (stats where exact, else ``points FINAL``): ``count`` is the
  number of distinct steps, ``last`` / ``last_step`` the highest step, min / max over the per-step cross-rank
  mean.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from trackstream.sinks.schema import CROSS_RANK, UNKNOWN_STEP

_SCOPE: Final = "project = {project:String} AND entity_type = {entity_type:String}"
_X: Final = str(CROSS_RANK)

# True when no (rank, step) of a series was inserted twice: its insert segments are pairwise disjoint.
_DISJOINT: Final = "arrayAll((a, b) -> a.1 > b.2, arrayPopFront(arraySort(<SEG>)), arrayPopBack(arraySort(<SEG>)))"


def disjoint(segments: str) -> str:
    """SQL condition, true when the ``(first_step, last_step)`` tuples of array expression ``segments`` do not overlap.

    After sorting, each segment must start after the previous one ends: no (rank, step) was inserted twice.
    """
    return _DISJOINT.replace("<SEG>", segments)


def tagged_disjoint(segments: str) -> str:
    """SQL condition over ``(rank, first_step, last_step)`` tuples: within each rank no two segments overlap."""
    return ("arrayAll((a, b) -> a.1 != b.1 OR a.2 > b.3, arrayPopFront(arraySort(<SEG>)), "
            "arrayPopBack(arraySort(<SEG>)))").replace("<SEG>", segments)


def fill(template: str, **parts: str) -> str:
    """Substitute ``<NAME>`` placeholders (braces are left alone: they are ClickHouse query parameters)."""
    for name, text in parts.items():
        template = template.replace(f"<{name.upper()}>", text)
    return template


# Per (entity, metric) the newest generation, from ``series_stats`` in one aggregation: how many ranks wrote it
# (``ranks``, the cross-rank rows aside), its kind, whether the cross-rank series is ``pooled`` (see the module
# docstring), the source rank to read (``src``), whether that source is ``clean`` (and its statistics count NaN
# and ±Inf: rows written before they did make a series unclean), and the read ``mode``: clean
# (the source without FINAL), dirty (the source with FINAL) or ranks (every rank with FINAL, mean per step).
# Every rank's cleanliness is one check over the segments tagged with their rank (a step may repeat across
# ranks, not within one), so no per-rank grouping is needed: a multi-rank series costs about what a single-rank
# one does. ``<PICKS>`` adds aggregates of the source's rows as ``<name>_s`` (see :func:`view`).
_VIEW: Final = f"""
    SELECT entity_id, metric, generation, ranks, kind_ AS kind, pooled, src, clean,
           multiIf(ranks > 1 AND NOT pooled, 'ranks', clean, 'clean', 'dirty') AS mode <OUTER>
    FROM (
        SELECT entity_id, metric, generation, uniqExactIf(rank, rank != {_X}) AS ranks,
               anyLastIf(kind, rank != {_X}) AS kind_,
               {tagged_disjoint(f"groupArrayArrayIf(arrayMap(s -> (rank, s.1, s.2), segments), rank != {_X})")}
                   AS ranks_clean,
               ranks > 1 AND ranks_clean AND countIf(rank = {_X}) > 0
                   AND {disjoint(f"groupArrayArrayIf(segments, rank = {_X})")}
                   AND sumIf(covers, rank = {_X}) = sumIf(rows, rank != {_X}) AS pooled,
               if(ranks > 1, {_X}, anyIf(rank, rank != {_X})) AS src,
               if(ranks > 1, pooled, ranks_clean) AND min(nan_step) != {UNKNOWN_STEP} AS clean <PICKS>
        FROM series_stats
        WHERE {_SCOPE} AND <SELECT>
        GROUP BY entity_id, metric, generation
        HAVING ranks > 0
        ORDER BY generation DESC
        LIMIT 1 BY entity_id, metric
    )
"""

# An aggregate of ``series_stats`` rows: (function, column) or (function, column, condition), e.g. ("sum", "rows").
Aggregate = tuple[str, str] | tuple[str, str, str]


def _aggregate_if(aggregate: Aggregate, condition: str) -> str:
    function, column, *also = aggregate
    return f"{function}If({column}, {' AND '.join([condition, *also])})"


def view(select: str, extra: Mapping[str, Aggregate] | None = None, *,
         over_ranks: Mapping[str, Aggregate] | None = None) -> str:
    """SQL subquery over ``series_stats``: per (entity, metric) matched by ``select``, the newest generation's
    ``ranks``, ``kind``, ``pooled``, ``src``, ``clean`` and ``mode`` (see ``_VIEW``), plus ``<name>_s`` for each
    ``name: aggregate`` of ``extra``: the aggregate over the source's rows, and ``name`` for each ``name: aggregate``
    of ``over_ranks``: the aggregate over every rank's rows (the cross-rank rows aside).
    """
    extra = extra or {}
    picks = "".join(f", if(ranks > 1, {_aggregate_if(aggregate, f'rank = {_X}')}, "
                    f"{_aggregate_if(aggregate, f'rank != {_X}')}) AS {name}_s" for name, aggregate in extra.items())
    picks += "".join(f", {_aggregate_if(aggregate, f'rank != {_X}')} AS {name}"
                     for name, aggregate in (over_ranks or {}).items())
    outer = "".join(f", {name}_s" for name in extra) + "".join(f", {name}" for name in over_ranks or {})
    return fill(_VIEW, select=select, picks=picks, outer=outer)


# One row per (entity, metric, step): the value (mean over ranks), the latest value by time (for single values) and
# the kind. A source is read straight from ``points`` (a step is one row there), with ``FINAL`` only when it is not
# clean; only series read from their ranks need the per-step GROUP BY.
_SOURCE: Final = """
    SELECT entity_id, metric, step, value AS v, value AS lv, time AS t, kind
    FROM points <FINAL>
    WHERE <SCOPE> AND <SELECT> AND (entity_id, metric, generation, rank) IN (
        SELECT entity_id, metric, generation, src FROM (<VIEW>) WHERE mode = '<MODE>' AND <KIND>)
"""
_RANKS: Final = f"""
    SELECT entity_id, metric, step, if(count() = 1, any(value), avg(value)) AS v, argMax(value, time) AS lv,
           max(time) AS t, anyLast(kind) AS kind
    FROM points FINAL
    WHERE <SCOPE> AND <SELECT> AND rank != {_X} AND (entity_id, metric, generation) IN (
        SELECT entity_id, metric, generation FROM (<VIEW>) WHERE mode = 'ranks' AND <KIND>)
    GROUP BY entity_id, metric, step
"""


def per_step(select: str, kind: str = "1") -> str:
    """Per-step rows for the (entity, metric) pairs matched by ``select`` (a condition on bound parameters);
    ``kind`` is a condition on the series' ``kind``."""
    series = view(select)
    clean = fill(_SOURCE, scope=_SCOPE, select=select, final="", view=series, mode="clean", kind=kind)
    dirty = fill(_SOURCE, scope=_SCOPE, select=select, final="FINAL", view=series, mode="dirty", kind=kind)
    ranks = fill(_RANKS, scope=_SCOPE, select=select, view=series, kind=kind)
    return f"{clean}\n    UNION ALL\n{dirty}\n    UNION ALL\n{ranks}"


_NOT_NAN: Final = "NOT isNaN(v)"
# Per series: how many per-step values are NaN and ±Inf, and the smallest step of each (NULL when none).
_SPECIALS: Final = ("countIf(isNaN(v)), countIf(isInfinite(v)), minIfOrNull(step, isNaN(v)), "
                    "minIfOrNull(step, isInfinite(v))")
# The same for a single value: its latest value ``<V>`` at step ``<STEP>``.
_SINGLE_SPECIALS: Final = ("toUInt64(isNaN(<V>)), toUInt64(isInfinite(<V>)), if(isNaN(<V>), <STEP>, NULL), "
                           "if(isInfinite(<V>), <STEP>, NULL)")

# compare by scanning points: only the requested aggregate is computed; series and single values are separate
# branches, chosen from ``series_stats.kind``. Ties of min / max go to the smallest step.
COMPARE_AGGREGATES: Final = {
    "last": "argMax(v, step), max(step)",
    "first": "argMin(v, step), min(step)",
    "min": f"minIfOrNull(v, {_NOT_NAN}), argMinIf(step, (v, step), {_NOT_NAN})",
    "max": f"maxIfOrNull(v, {_NOT_NAN}), argMaxIf(step, (v, -step), {_NOT_NAN})",
    "mean": f"avgIf(v, {_NOT_NAN}), max(step)",
}
_COMPARE: Final = f"""
SELECT entity_id, <AGGREGATE>, {_SPECIALS} FROM (<SERIES>) GROUP BY entity_id
UNION ALL
SELECT entity_id, argMax(lv, (t, step)) AS latest, argMax(step, (t, step)) AS at,
       {fill(_SINGLE_SPECIALS, v="latest", step="at")}
FROM (<SINGLE>) GROUP BY entity_id
"""


def compare_sql(select: str, agg: str) -> str:
    """Rows (entity_id, value, step, nan_count, inf_count, first_nan_step, first_inf_step) for every entity
    matched by ``select``, by scanning ``points``."""
    return fill(_COMPARE, aggregate=COMPARE_AGGREGATES[agg], series=per_step(select, "kind != 'single'"),
                single=per_step(select, "kind = 'single'"))


# compare from the statistics alone: per entity, the newest generation's merged statistics of its source.
# ``exact`` says whether they answer the query (a clean source: a single value logged twice at one step is not, its
# ``latest`` goes by clock where ``points FINAL`` goes by write order); otherwise the caller scans. Only the tuple
# aggregate the requested ``agg`` needs is computed (they are the expensive part).
STATS_AGGREGATES: Final[dict[str, tuple[Aggregate, str, str]]] = {
    "last": (("max", "last"), "pick_s.2", "pick_s.1"),
    "first": (("min", "first"), "pick_s.2", "pick_s.1"),
    "min": (("min", "low"), "if(finite_s > 0, pick_s.1, NULL)", "if(finite_s > 0, pick_s.2, NULL)"),
    "max": (("max", "high"), "if(finite_s > 0, pick_s.1, NULL)", "if(finite_s > 0, -pick_s.2, NULL)"),
    "mean": (("any", "0"), "if(finite_s > 0, total_s / finite_s, nan)", "hi_s"),
}
# From the statistics: the NaN / ±Inf counts and first steps of a series (the view's ``rows``, ``finite``,
# ``infinite``, ``nan_at``, ``inf_at`` picks), or of a single value's latest value.
_STATS_SPECIALS: Final = """
       if(kind = 'single', toUInt64(isNaN(latest_s.3)), rows_s - finite_s) AS nan_count,
       if(kind = 'single', toUInt64(isInfinite(latest_s.3)), infinite_s) AS inf_count,
       if(kind = 'single', if(isNaN(latest_s.3), latest_s.2, NULL), if(nan_count > 0, nan_at_s, NULL)),
       if(kind = 'single', if(isInfinite(latest_s.3), latest_s.2, NULL), if(inf_count > 0, inf_at_s, NULL))"""
SPECIALS_PICKS: Final[dict[str, Aggregate]] = {
    "rows": ("sum", "rows"), "finite": ("sum", "finite"), "infinite": ("sum", "infinite"),
    "nan_at": ("min", "nan_step"), "inf_at": ("min", "inf_step"), "latest": ("max", "latest", "kind = 'single'")}
_STATS: Final = f"""
SELECT entity_id, clean AS exact,
       if(kind = 'single', latest_s.3, <VALUE>) AS value, if(kind = 'single', latest_s.2, <STEP>) AS step,
       {_STATS_SPECIALS}
FROM (<VIEW>)
"""


def stats_sql(select: str, agg: str) -> str:
    """Rows (entity_id, exact, value, step, nan_count, inf_count, first_nan_step, first_inf_step) from
    ``series_stats`` for the entities matched by ``select``."""
    pick, value, step = STATS_AGGREGATES[agg]
    series = view(select, {"total": ("sum", "total"), "hi": ("max", "max_step"), "pick": pick, **SPECIALS_PICKS})
    return fill(_STATS, view=series, value=value, step=step)


# curves planning: per entity the newest generation's step range (of the source, or of every rank when they are
# scanned), its kind, ranks, whether the source is clean, and the source rank.
PLAN: Final = fill("""
SELECT entity_id, generation, if(mode = 'ranks', lo_all, lo_s), if(mode = 'ranks', hi_all, hi_s), kind = 'single',
       ranks, clean, src
FROM (<VIEW>)
""", view=view("<SELECT>", {"lo": ("min", "min_step"), "hi": ("max", "max_step")},
               over_ranks={"lo_all": ("min", "min_step"), "hi_all": ("max", "max_step")}))

# Per-entity bucket origin and width (steps), bound as arrays.
_BOUNDS: Final = """
    SELECT t.1 AS entity_id, t.2 AS generation, t.3 AS lo, t.4 AS width
    FROM (SELECT arrayJoin(arrayZip({ids:Array(String)}, {generations:Array(UInt32)}, {los:Array(Int64)},
                                    {widths:Array(Int64)})) AS t)
"""

# Per-step rows of the planned entities, by how they are read: a clean source (no FINAL needed), a source with
# duplicates (FINAL), several ranks (FINAL, mean over ranks per step).
_IN_SOURCE: Final = """(entity_id, rank) IN (SELECT t.1, t.2 FROM (
        SELECT arrayJoin(arrayZip({ids:Array(String)}, {srcs:Array(UInt32)})) AS t))"""
_ROWS: Final = {
    "clean": f"SELECT entity_id, generation, step, value AS v FROM points WHERE <WHERE> AND {_IN_SOURCE}",
    "dirty": f"SELECT entity_id, generation, step, value AS v FROM points FINAL WHERE <WHERE> AND {_IN_SOURCE}",
    "ranks": f"""SELECT entity_id, generation, step, if(count() = 1, any(value), avg(value)) AS v FROM points FINAL
        WHERE <WHERE> AND rank != {_X} GROUP BY entity_id, generation, step""",
}
_ROWS_WHERE: Final = f"{_SCOPE} AND metric = {{metric:String}} AND entity_id IN {{ids:Array(String)}}"

CURVES: Final = """
SELECT s.entity_id AS entity_id, intDiv(s.step - b.lo, b.width) AS bucket,
       min(s.step) AS step_from, max(s.step) AS step_to,
       minIfOrNull(s.v, NOT isNaN(s.v)) AS min, maxIfOrNull(s.v, NOT isNaN(s.v)) AS max,
       avgIf(s.v, NOT isNaN(s.v)) AS avg, argMax(s.v, s.step) AS last, countIf(isNaN(s.v)) AS nans,
       countIf(isInfinite(s.v)) AS infs
FROM (<ROWS>) AS s
INNER JOIN (<BOUNDS>) AS b ON s.entity_id = b.entity_id AND s.generation = b.generation
GROUP BY entity_id, bucket
ORDER BY entity_id, bucket
"""


def curves_sql(category: str, *, since: bool = False, until: bool = False) -> str:
    """curves by scanning points for the entities of one plan category (``clean``, ``dirty``, ``ranks``); with
    ``since``, only each entity's steps from ``{sinces:Array(Int64)}`` (parallel to ``ids``) on; with ``until``,
    only steps up to ``{until:Int64}``."""
    where = _ROWS_WHERE + (" AND step >= {sinces:Array(Int64)}[indexOf({ids:Array(String)}, entity_id)]"
                           if since else "") + (" AND step <= {until:Int64}" if until else "")
    return fill(CURVES, rows=fill(_ROWS[category], where=where), bounds=_BOUNDS)


# curves from ``series_blocks`` of each entity's source, whose rows go straight into buckets (``lo`` and ``width``
# are in steps, whole blocks: see ``curves.curve_plan``); ``i`` finds an entity's bucket origin, width and source.
CURVES_ROLLUP: Final = f"""
SELECT entity_id, indexOf({{ids:Array(String)}}, entity_id) AS i,
       intDiv(block * {{block_steps:Int64}} - {{los:Array(Int64)}}[i], {{widths:Array(Int64)}}[i]) AS bucket,
       min(min_step) AS step_from, max(max_step) AS step_to,
       if(sum(finite) > 0, min(low), NULL) AS min, if(sum(finite) > 0, max(high), NULL) AS max,
       sum(total) / sum(finite) AS avg, argMax(last.2, last.1) AS last, sum(nans), sum(infinite)
FROM series_blocks
WHERE {_ROWS_WHERE} AND level = {{level:UInt8}} AND generation = {{generations:Array(UInt32)}}[i]
  AND rank = {{srcs:Array(UInt32)}}[i]
GROUP BY entity_id, i, bucket
ORDER BY entity_id, bucket
"""


ENTITY_METRICS: Final = """
SELECT metric, anyLast(kind) = 'single' AS single, argMax(lv, (t, step)) AS latest,
       arrayMap(x -> x.2, arraySort(x -> x.1, groupArray((step, v)))) AS series
FROM (<PER_STEP>)
GROUP BY metric
"""

# ISO 8601 UTC text of a nanosecond Unix timestamp (microseconds, ``Z``), NULL for 0.
_ISO: Final = ("if(<NS> > 0, formatDateTime(fromUnixTimestamp64Micro(intDiv(<NS>, 1000), 'UTC'), "
               "'%Y-%m-%dT%H:%i:%S.%fZ', 'UTC'), NULL)")
_RANK: Final = ("Tuple(rank Nullable(Int64), status Nullable(String), host Nullable(String), "
                "producer_id Nullable(String), last_seen_<AT>)")

# runs(): the entities, their producers (``ranks``) parsed from the record's JSON and formatted here, in one pass
# of the engine (a run of 8 ranks costs little more than a run of one).
RUNS: Final = f"""
SELECT entity_id, name, status, mapKeys(tags) AS tag_keys, mapValues(tags) AS tag_values,
       {fill(_ISO, ns="started_ns")} AS started_at, {fill(_ISO, ns="ended_ns")} AS ended_at, lost_points,
       arrayMap(p -> CAST((p.1, p.2, p.3, p.4, {fill(_ISO, ns="p.5")}), '{fill(_RANK, at="at Nullable(String)")}'),
                JSONExtract(producers, 'Array({fill(_RANK, at="ns Int64")})')) AS ranks
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

# runs(): per (entity, metric) summary (kind, count, last, last_step, min, max) of the newest generation, from the
# source's ``series_stats`` where exact (the same rule as compare, so ``rows`` counts distinct steps), else
# ``exact`` = 0 and the caller scans (``SUMMARY_SCAN``). A single value summarises as count 1 with last = min =
# max = the latest value by time. Then NaN / ±Inf counts and first steps, as compare gives them.
SUMMARY_STATS: Final = fill(f"""
SELECT entity_id, metric, generation, kind, clean AS exact,
       if(kind = 'single', 1, rows_s), if(kind = 'single', latest_s.3, last_s.2),
       if(kind = 'single', latest_s.2, last_s.1),
       if(kind = 'single', latest_s.3, if(finite_s > 0, low_s.1, nan)),
       if(kind = 'single', latest_s.3, if(finite_s > 0, high_s.1, nan)), {_STATS_SPECIALS}
FROM (<VIEW>)
""", view=view("1 <SELECT>", {"last": ("max", "last"), "low": ("min", "low"), "high": ("max", "high"),
                                   **SPECIALS_PICKS}))

# The same summaries by scanning ``points FINAL`` for the (entity, metric, generation) triples bound as parallel
# arrays: per step the cross-rank mean (``v``) and the latest value by time (``lv``, for single values); then
# per series the step count, last, NaN-free min / max of ``v``, its NaN / ±Inf counts and first steps, and the
# latest ``lv`` (ties: higher step).
# The caller picks the series or the single-value figures by kind.
SUMMARY_SCAN: Final = f"""
SELECT entity_id, metric, count(), argMax(v, step), max(step), minIfOrNull(v, NOT isNaN(v)),
       maxIfOrNull(v, NOT isNaN(v)), {_SPECIALS}, argMax(lv, (t, step)), argMax(step, (t, step))
FROM (
    SELECT entity_id, metric, step, if(count() = 1, any(value), avg(value)) AS v, argMax(value, time) AS lv,
           max(time) AS t
    FROM points FINAL
    WHERE {_SCOPE} AND rank != {_X} AND entity_id IN {{scan_ids:Array(String)}}
      AND (entity_id, metric, generation) IN (
          SELECT k.1, k.2, k.3 FROM (SELECT arrayJoin(arrayZip({{scan_ids:Array(String)}},
              {{scan_metrics:Array(String)}}, {{scan_generations:Array(UInt32)}})) AS k))
    GROUP BY entity_id, metric, step
)
GROUP BY entity_id, metric
"""


# Per entity, the newest generation of a metric and its highest step: what a live view polls.
HEADS: Final = f"""
SELECT entity_id, generation, max(max_step) FROM series_stats
WHERE {_SCOPE} AND metric = {{metric:String}} AND entity_id IN {{ids:Array(String)}}
GROUP BY entity_id, generation
ORDER BY generation DESC
LIMIT 1 BY entity_id
"""

PROJECTS: Final = """
SELECT DISTINCT project FROM entities WHERE entity_type = {entity_type:String} ORDER BY project
"""

INGESTED: Final = """
SELECT max(seq), count() FROM ingested
WHERE project = {project:String} AND entity_type = {entity_type:String} AND entity_id = {entity_id:String}
  AND producer_id = {producer_id:String}
"""

# A series' history: the per-step value (the mean over ranks) and time in step order, or every rank's rows of the
# newest generation.
HISTORY: Final = """
SELECT step, v, toUnixTimestamp64Nano(t) FROM (<PER_STEP>) ORDER BY step
"""
HISTORY_RANKS: Final = f"""
SELECT step, value, toUnixTimestamp64Nano(time), rank FROM points FINAL
WHERE {_SCOPE} AND entity_id = {{entity_id:String}} AND metric = {{metric:String}} AND rank != {_X}
  AND generation = (SELECT max(generation) FROM series_stats
                    WHERE {_SCOPE} AND entity_id = {{entity_id:String}} AND metric = {{metric:String}})
ORDER BY step, rank
"""
