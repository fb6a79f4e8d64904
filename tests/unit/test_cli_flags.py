"""The CLI's global flags work before and after the subcommand, --version answers, and compare rows come
best-first."""

from __future__ import annotations

import math

import pytest

from trackstream import __version__
from trackstream.cli import best_first, build_parser


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
