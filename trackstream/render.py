"""Terminal and image output of query results: rich tables, JSON, and curve charts (matplotlib)."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from trackstream.sinks.runs_table import differing_params


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    if isinstance(value, dict | list):
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    return "" if value is None else str(value)


_WORD = 12  # characters: a word up to this long is never broken across lines
# The column that marks NaN / ±Inf in a table (:func:`non_finite`), and the per-bucket counts: red when not empty.
NON_FINITE = "NaN/Inf"
_MARKED = frozenset({NON_FINITE, "nan_count", "inf_count", "first_nan_step", "first_inf_step"})
_SPECIAL_KEYS = ("nan_count", "inf_count", "first_nan_step", "first_inf_step")


def _red(column: str, value: Any) -> bool:
    """Whether a cell is drawn in red: a NaN / ±Inf value, or a non-empty NaN / ±Inf marker or count."""
    if isinstance(value, float) and not math.isfinite(value):
        return True
    return column in _MARKED and value not in (None, "", 0)


def non_finite(nans: int, infs: int, first_nan: int | None = None, first_inf: int | None = None) -> str:
    """A short marker of a series' NaN and ±Inf values: ``NaN:3@50 Inf:1@60`` (count, then first step when
    known); ``""`` when there are none."""
    parts = [f"{label}:{count}" + ("" if first is None else f"@{first}")
             for label, count, first in (("NaN", nans, first_nan), ("Inf", infs, first_inf)) if count]
    return " ".join(parts)


def _marker(row: Mapping[str, Any]) -> str:
    return non_finite(row.get("nan_count") or 0, row.get("inf_count") or 0, row.get("first_nan_step"),
                      row.get("first_inf_step"))


def _json(value: Any) -> None:
    from trackstream.api.wire import to_wire

    sys.stdout.write(orjson.dumps(to_wire(value), option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())
    sys.stdout.write("\n")


def table(rows: Sequence[Mapping[str, Any]], *, title: str | None = None) -> Any:
    """A rich Table of dict rows, columns in first-seen key order; NaN / ±Inf and their markers in red."""
    from rich.table import Table
    from rich.text import Text

    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    from rich import box

    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    result = Table(title=title, show_lines=False, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for at, column in enumerate(columns):
        # words are not broken (a header, a status, a number) unless longer than _WORD; long values fold
        word = max([len(part) for text in (column, *(line[at] for line in cells)) for part in text.split()] or [0])
        result.add_column(column, overflow="fold", min_width=min(word, _WORD))
    for row, line in zip(rows, cells, strict=True):
        result.add_row(*(Text(text, style="bold red") if _red(column, row.get(column)) else text
                         for column, text in zip(columns, line, strict=True)))
    return result


def print_table(rows: Sequence[Mapping[str, Any]], *, title: str | None = None) -> None:
    """Print dict ``rows`` to the terminal as a rich table (:func:`table`); floats get 6 significant digits."""
    from rich.console import Console

    Console().print(table(rows, title=title))


def emit_rows(rows: Sequence[Mapping[str, Any]], *, as_json: bool, title: str | None = None) -> None:
    """Print dict ``rows`` to stdout: indented JSON (non-finite floats as ``{"$f64": bits}``) or a rich table."""
    if as_json:
        _json(list(rows))
    else:
        print_table(rows, title=title)


def emit_records(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, as_json: bool) -> None:
    """Print SQL results: JSON as a list of ``{column: value}`` objects, or a table headed by the column names (a
    name repeated in the result gets ``_2``, ``_3``, ... so no value is lost)."""
    names: list[str] = []
    for column in columns:
        name, n = column, 1
        while name in names:
            n += 1
            name = f"{column}_{n}"
        names.append(name)
    records = [dict(zip(names, row, strict=True)) for row in rows]
    if as_json:
        _json(records)
    else:
        print_table(records or [dict.fromkeys(names)])


def emit_curves(curves: Mapping[str, Sequence[Mapping[str, Any]]], *, as_json: bool) -> None:
    """Print ``{run: [bucket]}`` curves: one JSON object, or one table per run titled ``run <id>``."""
    if as_json:
        _json(curves)
        return
    for run, buckets in curves.items():
        print_table(buckets, title=f"run {run}")


def plot_curves(curves: Mapping[str, Sequence[Mapping[str, Any]]], *, metric: str, path: Path,
                title: str | None = None, labels: Mapping[str, str] | None = None) -> Path:
    """One line per run (bucket average) with its min/max band, axis labels and a legend naming each run by
    ``labels[run]`` (its name) when given, else by its id. Buckets holding NaN or ±Inf get red markers below the
    top edge at their steps, one row per run, edged in the run's colour: the line alone would show a gap or a
    clipped band there and hide them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 6), dpi=110)
    rows = 0  # each run with NaN / ±Inf gets its own row of markers below the top edge
    for run, buckets in curves.items():
        if not buckets:
            continue
        steps = [(b["step_from"] + b["step_to"]) / 2 for b in buckets]
        label = (labels or {}).get(run) or str(run)
        line = axes.plot(steps, [b["avg"] for b in buckets], label=label, linewidth=1.4)[0]
        axes.fill_between(steps, [b["min"] for b in buckets], [b["max"] for b in buckets],
                          color=line.get_color(), alpha=0.18, linewidth=0)
        marked = [step for step, b in zip(steps, buckets, strict=True) if b.get("nan_count") or b.get("inf_count")]
        if marked:
            rows += 1
            axes.plot(marked, [1 - 0.03 * rows] * len(marked), linestyle="none", marker="v", color="red",
                      markersize=7, markeredgecolor=line.get_color(),
                      transform=axes.get_xaxis_transform(), clip_on=False,
                      label=f"{label}: NaN/Inf ({len(marked)} buckets)")
    axes.set_xlabel("step")
    axes.set_ylabel(metric)
    axes.set_title(title or f"{metric}: bucket mean with min/max band")
    axes.grid(True, alpha=0.3)
    if curves:
        axes.legend(loc="best", fontsize="small", ncol=2 if len(curves) > 8 else 1)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def duration(started_at: str | None, ended_at: str | None, *, now: datetime | None = None) -> str:
    """``1h02m``, ``3m12s`` or ``45s`` between two ISO 8601 times (``ended_at`` None: until ``now``); ``""``
    without a start."""
    if not started_at:
        return ""
    start = datetime.fromisoformat(started_at.replace("Z", "+00:00"))
    end = datetime.fromisoformat(ended_at.replace("Z", "+00:00")) if ended_at else (now or datetime.now(UTC))
    seconds = max(0, int((end - start).total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def runs_rows(rows: Sequence[Mapping[str, Any]], *, params: Sequence[str] | None = None,
              metrics: Sequence[str] = ()) -> list[dict[str, Any]]:
    """What ``trackstream runs`` shows per run: id, name, status, duration, the params that differ across the runs
    (or the ones named in ``params``), last/min of each of ``metrics``, and, when any run has one, a ``NaN/Inf``
    column naming each metric holding NaN or ±Inf (:func:`non_finite`, two metrics then ``+N more``)."""
    if params is None:
        params = differing_params(rows)
    out = []
    for row in rows:
        line: dict[str, Any] = {"id": row.get("id"), "name": row.get("name"), "status": row.get("status"),
                                "duration": duration(row.get("started_at"), row.get("ended_at"))}
        line.update({key: row.get("params", {}).get(key) for key in params})
        for metric in metrics:
            summary = row.get("metrics", {}).get(metric, {})
            line[f"{metric} last"], line[f"{metric} min"] = summary.get("last"), summary.get("min")
        marked = [f"{metric} {_marker(summary)}" for metric, summary in sorted(row.get("metrics", {}).items())
                  if _marker(summary)]
        line[NON_FINITE] = "; ".join(marked[:2] + ([f"+{len(marked) - 2} more"] if len(marked) > 2 else []))
        out.append(line)
    return _drop_empty(out, NON_FINITE)


def _drop_empty(rows: list[dict[str, Any]], column: str) -> list[dict[str, Any]]:
    """``rows`` without ``column`` when no row has a value in it."""
    if any(row.get(column) for row in rows):
        return rows
    return [{key: value for key, value in row.items() if key != column} for row in rows]


def compare_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``compare`` rows (or groups) for a table: the params that differ across the runs as columns instead of one
    dict, and the NaN / ±Inf fields as one ``NaN/Inf`` marker column when any row has one."""
    keys = differing_params(rows)
    out = [{**{k: v for k, v in row.items() if k != "params" and k not in _SPECIAL_KEYS},
            **{key: row.get("params", {}).get(key) for key in keys}, NON_FINITE: _marker(row)} for row in rows]
    return _drop_empty(out, NON_FINITE)


def curve_summaries(curves: Mapping[str, Sequence[Mapping[str, Any]]],
                    names: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One line per run of ``curves()``: id, name, steps covered, buckets, the curve's first, last, min and
    max (over the bucket values, NaN skipped), and its NaN / ±Inf counts (a ``NaN/Inf`` column when any)."""
    out = []
    for run, buckets in curves.items():
        line: dict[str, Any] = {"id": run, "name": (names or {}).get(run, "")}
        if buckets:
            lows = [b["min"] for b in buckets if b["min"] == b["min"]]
            highs = [b["max"] for b in buckets if b["max"] == b["max"]]
            line.update({"steps": f"{buckets[0]['step_from']}..{buckets[-1]['step_to']}", "buckets": len(buckets),
                         "first": buckets[0]["avg"], "last": buckets[-1]["last"],
                         "min": min(lows) if lows else math.nan, "max": max(highs) if highs else math.nan,
                         NON_FINITE: non_finite(sum(b.get("nan_count", 0) for b in buckets),
                                                sum(b.get("inf_count", 0) for b in buckets))})
        out.append(line)
    return _drop_empty(out, NON_FINITE)


def best_first(rows: list[dict[str, Any]], key: str, *, descending: bool = False) -> list[dict[str, Any]]:
    """``rows`` ordered by ``row[key]``: lowest first (highest with ``descending``), missing and NaN values last."""

    def order(row: dict[str, Any]) -> tuple[bool, float]:
        value = row.get(key)
        if not isinstance(value, int | float) or value != value:  # noqa: PLR0124 - NaN
            return True, 0.0
        return False, -float(value) if descending else float(value)

    return sorted(rows, key=order)
