"""The CLI's global flags work before and after the subcommand, --version answers, and compare rows come
best-first."""

from __future__ import annotations

import math

import pytest

from trackstream import __version__
from trackstream.cli import build_parser
from trackstream.render import best_first


@pytest.mark.parametrize("argv", [["-v", "runs", "p"], ["runs", "p", "-v"], ["runs", "-v", "p"],
                                  ["--verbose", "sink", "worker"], ["sink", "worker", "--verbose"]])
def test_verbose_before_or_after_the_subcommand(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).verbose is True


def test_without_the_flag_verbose_is_off() -> None:
    assert build_parser().parse_args(["runs", "p"]).verbose is False


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"trackstream {__version__}"


def test_compare_rows_come_best_first_missing_and_nan_last() -> None:
    rows = [{"id": "a", "value": 0.5}, {"id": "b", "value": math.nan}, {"id": "c", "value": 0.1},
            {"id": "d", "value": None}, {"id": "e", "value": 0.9}]
    assert [r["id"] for r in best_first(rows, "value")] == ["c", "a", "e", "b", "d"]
    assert [r["id"] for r in best_first(rows, "value", descending=True)] == ["e", "a", "c", "b", "d"]


def test_duration_reads_at_a_glance() -> None:
    from datetime import UTC, datetime

    from trackstream.render import duration

    assert duration("2026-11-30T12:00:00.000000Z", "2026-11-30T12:00:45.500000Z") == "45s"
    assert duration("2026-11-30T12:00:00.000000Z", "2026-11-30T12:03:12.000000Z") == "3m12s"
    assert duration("2026-11-30T12:00:00.000000Z", "2026-11-30T13:02:00.000000Z") == "1h02m"
    assert duration("2026-11-30T12:00:00.000000Z", None, now=datetime(2026, 11, 30, 12, 1, tzinfo=UTC)) == "1m00s"
    assert duration(None, None) == ""


def test_runs_rows_show_the_params_that_differ_and_the_chosen_metrics() -> None:
    from trackstream.render import runs_rows

    rows = [{"id": f"r{i}", "name": f"n{i}", "status": "completed", "started_at": None, "ended_at": None,
             "params": {"lr": lr, "bs": 32, "layers": [64, 64]}, "tags": {"team": "x"},
             "metrics": {"loss": {"last": 0.5 + i, "min": 0.1 + i}}} for i, lr in enumerate((0.1, 0.01))]
    assert runs_rows(rows, metrics=["loss"]) == [
        {"id": "r0", "name": "n0", "status": "completed", "duration": "", "lr": 0.1, "loss last": 0.5,
         "loss min": 0.1},
        {"id": "r1", "name": "n1", "status": "completed", "duration": "", "lr": 0.01, "loss last": 1.5,
         "loss min": 1.1}]
    assert list(runs_rows(rows, params=["bs"])[0]) == ["id", "name", "status", "duration", "bs"]


def test_a_curve_is_one_summary_line() -> None:
    from trackstream.render import curve_summaries

    buckets = [{"step_from": 0, "step_to": 9, "min": 1.0, "max": 3.0, "avg": 2.0, "last": 1.5},
               {"step_from": 10, "step_to": 19, "min": math.nan, "max": math.nan, "avg": math.nan, "last": 0.5}]
    (line,) = curve_summaries({"r1": buckets}, {"r1": "baseline"})
    assert line == {"id": "r1", "name": "baseline", "steps": "0..19", "buckets": 2, "first": 2.0, "last": 0.5,
                    "min": 1.0, "max": 3.0}


def test_every_subcommand_has_a_description_and_every_argument_a_help_text() -> None:
    import argparse

    def missing(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> list[str]:
        found = [f"{' '.join(path)}: description"] if path and not parser.description else []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found += missing(sub, (*path, name))
            elif not isinstance(action, argparse._HelpAction | argparse._VersionAction) and not action.help:
                found.append(f"{' '.join(path)}: {action.dest}")
        return found

    assert missing(build_parser(), ()) == []


def test_help_shows_defaults() -> None:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args(["compare", "--help"])
    assert "(default: last)" in out.getvalue()
