"""The read queries (DESIGN §6). Every value is a ``{name:Type}`` parameter; only identifiers are fixed text.

Shared semantics, also what the brute-force tests compute:

- Only the newest ``generation`` of an (entity, metric) is visible (an overwrite hides everything before it).
- ``points FINAL`` collapses replayed points and keeps the later value of a step logged twice.
- A series is read per step: the mean over ranks. ``single`` values: the latest by time wins (ties: higher step).
- min / max / mean skip NaN (a NaN step is kept in ``last`` / ``first``); ±Inf count as values.
"""

from __future__ import annotations

import re
from typing import Final

from sinks.errors import QueryError

_SCOPE: Final = "project = {project:String} AND entity_type = {entity_type:String}"

# The newest generation of each selected (entity, metric) and how many ranks wrote it, from ``series``.
_NEWEST: Final = """
    SELECT entity_id, metric, generation FROM (
        SELECT entity_id, metric, generation, uniqExact(rank) AS ranks, anyLast(kind) AS kind FROM series
        WHERE <SCOPE> AND <SELECT>
        GROUP BY entity_id, metric, generation
        ORDER BY generation DESC
        LIMIT 1 BY entity_id, metric
    ) WHERE <RANKS> AND <KIND>
"""

# One row per (entity, metric, step): the value (cross-rank mean), the latest value by time (for single values)
# and the kind. Series written by one rank are read straight from ``points FINAL`` (a step is one row there);
# only several ranks need the per-step GROUP BY, which costs ~2x on large scans.
_ONE_RANK: Final = """
    SELECT entity_id, metric, step, value AS v, value AS lv, time AS t, kind
    FROM points FINAL
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
    return fill(_NEWEST, scope=_SCOPE, select=select, ranks=ranks, kind=kind)


def per_step(select: str, kind: str = "1") -> str:
    """Per-step rows for the (entity, metric) pairs matched by ``select`` (a condition on bound parameters)."""
    one = fill(_ONE_RANK, scope=_SCOPE, select=select, newest=newest(select, "ranks = 1", kind))
    several = fill(_RANKS, scope=_SCOPE, select=select, newest=newest(select, "ranks > 1", kind))
    return f"{one}\n    UNION ALL\n{several}"


_NOT_NAN: Final = "NOT isNaN(v)"

# compare: only the requested aggregate is computed (each costs a pass over ~10M values at 1,000 runs);
# series and single values are separate branches, chosen from ``series.kind``.
COMPARE_AGGREGATES: Final = {
    "last": "argMax(v, step), max(step)",
    "first": "argMin(v, step), min(step)",
    "min": f"minIfOrNull(v, {_NOT_NAN}), argMinIf(step, v, {_NOT_NAN})",
    "max": f"maxIfOrNull(v, {_NOT_NAN}), argMaxIf(step, v, {_NOT_NAN})",
    "mean": f"avgIf(v, {_NOT_NAN}), max(step)",
}
_COMPARE: Final = """
SELECT entity_id, <AGGREGATE> FROM (<SERIES>) GROUP BY entity_id
UNION ALL
SELECT entity_id, argMax(lv, (t, step)), argMax(step, (t, step)) FROM (<SINGLE>) GROUP BY entity_id
"""


def compare_sql(select: str, agg: str) -> str:
    """Rows (entity_id, value, step) for every entity matched by ``select``."""
    return fill(_COMPARE, aggregate=COMPARE_AGGREGATES[agg], series=per_step(select, "kind != 'single'"),
                single=per_step(select, "kind = 'single'"))


_BOUNDS: Final = """
    SELECT entity_id, min(min_step) AS lo, max(max_step) AS hi FROM series
    WHERE <SCOPE> AND <SELECT> AND (entity_id, metric, generation) IN (<NEWEST>)
    GROUP BY entity_id
"""

CURVES: Final = """
SELECT s.entity_id AS entity_id,
       intDiv(s.step - b.lo, intDiv(b.hi - b.lo + {points:Int64}, {points:Int64})) AS bucket,
       min(s.step) AS step_from, max(s.step) AS step_to,
       minIfOrNull(s.v, NOT isNaN(s.v)) AS min, maxIfOrNull(s.v, NOT isNaN(s.v)) AS max,
       avgIf(s.v, NOT isNaN(s.v)) AS avg, argMax(s.v, s.step) AS last
FROM (<PER_STEP>) AS s
INNER JOIN (<BOUNDS>) AS b ON s.entity_id = b.entity_id
GROUP BY entity_id, bucket
ORDER BY entity_id, bucket
"""


def curves_sql(select: str) -> str:
    bounds = fill(_BOUNDS, scope=_SCOPE, select=select, newest=newest(select))
    return fill(CURVES, per_step=per_step(select), bounds=bounds)


ENTITY_METRICS: Final = """
SELECT metric, anyLast(kind) = 'single' AS single, argMax(lv, (t, step)) AS latest,
       arrayMap(x -> x.2, arraySort(x -> x.1, groupArray((step, v)))) AS series
FROM (<PER_STEP>)
GROUP BY metric
"""

RUNS: Final = f"""
SELECT entity_id, name, status, mapKeys(tags) AS tag_keys, mapValues(tags) AS tag_values, started_ns, ended_ns,
       lost_points
FROM entities FINAL
WHERE {_SCOPE} <SELECT>
ORDER BY started_ns, entity_id
"""

PARAMS: Final = f"""
SELECT entity_id, key, type, json, text FROM params FINAL
WHERE {_SCOPE} <SELECT>
ORDER BY entity_id, key
"""

SUMMARIES: Final = f"""
SELECT entity_id, metric, argMax(kind, generation), argMax(count, generation), argMax(last, generation),
       argMax(last_step, generation), argMax(min, generation), argMax(max, generation)
FROM summaries FINAL
WHERE {_SCOPE} <SELECT>
GROUP BY entity_id, metric
ORDER BY entity_id, metric
"""

INGESTED: Final = """
SELECT max(seq), count() FROM ingested
WHERE project = {project:String} AND entity_type = {entity_type:String} AND entity_id = {entity_id:String}
  AND producer_id = {producer_id:String}
"""

_READ_ONLY_START = re.compile(
    r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*(SELECT|WITH|SHOW|DESCRIBE|DESC|EXPLAIN|EXISTS)\b",
    re.IGNORECASE | re.DOTALL,
)
_WRAPPABLE = frozenset({"SELECT", "WITH"})


def check_read_only(query: str) -> tuple[str, bool]:
    """The query without trailing semicolons, and whether it is a SELECT/WITH (wrappable in a subquery).

    Rejects anything that does not start with a read-only keyword and any second statement: chDB runs
    ``SELECT 1; INSERT ...`` as two statements. A semicolon inside a literal is rejected too (bind it instead).
    """
    text = query.strip().rstrip(";").rstrip()
    match = _READ_ONLY_START.match(text)
    if match is None:
        raise QueryError("only SELECT, WITH, SHOW, DESCRIBE, EXPLAIN and EXISTS queries are allowed")
    if ";" in text:
        raise QueryError("one statement per query; pass values as parameters instead of literals with ';'")
    if re.search(r"\bINTO\s+OUTFILE\b", text, re.IGNORECASE):
        raise QueryError("INTO OUTFILE is not allowed")
    return text, match.group(1).upper() in _WRAPPABLE
