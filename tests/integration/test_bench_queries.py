"""``bench/queries.py`` (``make bench-queries``): the multi-rank vs single-rank read benchmark runs end to end.

Only the shape of its report is checked, never a timing: both stores are built through Processor and Sink,
and every query row carries p50 / p95 figures for both. The re-labelled runs the benchmark writes (to spare
generating every run's values) must be exactly what ``run_envelopes`` gives for their spec.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from trackstream.streams.synthetic import run_envelopes

BENCH = Path(__file__).resolve().parents[2] / "bench" / "queries.py"
NUMBER = r"[0-9][0-9,]*(?:\.[0-9]+)?"


def _bench_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_queries", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_relabelled_runs_are_the_envelopes_run_envelopes_gives() -> None:
    bench = _bench_module()
    source = bench.RunSource(ranks=3, steps=25, steps_per_envelope=10, seeds=2)
    for index in (0, 1, 2, 5):  # 0 and 1 are generated; 2 and 5 re-label them
        expected = list(run_envelopes(source.spec(index), params=bench.run_params(index)))
        got = list(source.envelopes(index))
        assert [dataclasses.asdict(e) for e in got] == [dataclasses.asdict(e) for e in expected], index
    assert source.spec(5).seed == 1


def test_quick_run_prints_build_figures_and_the_comparison_table(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRACKSTREAM_")}
    env["TMPDIR"] = str(tmp_path)
    done = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=240,
                          env=env, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()

    build = {match[1]: match for line in lines if (match := re.fullmatch(
        rf"(single|multi)\s+(\d+)\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+{NUMBER}\s+\d+\s+{NUMBER}\s+\d+",
        line))}
    assert set(build) == {"single", "multi"}, done.stdout
    assert build["single"][2] == "1"
    assert build["multi"][2] == "4"
    single_points, multi_points = (int(build[label][3].replace(",", "")) for label in ("single", "multi"))
    assert single_points == 20 * 500 * 2
    assert multi_points == 4 * single_points
    for label in ("single", "multi"):  # rows of points: the ranks' points and maybe rows derived from them
        assert int(build[label][4].replace(",", "")) >= int(build[label][3].replace(",", ""))

    assert any("single p95" in line and "multi p95" in line and "ratio p95" in line for line in lines), done.stdout
    queries = {line.split("  ")[0]: line for line in lines if line.startswith(("compare(", "runs()", "curves("))}
    assert set(queries) == {'compare(loss, agg="min")', 'compare(loss, agg="last")', "runs()",
                            "curves(10 runs, loss, points=1000)"}, done.stdout
    for line in queries.values():
        figures = re.findall(rf"\s({NUMBER})(?=\s)", line.split("p95 <=")[0] + " ")
        assert len(figures) == 6, line  # single p50, p95, multi p50, p95, ratio p50, p95
        assert re.search(r"\s5/5\s", line), line  # calls timed on each store: --quick repeats 5 times
        assert "p95 <=" in line
        assert "ratio <= 1.5" in line
    # nothing is left behind in the temporary directory
    assert not list(tmp_path.glob("trackstream-bench-ranks-*"))
