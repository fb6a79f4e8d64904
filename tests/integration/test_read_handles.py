"""``ts.get_run`` / ``ts.get_model``: read-only handles through the public API on an embedded store (no producer,
no status change), with the full history of a series and NotFoundError for what does not exist. Each script runs
in its own process against its own spool and store, as a notebook would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any


def _run(tmp_path: Path, script: str) -> Any:
    env = {**os.environ, "TRACKSTREAM_SPOOL_DIR": str(tmp_path / "spool"),
           "TRACKSTREAM_DATA_DIR": str(tmp_path / "data")}
    for name in ("TRACKSTREAM_KAFKA_BOOTSTRAP", "TRACKSTREAM_CLICKHOUSE_URL"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True,
                          timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


LOG = """
    import json, trackstream as ts
    run = ts.start_run("p", name="baseline", run_id="r1", params={"lr": 0.001, "layers": [64, 64]}, tags={"team": "a"})
    run.log_metric("e", 0.1, step=100)
    run.log_metric("e", 0.2, step=200)
    run.log_metric("acc", 0.9, single_value=True)
    for rank in (0, 1):
        with ts.start_run("p", name="ddp", run_id="r2", rank=rank, world_size=2) as part:
            for step in (0, 1):
                part.log_metric("loss", float(step + 10 * rank), step=step)
    with ts.model("p", "clf", version=3) as model:
        model.log_metric("f1", 0.8)
    run.flush()
    print(json.dumps("logged"))
"""


def test_a_read_only_handle_reads_everything_and_changes_nothing(tmp_path: Path) -> None:
    _run(tmp_path, LOG)
    got = _run(tmp_path, """
        import json, trackstream as ts
        run = ts.get_run("p", "r1")
        out = {"status": run.status, "name": run.name, "params": run.params, "tags": run.tags, "metrics": run.metrics,
               "history": run.history("e"), "ranks": ts.get_run("p", "r2").history("loss", ranks=True),
               "mean": ts.get_run("p", "r2").history("loss"), "model": ts.get_model("p", "clf", 3).metrics}
        print(json.dumps(out))
    """)
    assert got["name"] == "baseline"
    assert got["params"] == {"lr": 0.001, "layers": [64, 64]}
    assert got["tags"] == {"team": "a"}
    assert got["metrics"]["acc"] == 0.9
    assert [(h["step"], h["value"]) for h in got["history"]] == [(100, 0.1), (200, 0.2)]
    assert all(isinstance(h["time_ns"], int) and h["time_ns"] > 0 for h in got["history"])
    assert [(h["step"], h["rank"], h["value"]) for h in got["ranks"]] == [(0, 0, 0.0), (0, 1, 10.0), (1, 0, 1.0),
                                                                          (1, 1, 11.0)]
    assert [(h["step"], h["value"]) for h in got["mean"]] == [(0, 5.0), (1, 6.0)]
    assert got["model"] == {"f1": 0.8}
    # no producer was started and no status changed: the run's producers and status are as the logging left them
    rows = ('import json, trackstream as ts; '
            'print(json.dumps([(r["id"], r["status"], r["ranks"]) for r in ts.runs("p")]))')
    before = _run(tmp_path, rows)
    _run(tmp_path, 'import json, trackstream as ts; print(json.dumps(ts.get_run("p", "r1").status))')
    assert _run(tmp_path, rows) == before
    assert got["status"] == {i: s for i, s, _ in before}["r1"] == "completed"


def test_what_does_not_exist_raises_not_found_with_the_closest_names(tmp_path: Path) -> None:
    _run(tmp_path, LOG)
    got = _run(tmp_path, """
        import json, trackstream as ts
        out = []
        for call in (lambda: ts.get_run("p", "r11"), lambda: ts.get_run("p", "baseline"),
                     lambda: ts.get_run("p", "r1").history("ee"), lambda: ts.get_model("p", "clf"),
                     lambda: ts.get_run("q", "r1")):
            try:
                call()
                out.append(None)
            except ts.NotFoundError as exc:
                out.append([isinstance(exc, LookupError), str(exc)])
        print(json.dumps(out))
    """)
    assert all(found and found[0] for found in got), got
    messages = [found[1] for found in got]
    assert "did you mean 'r1'" in messages[0]
    assert "'baseline' is the name of 'r1'" in messages[1]
    assert "metric 'ee' not found for run 'r1'" in messages[2]
    assert "did you mean 'e'" in messages[2]
    assert "'clf'" in messages[3]
    assert "clf:3" in messages[3]
    assert "project 'q' not found" in messages[4]


def test_runs_are_searched_through_the_public_api(tmp_path: Path) -> None:
    _run(tmp_path, """
        import json, trackstream as ts
        for index, (lr, loss) in enumerate([(0.001, 0.5), (0.01, 0.3), (0.001, 0.9)]):
            with ts.start_run("s", name=f"n{index}", run_id=f"r{index}", params={"lr": lr},
                              tags={"team": "x" if index else "y"}) as run:
                run.log_metric("loss", loss, step=0)
        print(json.dumps("logged"))
    """)
    got = _run(tmp_path, """
        import json, trackstream as ts
        print(json.dumps([[r["id"] for r in rows] for rows in (
            ts.runs("s", params={"lr": 0.001}), ts.runs("s", order_by="loss.last"),
            ts.runs("s", order_by="-loss.last", limit=1), ts.runs("s", tags={"team": "x"}, status="completed"),
            ts.runs("s", status="running"))]))
    """)
    assert got == [["r0", "r2"], ["r1", "r0", "r2"], ["r2"], ["r1", "r2"], []]
    cli = _run(tmp_path, """
        import io, json, contextlib
        from trackstream.cli import main
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["runs", "s", "--param", "lr=0.001", "--tag", "team=x", "--order-by=-loss.last", "--json"])
        print(json.dumps([code, [r["id"] for r in json.loads(out.getvalue())]]))
    """)
    assert cli == [0, ["r2"]]


def test_the_cli_reads_well_at_80_columns(tmp_path: Path) -> None:
    _run(tmp_path, """
        import json, trackstream as ts
        common = {"optimizer": "adamw", "weight_decay": 0.01, "warmup_steps": 500, "scheduler": "cosine",
                  "dataset": "imagenet-1k", "layers": [64, 128, 256, 512]}
        for index, lr in enumerate((0.1, 0.01, 0.001)):
            with ts.start_run("cli", name=f"lr-{lr}", run_id=f"r{index}", params={**common, "lr": lr}) as run:
                for step in range(50):
                    run.log_metric("loss", 1.0 / (step + 1) + index, step=step)
        print(json.dumps("logged"))
    """)
    got = _run(tmp_path, """
        import io, json, contextlib, os
        os.environ["COLUMNS"] = "80"
        from trackstream.cli import main
        outs = []
        for argv in (["runs", "cli", "--metrics", "loss"], ["curves", "cli", "loss", "--runs", "r0,r1,r2"],
                     ["compare", "cli", "loss", "--agg", "min", "--desc"]):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                code = main(argv)
            outs.append([code, out.getvalue()])
        print(json.dumps(outs))
    """)
    (runs_code, runs_out), (curves_code, curves_out), (compare_code, compare_out) = got
    assert runs_code == curves_code == compare_code == 0
    runs_lines = runs_out.splitlines()
    assert max(len(line) for line in runs_lines) <= 80
    assert "lr" in runs_out
    assert "weight_decay" not in runs_out  # the same on every run: not shown
    assert len([line for line in runs_lines if "lr-0." in line]) == 3  # one line per run
    assert len(curves_out.splitlines()) < 12  # a summary line per run, not 1,000 buckets
    assert "lr-0.1" in curves_out
    firsts = [line.split()[0] for line in compare_out.splitlines() if line.split()]
    assert [cell for cell in firsts if cell in ("r0", "r1", "r2")] == ["r2", "r1", "r0"]  # --desc: highest first
    assert max(len(line) for line in compare_out.splitlines()) <= 80
