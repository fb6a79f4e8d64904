"""Fired alerts read back from the ``alerts`` table (sinks/schema.py): :func:`read_alerts` (docs/alerts.md).

The table holds one row per transition, a rule starting (``firing``) or stopping (``resolved``) to hold for one
entity; ``FINAL`` collapses a replayed transition. Per (rule, entity) the *newest* transition is the one with the
latest time, then the highest step, then ``resolved`` before ``firing`` on a tie; a rule fires for an entity while
that newest transition is ``firing``. Every value is a bound ``{name:Type}`` parameter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from trackstream.sinks.backend import Row
from trackstream.sinks.errors import QueryError

log = logging.getLogger(__name__)

RowsFn = Callable[[str, Mapping[str, Any]], list[Row]]

STATES: Final = ("firing", "resolved")
_UNKNOWN_TABLE: Final = 60

# The transitions of one project's entities, each flagged ``newest`` of its (rule, entity) before any filter but
# the scope's (so ``since_ns`` and ``limit`` never change which one is newest); the time as ISO 8601 UTC text with
# microseconds, as sinks/sql.py writes run times.
ALERTS: Final = """
SELECT rule_id, condition, project, entity_type, entity_id, metric, state, step, value, rank, threshold,
       formatDateTime(fromUnixTimestamp64Micro(intDiv(time_ns, 1000), 'UTC'), '%Y-%m-%dT%H:%i:%S.%fZ', 'UTC'),
       time_ns, message, newest AND state = 'firing' AS active
FROM (
    SELECT rule_id, condition, project, entity_type, entity_id, metric, state, step, value, rank, threshold,
           toUnixTimestamp64Nano(time) AS time_ns, message,
           row_number() OVER (PARTITION BY rule_id, entity_id
                              ORDER BY time DESC, step DESC NULLS LAST, state DESC) = 1 AS newest
    FROM alerts FINAL
    WHERE project = {project:String} AND entity_type = {entity_type:String} <RUNS>
)
WHERE 1 <SINCE> <STATE>
ORDER BY time_ns DESC, step DESC NULLS LAST, state DESC, entity_id, rule_id
LIMIT {limit:UInt64}
"""

_KEYS: Final = ("rule_id", "when", "project", "entity_type", "run", "metric", "state", "step", "value", "rank",
                "threshold", "time", "time_ns", "message", "active")


def alerts_sql(*, runs: bool, since: bool, state: bool) -> str:
    """:data:`ALERTS` with the filters in use: entity ids (``{runs:Array(String)}``), ``time_ns > {since_ns:Int64}``,
    and only the (rule, entity) pairs whose newest transition is ``{state:String}``."""
    return (ALERTS.replace("<RUNS>", "AND entity_id IN {runs:Array(String)}" if runs else "")
            .replace("<SINCE>", "AND time_ns > {since_ns:Int64}" if since else "")
            .replace("<STATE>", "AND newest AND state = {state:String}" if state else ""))


def _number(value: Any, kind: type[int] | type[float]) -> Any:
    return None if value is None else kind(value)


def read_alerts(rows: RowsFn, project: str, *, entity_type: str = "run", runs: Sequence[str] | str | None = None,
                state: str | None = None, since_ns: int | None = None,
                limit: int = 1000) -> list[dict[str, Any]]:
    """The alert transitions of ``project``'s entities over ``rows`` (runs a query, returns its rows), newest first.

    A row: ``{"rule_id", "when", "project", "entity_type", "run"`` (the entity's id), ``"metric", "state"``
    (firing or resolved), ``"step"`` (int or None), ``"value"`` (float, NaN and ±inf included, or None),
    ``"rank"`` (int or None), ``"threshold"`` (float or None), ``"time"`` (ISO 8601 UTC, microseconds, ``Z``),
    ``"time_ns"`` (int), ``"message"``, ``"active"}`` (True when the row is the newest transition of its rule and
    entity, and firing: the rule fires for that entity now).

    ``runs``: only these entity ids. ``state="firing"``: only the rules firing now, one row per (rule, entity), its
    newest transition (``"resolved"``: those that fired and resolved since). ``since_ns``: only transitions after
    this time (ns since the epoch). ``limit``: at most this many rows (the newest).

    An unknown project, or a store made before alerts were stored (no ``alerts`` table), has none: ``[]``. Raises
    :class:`~trackstream.sinks.errors.QueryError` for a bad ``state`` or ``limit``, or a failed query.
    """
    if state is not None and state not in STATES:
        raise QueryError(f"state must be firing, resolved or None, not {state!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise QueryError(f"limit must be an int >= 1, not {limit!r}")
    if since_ns is not None and (isinstance(since_ns, bool) or not isinstance(since_ns, int)):
        raise QueryError(f"since_ns must be an int (ns since the epoch) or None, not {since_ns!r}")
    ids = [runs] if isinstance(runs, str) else None if runs is None else list(runs)
    if ids == []:
        return []
    params: dict[str, Any] = {"project": project, "entity_type": entity_type, "limit": limit}
    params |= {key: value for key, value in (("runs", ids), ("since_ns", since_ns), ("state", state))
               if value is not None}
    sql = alerts_sql(runs=ids is not None, since=since_ns is not None, state=state is not None)
    try:
        found = rows(sql, params)
    except QueryError as exc:
        if exc.code != _UNKNOWN_TABLE and "UNKNOWN_TABLE" not in str(exc):
            raise
        log.debug("no alerts table in the store (made before alerts were stored): no alerts", exc_info=True)
        return []
    result = []
    for row in found:
        item = dict(zip(_KEYS, row, strict=True))
        item["step"], item["rank"] = _number(item["step"], int), _number(item["rank"], int)
        item["value"], item["threshold"] = _number(item["value"], float), _number(item["threshold"], float)
        item["time_ns"], item["active"] = int(item["time_ns"]), bool(item["active"])
        result.append(item)
    return result
