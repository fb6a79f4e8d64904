"""Search over the rows of ``QueryService.runs``: filter by status, params and tags, order by a metric summary,
limit. Pure functions over the rows (a project's runs fit in memory: ``runs()`` reads them in one pass), so the
filter means the same on every reader.

Equality is JSON equality: a param logged as ``1`` does not match ``True``, nor ``"1"``; ``1`` and ``1.0`` match
(JSON has one number type). Runs without the ordering metric, or whose value is NaN, come last.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from trackstream.schemas.errors import NotFoundError
from trackstream.sinks.errors import QueryError
from trackstream.sinks.lookup import did_you_mean

ORDER_FIELDS: Final = ("last", "min", "max", "count", "last_step")


def _same(stored: Any, wanted: Any) -> bool:
    if isinstance(stored, bool) or isinstance(wanted, bool):
        return type(stored) is type(wanted) and stored == wanted
    return bool(stored == wanted)


def _order_key(order_by: str) -> tuple[str, str, bool]:
    """``"loss.min"`` -> (metric, field, descending); ``"-loss.last"`` descends."""
    descending = order_by.startswith("-")
    metric, _, field = order_by.lstrip("-").rpartition(".")
    if not metric or field not in ORDER_FIELDS:
        raise QueryError(f"order_by must be '<metric>.<{'|'.join(ORDER_FIELDS)}>' (prefix '-' to descend), "
                         f"not {order_by!r}")
    return metric, field, descending


def search(rows: Sequence[dict[str, Any]], *, status: str | Sequence[str] | None = None,
           params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None,
           order_by: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """The rows whose ``status`` is ``status`` (or one of them) and whose params and tags hold every given key with
    an equal value; ordered by a metric summary when ``order_by`` says so (ascending, ``-`` descending; the order of
    ``rows`` otherwise), at most ``limit``. Raises QueryError for a malformed ``order_by`` or a negative ``limit``
    and NotFoundError when no run has the ``order_by`` metric."""
    if limit is not None and limit < 0:
        raise QueryError(f"limit must be >= 0, not {limit}")
    if status is None and not params and not tags and order_by is None:
        return list(rows) if limit is None else list(rows[:limit])
    wanted = {status} if isinstance(status, str) else set(status) if status is not None else None
    found = [row for row in rows
             if (wanted is None or row.get("status") in wanted)
             and all(key in row.get("params", {}) and _same(row["params"][key], value)
                     for key, value in (params or {}).items())
             and all(row.get("tags", {}).get(key) == value for key, value in (tags or {}).items())]
    if order_by is not None:
        metric, field, descending = _order_key(order_by)
        if rows and not any(metric in row.get("metrics", {}) for row in rows):
            names = sorted({name for row in rows for name in row.get("metrics", {})})
            raise NotFoundError(f"order_by metric {metric!r} not found on the runs{did_you_mean(metric, names)}")

        def key(row: dict[str, Any]) -> tuple[bool, float]:
            value = row.get("metrics", {}).get(metric, {}).get(field)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                return True, 0.0
            return False, -float(value) if descending else float(value)

        found.sort(key=key)
    return found if limit is None else found[:limit]
