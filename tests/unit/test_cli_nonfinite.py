"""NaN and ±Inf are marked in the CLI's tables (a ``NaN/Inf`` column, cells in red) and in its plots (red
markers), never only dropped by the aggregations (issue 14)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from trackstream.render import compare_rows, curve_summaries, non_finite, plot_curves, runs_rows, table

CLEAN = {"nan_count": 0, "inf_count": 0, "first_nan_step": None, "first_inf_step": None}
DIVERGED = {"nan_count": 3, "inf_count": 1, "first_nan_step": 50, "first_inf_step": 60}


def test_the_marker_gives_counts_and_first_steps() -> None:
    assert non_finite(3, 1, 50, 60) == "NaN:3@50 Inf:1@60"
    assert non_finite(0, 2, None, 7) == "Inf:2@7"
    assert non_finite(4, 0) == "NaN:4"
    assert non_finite(0, 0, None, None) == ""


def test_compare_rows_fold_the_counts_into_one_marker_column() -> None:
    rows = [{"id": "a", "value": 0.1, "step": 9, "params": {"lr": 0.1}, **CLEAN},
            {"id": "b", "value": 0.2, "step": 49, "params": {"lr": 0.5}, **DIVERGED}]
    assert compare_rows(rows) == [{"id": "a", "value": 0.1, "step": 9, "lr": 0.1, "NaN/Inf": ""},
                                  {"id": "b", "value": 0.2, "step": 49, "lr": 0.5, "NaN/Inf": "NaN:3@50 Inf:1@60"}]
    assert all("NaN/Inf" not in row for row in compare_rows([rows[0]]))  # no column when nothing to mark
    groups = [{"lr": 0.1, "runs": 2, "mean": 0.3, "std": 0.1, "min": 0.2, "max": 0.4, **DIVERGED}]
    assert compare_rows(groups)[0]["NaN/Inf"] == "NaN:3@50 Inf:1@60"


def _run(i: int, **metrics: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"r{i}", "name": f"n{i}", "status": "running", "started_at": None, "ended_at": None,
            "params": {}, "metrics": metrics}


def test_runs_rows_name_each_metric_holding_nan_or_inf() -> None:
    rows = [_run(0, loss={"last": 0.5, "min": 0.1, **CLEAN}),
            _run(1, loss={"last": math.nan, "min": 0.2, **DIVERGED}, acc={"last": 0.5, "min": 0.5, **CLEAN},
                 grad_norm={"last": math.inf, "min": 1.0, **{**CLEAN, "inf_count": 1, "first_inf_step": 40}}),
            _run(2, a={**DIVERGED}, b={**DIVERGED}, c={**DIVERGED})]
    marked = [row.get("NaN/Inf") for row in runs_rows(rows)]
    assert marked == ["", "grad_norm Inf:1@40; loss NaN:3@50 Inf:1@60",
                      "a NaN:3@50 Inf:1@60; b NaN:3@50 Inf:1@60; +1 more"]
    assert all("NaN/Inf" not in row for row in runs_rows(rows[:1]))


def test_curve_summaries_count_the_buckets_nan_and_inf() -> None:
    buckets = [{"step_from": 0, "step_to": 9, "min": 1.0, "max": 3.0, "avg": 2.0, "last": 1.5, "nan_count": 0,
                "inf_count": 0},
               {"step_from": 10, "step_to": 19, "min": 1.0, "max": math.inf, "avg": math.inf, "last": math.nan,
                "nan_count": 4, "inf_count": 2}]
    (line,) = curve_summaries({"r1": buckets})
    assert line["NaN/Inf"] == "NaN:4 Inf:2"


def _rendered(rows: list[dict[str, Any]]) -> str:
    from rich.console import Console

    console = Console(width=80, force_terminal=True, color_system="standard", record=True)
    console.print(table(rows))
    return console.export_text(styles=True)


def test_tables_draw_nan_inf_and_their_markers_in_red() -> None:
    red = "\x1b[1;31m"
    text = _rendered([{"id": "a", "value": math.nan, "NaN/Inf": "NaN:1@0"}])
    assert f"{red}nan" in text
    assert f"{red}NaN:1@0" in text
    clean = _rendered([{"id": "a", "value": 0.5, "nan_count": 0, "NaN/Inf": ""}])
    assert red not in clean


def _red_pixels(path: Path) -> int:
    import matplotlib.image

    image = matplotlib.image.imread(path)
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    return int(((r > 0.9) & (g < 0.2) & (b < 0.2)).sum())


@pytest.mark.parametrize("special", ["nan_count", "inf_count"])
def test_plots_mark_the_buckets_holding_nan_or_inf_in_red(tmp_path: Path, special: str) -> None:
    def buckets(marked: bool) -> list[dict[str, Any]]:
        return [{"step_from": s, "step_to": s + 9, "min": 1.0 / (s + 1), "max": 2.0 / (s + 1), "avg": 1.5 / (s + 1),
                 "last": 1.0, "nan_count": 0, "inf_count": 0, **({special: 3} if marked and s >= 50 else {})}
                for s in range(0, 100, 10)]

    plain = plot_curves({"r1": buckets(False)}, metric="loss", path=tmp_path / "plain.png")
    marked = plot_curves({"r1": buckets(True)}, metric="loss", path=tmp_path / "marked.png", labels={"r1": "run"})
    assert _red_pixels(plain) == 0
    assert _red_pixels(marked) > 100
