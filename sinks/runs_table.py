"""One page of the live page's runs table, searched, filtered and sorted on the server (docs/ui.md).

A pure function over the rows of ``QueryService.runs``: the page asks for the rows it is about to show, so a
project of 10,000 runs costs the browser a page of them, not all of them. Fields are named as the table names
its columns: ``name``, ``id``, ``status``, ``started_at``, ``duration``, ``tags``, ``param:<key>`` and
``metric:<name>:<last|min|max|bad>`` (``bad``: NaN plus ±Inf values).
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import orjson

from trackstream.sinks.errors import QueryError

PAGE_MAX: Final = 1000
LISTINGS_KEPT: Final = 16
LISTING_TTL_S: Final = 300.0


class Listings:
    """Recent runs listings by token, so that every page of one table comes from the same read: page 1 reads the
    store and answers a token; later pages that bring it back read the same rows (or, once it has expired or been
    pushed out by ``kept`` newer ones, a fresh read under a new token). Thread-safe."""

    def __init__(self, *, kept: int = LISTINGS_KEPT, ttl_s: float = LISTING_TTL_S) -> None:
        self._kept, self._ttl_s = kept, ttl_s
        self._lock = threading.Lock()
        self._rows: OrderedDict[str, tuple[float, int, list[dict[str, Any]]]] = OrderedDict()

    def rows(self, token: str | None, read: Callable[[], list[dict[str, Any]]]) -> tuple[str, int, Any]:
        """``(token, read time in ms since the epoch, rows)``: those of ``token`` if still kept, else ``read()``'s."""
        now = time.monotonic()
        with self._lock:
            for old in [key for key, (at, _ms, _rows) in self._rows.items() if now - at > self._ttl_s]:
                del self._rows[old]
            if token is not None and token in self._rows:
                self._rows.move_to_end(token)
                _at, read_ms, rows = self._rows[token]
                return token, read_ms, rows
        read_ms = time.time_ns() // 10**6
        rows = read()
        token = secrets.token_hex(8)
        with self._lock:
            self._rows[token] = (now, read_ms, rows)
            while len(self._rows) > self._kept:
                self._rows.popitem(last=False)
        return token, read_ms, rows

STATS: Final = ("last", "min", "max", "bad")


def table_page(rows: Sequence[Mapping[str, Any]], *, search: str | None = None,
               status: Sequence[str] | None = None, filters: Sequence[Mapping[str, Any]] | None = None,
               sort: Sequence[Mapping[str, Any]] | None = None, page: int = 1, size: int = 100,
               now_ns: int | None = None) -> dict[str, Any]:
    """Rows ``(page - 1) * size`` to ``page * size`` of ``rows`` (runs() rows) that match, in order.

    - ``search``: words (split on spaces, case-insensitive) that must all occur in the row's name, id, tags
      (``key=value``) or params (``key=value``, values as JSON);
    - ``status``: the statuses to keep;
    - ``filters``: ``[{"field", "value"}]``, each a case-insensitive substring of that field's text;
    - ``sort``: ``[{"field", "dir": "asc" | "desc"}]``, the first the main key; a row without the value, or with
      NaN, comes last either way. Without one: newest start first.

    Returns ``{"data": [row, ...], "last_page": int, "last_row": int`` (rows matching)``, "total": int`` (rows of
    the project)``, "params": {"differ": [keys], "same": {key: value}}, "metrics": [names], "series": [names]}``:
    ``params`` and ``metrics`` are over every row, so the table's columns stay put while the user searches.
    ``now_ns`` (default: now) is the end of a running run's ``duration``. Raises QueryError for a field, direction
    or page size it does not know (``size`` 1..PAGE_MAX).
    """
    if not 1 <= size <= PAGE_MAX or page < 1:
        raise QueryError(f"page must be >= 1 and size 1..{PAGE_MAX}, not page={page}, size={size}")
    now = time.time_ns() if now_ns is None else now_ns
    words = (search or "").lower().split()
    wanted = set(status) if status else None
    checks = [(_text_of(str(f.get("field", ""))), str(f.get("value", "")).lower()) for f in filters or []]
    found = [row for row in rows
             if (wanted is None or row.get("status") in wanted)
             and (not words or _has_words(_search_text(row), words))
             and all(value in text(row) for text, value in checks)]
    for spec in reversed(list(sort or [{"field": "started_at", "dir": "desc"}])):
        direction = spec.get("dir", "asc")
        if direction not in ("asc", "desc"):
            raise QueryError(f"sort dir must be 'asc' or 'desc', not {direction!r}")
        key = _sort_key(str(spec.get("field", "")), now)
        keyed = [(key(row), row) for row in found]  # each key once: a duration parses two times
        present = [item for item in keyed if item[0] is not None]
        present.sort(key=lambda item: item[0], reverse=direction == "desc")
        found = [row for _, row in present] + [row for value, row in keyed if value is None]
    start = (page - 1) * size
    return {"data": found[start:start + size], "last_page": max(1, math.ceil(len(found) / size)),
            "last_row": len(found), "total": len(rows), **_columns(rows)}


def differing_params(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The param names whose values are not the same on every row (``row["params"]``; a row without one counts
    as null), sorted. The runs table's columns and ``trackstream runs`` / ``compare`` both show these."""
    keys = sorted({key for row in rows for key in row.get("params") or {}})
    return [key for key in keys
            if len({orjson.dumps((row.get("params") or {}).get(key), default=str) for row in rows}) > 1]


def _has_words(text: str, words: Sequence[str]) -> bool:
    return all(word in text for word in words)


def _columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    differ = set(differing_params(rows))
    same: dict[str, Any] = {}
    for row in rows:
        for key, value in (row.get("params") or {}).items():
            if key not in differ:
                same.setdefault(key, value)
    metrics: set[str] = set()
    series: set[str] = set()
    for row in rows:
        for name, summary in (row.get("metrics") or {}).items():
            metrics.add(name)
            if summary.get("kind") == "series":
                series.add(name)
    return {"params": {"differ": sorted(differ), "same": dict(sorted(same.items()))}, "metrics": sorted(metrics),
            "series": sorted(series)}


def _param_text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _search_text(row: Mapping[str, Any]) -> str:
    parts = [str(row.get("name") or ""), str(row.get("id") or ""), _tags_text(row)]
    parts += [f"{key}={_param_text(value)}" for key, value in (row.get("params") or {}).items()]
    return " ".join(parts).lower()


def _tags_text(row: Mapping[str, Any]) -> str:
    return " ".join(key if value == "" else f"{key}={value}" for key, value in (row.get("tags") or {}).items())


def _plain(row: Mapping[str, Any], field: str) -> str:
    """A row's name (its id when it has none), id or status, lowercased."""
    return str(row.get(field) or (row.get("id") if field == "name" else "") or "").lower()


def _text_of(field: str) -> Any:
    """The text a filter on ``field`` searches, lowercased."""
    if field in ("name", "id", "status"):
        return lambda row: _plain(row, field)
    if field == "tags":
        return lambda row: _tags_text(row).lower()
    if field.startswith("param:"):
        key = field[len("param:"):]
        return lambda row: (_param_text(row["params"][key]).lower() if key in (row.get("params") or {}) else "")
    raise QueryError(f"cannot filter on {field!r}: name, id, status, tags or param:<key>")


def _sort_key(field: str, now_ns: int) -> Any:
    """A key function: a comparable value, or None for a row without one (sorted last)."""
    if field in ("name", "id", "status"):
        return lambda row: _plain(row, field) or None
    if field == "started_at":
        return lambda row: row.get("started_at") or None  # ISO 8601 UTC: orders as text
    if field == "duration":
        return lambda row: _duration_ns(row, now_ns)
    if field == "tags":
        return lambda row: _tags_text(row).lower() or None
    if field.startswith("param:"):
        key = field[len("param:"):]
        return lambda row: _param_order((row.get("params") or {}).get(key))
    if field.startswith("metric:"):
        name, _, stat = field[len("metric:"):].rpartition(":")
        if stat not in STATS:
            raise QueryError(f"sort on metric:<name>:<{'|'.join(STATS)}>, not {field!r}")
        return lambda row: _metric_value((row.get("metrics") or {}).get(name), stat)
    raise QueryError(f"cannot sort on {field!r}: name, id, status, started_at, duration, tags, param:<key> or "
                     "metric:<name>:<stat>")


def _duration_ns(row: Mapping[str, Any], now_ns: int) -> int | None:
    start = _ns(row.get("started_at"))
    if start is None:
        return None
    end = _ns(row.get("ended_at"))
    return (end if end is not None else now_ns if row.get("status") == "running" else start) - start


def _ns(iso: Any) -> int | None:
    if not iso:
        return None
    moment = datetime.fromisoformat(str(iso).replace("Z", "+00:00"))
    return int(moment.timestamp()) * 10**9 + moment.microsecond * 1000


def _param_order(value: Any) -> tuple[int, float, str] | None:
    """Numbers before text, each in its own order (JSON values of mixed types sort without raising)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return (1, 0.0, str(value).lower())
    if isinstance(value, int | float):
        return None if isinstance(value, float) and math.isnan(value) else (0, float(value), "")
    return (1, 0.0, _param_text(value).lower())


def _metric_value(summary: Mapping[str, Any] | None, stat: str) -> float | None:
    if not summary:
        return None
    if stat == "bad":
        return float((summary.get("nan_count") or 0) + (summary.get("inf_count") or 0))
    value = summary.get(stat)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
