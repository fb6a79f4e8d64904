"""Terminal and image output of query results: rich tables, JSON, and curve charts (matplotlib)."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    if isinstance(value, dict | list):
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    return "" if value is None else str(value)


def _json(value: Any) -> None:
    from trackstream.api.wire import to_wire

    sys.stdout.write(orjson.dumps(to_wire(value), option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())
    sys.stdout.write("\n")


def table(rows: Sequence[Mapping[str, Any]], *, title: str | None = None) -> Any:
    """A rich Table of dict rows, columns in first-seen key order."""
    from rich.table import Table

    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    result = Table(title=title, show_lines=False)
    for column in columns:
        result.add_column(column, overflow="fold")
    for row in rows:
        result.add_row(*(_cell(row.get(column)) for column in columns))
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


def emit_tuples(rows: Sequence[Sequence[Any]], *, as_json: bool) -> None:
    """Print tuple ``rows`` (e.g. SQL results): JSON as a list of lists, or a table with columns ``c0``, ``c1``, ..."""
    if as_json:
        _json([list(row) for row in rows])
    else:
        print_table([{f"c{i}": value for i, value in enumerate(row)} for row in rows])


def emit_curves(curves: Mapping[str, Sequence[Mapping[str, Any]]], *, as_json: bool) -> None:
    """Print ``{run: [bucket]}`` curves: one JSON object, or one table per run titled ``run <id>``."""
    if as_json:
        _json(curves)
        return
    for run, buckets in curves.items():
        print_table(buckets, title=f"run {run}")


def plot_curves(curves: Mapping[str, Sequence[Mapping[str, Any]]], *, metric: str, path: Path,
                title: str | None = None) -> Path:
    """One line per run (bucket average) with its min/max band, axis labels and a legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 6), dpi=110)
    for run, buckets in curves.items():
        if not buckets:
            continue
        steps = [(b["step_from"] + b["step_to"]) / 2 for b in buckets]
        line = axes.plot(steps, [b["avg"] for b in buckets], label=str(run), linewidth=1.4)[0]
        axes.fill_between(steps, [b["min"] for b in buckets], [b["max"] for b in buckets],
                          color=line.get_color(), alpha=0.18, linewidth=0)
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
