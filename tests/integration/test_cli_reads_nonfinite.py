"""A diverging run through the real CLI on an embedded store: ``compare``, ``runs`` and ``curves`` name its NaN and
±Inf (counts and first steps) in their tables and JSON, instead of showing a healthy-looking best value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
from test_cli_migrate import _run

WRITE = """
import math, sys
from trackstream.schemas.envelope import EntityRef, MetricBatch
from trackstream.schemas.processed import EntityState, PointBlock
from trackstream.sinks.chdb_backend import ChdbBackend
from trackstream.sinks.sink import Sink
sink = Sink(ChdbBackend(sys.argv[1]))
for i, name in enumerate(("calm", "wild")):
    values = [2.0 / (1 + s) for s in range(100)]
    if name == "wild":
        values[50], values[60], values[70] = math.nan, math.inf, math.nan
    ref = EntityRef("p", "run", f"r{i}")
    batch = MetricBatch("loss", "series", list(range(100)), [10**18 + s for s in range(100)], values)
    sink.write([PointBlock(ref, 0, f"producer-{i}", 0, [batch], [0])],
               entity_states=[EntityState(ref, name, "running", {"lr": 0.1 * (i + 1)}, {}, 1, 0, [], 0, 1)])
"""


def test_compare_runs_and_curves_mark_nan_and_inf(tmp_path: Path) -> None:
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-c", WRITE, str(data)], check=True, timeout=120)
    where = ("--data-dir", str(data))

    compared = _run(tmp_path, "compare", "p", "loss", "--agg", "max", "--json", *where)
    assert compared.returncode == 0, compared.stderr[-2000:]
    rows = {row["name"]: row for row in orjson.loads(compared.stdout)}
    assert (rows["wild"]["nan_count"], rows["wild"]["inf_count"]) == (2, 1)
    assert (rows["wild"]["first_nan_step"], rows["wild"]["first_inf_step"]) == (50, 60)
    assert (rows["calm"]["nan_count"], rows["calm"]["first_nan_step"]) == (0, None)

    table = _run(tmp_path, "compare", "p", "loss", "--agg", "min", *where)
    assert table.returncode == 0, table.stderr[-2000:]
    wild, = (line for line in table.stdout.splitlines() if " wild " in line)
    assert "NaN:2@50 Inf:1@60" in wild

    runs = _run(tmp_path, "runs", "p", *where)
    assert runs.returncode == 0, runs.stderr[-2000:]
    assert "loss NaN:2@50 Inf:1@60" in runs.stdout
    summaries = orjson.loads(_run(tmp_path, "runs", "p", "--json", *where).stdout)
    wild_loss = next(r for r in summaries if r["name"] == "wild")["metrics"]["loss"]
    assert (wild_loss["nan_count"], wild_loss["inf_count"], wild_loss["first_nan_step"]) == (2, 1, 50)

    curves = _run(tmp_path, "curves", "p", "loss", "--runs", "r0,r1", *where)
    assert curves.returncode == 0, curves.stderr[-2000:]
    assert "NaN:2 Inf:1" in curves.stdout
    buckets = orjson.loads(_run(tmp_path, "curves", "p", "loss", "--runs", "r1", "--points", "10", "--json",
                                *where).stdout)["r1"]
    assert [(b["step_from"], b["nan_count"], b["inf_count"]) for b in buckets if b["nan_count"] or b["inf_count"]] \
        == [(50, 1, 0), (60, 0, 1), (70, 1, 0)]
