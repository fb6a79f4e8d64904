"""The embedded default end to end: spool -> `trackstream local` -> chDB, the demo, and reads over HTTP.

chDB binds one store per process, and this test process may hold the session's store already, so every read
of another store happens in a subprocess through the CLI (`trackstream sql --json`), as a user would run it.
"""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from trackstream.demo import sweep_configs
from trackstream.demo_worker import metric_names, simulated_point
from trackstream.sinks.schema import CROSS_RANK

CLI = [sys.executable, "-m", "trackstream.cli"]


def _env(spool: Path, data: Path) -> dict[str, str]:
    env = {**os.environ, "TRACKSTREAM_SPOOL_DIR": str(spool), "TRACKSTREAM_DATA_DIR": str(data)}
    env.pop("TRACKSTREAM_KAFKA_BOOTSTRAP", None)
    env.pop("TRACKSTREAM_CLICKHOUSE_URL", None)
    return env


def _cli_json(env: dict[str, str], *args: str) -> Any:
    result = subprocess.run([*CLI, *args, "--json"], env=env, capture_output=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    return orjson.loads(result.stdout)


def _sql(env: dict[str, str], query: str, **params: Any) -> list[list[Any]]:
    args = ["sql", query]
    for name, value in params.items():
        args += ["--param", f"{name}={orjson.dumps(value).decode()}"]
    return [list(row.values()) for row in _cli_json(env, *args)]  # --json: one {column: value} object per row


def _wait_for(predicate: Any, *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def test_demo_stores_exactly_the_generated_points(tmp_path: Path) -> None:
    data, spool, plot, report = tmp_path / "data", tmp_path / "spool", tmp_path / "loss.png", tmp_path / "r.json"
    env = _env(spool, data)
    configs, ranks, steps, metrics = 3, 2, 60, 3
    result = subprocess.run(
        [*CLI, "demo", "--configs", str(configs), "--ranks", str(ranks), "--steps", str(steps), "--metrics",
         str(metrics), "--data-dir", str(data), "--spool-dir", str(spool), "--plot", str(plot), "--json", str(report),
         "--paced-seconds", "2", "--paced-rate", "3000"],
        env=env, capture_output=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    summary = orjson.loads(report.read_bytes())
    sweep = summary["sweep"]

    rows = _sql(env, "SELECT entity_id, metric, rank, step, value FROM points FINAL WHERE project = 'demo' "
                     "AND startsWith(entity_id, {sweep:String}) AND kind = 'series'", sweep=f"{sweep}-")
    stored: dict[tuple[str, str, int], dict[int, float]] = defaultdict(dict)
    cross: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)  # the per-step means over the ranks
    for entity_id, metric, rank, step, value in rows:
        if rank == CROSS_RANK:
            cross[(entity_id, metric)][step] = value
        else:
            stored[(entity_id, metric, rank)][step] = value
    expected_series = 0
    for index, params in enumerate(sweep_configs(configs)):
        for rank in range(ranks):
            noise = random.Random((7 + index) * 1000 + rank)
            expected: dict[str, dict[int, float]] = defaultdict(dict)
            for step in range(steps):
                for name in metric_names(metrics):
                    expected[name][step] = simulated_point(name, step, steps, params, noise)
            for name, points in expected.items():
                assert stored[(f"{sweep}-c{index}", name, rank)] == points
                expected_series += 1
    assert len(stored) == expected_series
    assert len(rows) == configs * (ranks + 1) * steps * metrics
    assert len(cross) == configs * metrics
    for (entity_id, metric), means in cross.items():
        assert means == {s: math.fsum(stored[(entity_id, metric, r)][s] for r in range(ranks)) / ranks
                         for s in range(steps)}

    by_run = {row["id"]: row for row in summary["by_run"]}
    assert len(by_run) == configs
    for index in range(configs):
        losses = [sum(stored[(f"{sweep}-c{index}", "loss", r)][s] for r in range(ranks)) / ranks
                  for s in range(steps)]
        assert by_run[f"{sweep}-c{index}"]["value"] == pytest.approx(min(losses), rel=1e-12)
    assert {row["lr"] for row in summary["grouped"]} == {c["lr"] for c in sweep_configs(configs)}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["figures"]["points"] == configs * ranks * (steps * metrics + 1)
    # the maximum ingest rate counts from the first point logged, so it is below the drain rate (from the first seen)
    figures = summary["figures"]
    assert 0 < figures["ingest_points_per_s"] <= figures["drain_points_per_s"]

    # The paced phase: a second sweep of as many processes, every point it says it logged stored once.
    paced = summary["figures"]["paced"]
    assert paced["points"] > 0
    assert paced["target_points_per_s"] == 3000
    assert {"latency_p50_ms", "latency_p99_ms", "latency_samples"} <= paced.keys()
    counts = _sql(env, "SELECT count(), uniqExact(entity_id, metric, rank, step), uniqExact(entity_id, rank) "
                       "FROM points WHERE startsWith(entity_id, {sweep:String}) AND kind = 'series' "
                       "AND rank != {cross:UInt32}", sweep=f"{summary['paced_sweep']}-", cross=CROSS_RANK)
    assert counts == [[paced["points"], paced["points"], configs * ranks]]


def _start_local(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([*CLI, "local"], env=env, stdout=out, stderr=subprocess.STDOUT)


def _owner_url(data: Path) -> str | None:
    from trackstream.api.owner import read_owner

    owner = read_owner(data)
    return None if owner is None else owner.url


def test_local_killed_mid_ingest_then_restarted_ingests_exactly_once(tmp_path: Path) -> None:
    data, spool = tmp_path / "data", tmp_path / "spool"
    env = _env(spool, data)
    steps = 20_000
    script = (
        "import sys, trackstream as ts\n"
        "run = ts.start_run('kill', run_id='r' + sys.argv[1], rank=0, world_size=1)\n"
        f"for s in range({steps}):\n"
        "    run.log_metrics({'a': s * 0.5, 'b': -s}, step=s)\n"
        "run.finish()\n"
    )
    producers = [subprocess.Popen([sys.executable, "-c", script, str(i)], env=env) for i in range(3)]
    local = _start_local(env, tmp_path / "local.log")
    try:
        _wait_for(lambda: b"ingested" in (tmp_path / "local.log").read_bytes(), timeout_s=120,
                  what="the first ingest pass")
        local.send_signal(signal.SIGKILL)
        local.wait(30)
        assert all(p.wait(120) == 0 for p in producers)
        local = _start_local(env, tmp_path / "local.log")
        _wait_for(lambda: _owner_url(data) is not None, timeout_s=120, what="the restarted runner")

        def ingested() -> bool:
            return _sql(env, "SELECT count() FROM points WHERE project = 'kill'")[0][0] >= 3 * steps * 2

        _wait_for(ingested, timeout_s=180, what="all points")
        raw = _sql(env, "SELECT count(), uniqExact(entity_id, metric, step) FROM points WHERE project = 'kill'")
        assert raw == [[3 * steps * 2, 3 * steps * 2]]
        runs = {row["id"]: row for row in _cli_json(env, "runs", "kill")}
        assert {r["status"] for r in runs.values()} == {"completed"}
    finally:
        local.terminate()
        local.wait(60)
    assert _owner_url(data) is None


def test_cli_query_goes_through_the_owner_and_matches_an_in_process_query(tmp_path: Path) -> None:
    data, spool = tmp_path / "data", tmp_path / "spool"
    env = _env(spool, data)
    script = (
        "import trackstream as ts\n"
        "for i, lr in enumerate([0.1, 0.01, 0.001]):\n"
        "    with ts.start_run('http', name=f'run{i}', run_id=f'run{i}', params={'lr': lr, 'tag': 'x'}) as run:\n"
        "        run.log_metric('loss', [1.0 / (i + 1), 0.5 / (i + 1), float('nan')])\n"
    )
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120)
    in_process = subprocess.run(
        [sys.executable, "-c", "import orjson, trackstream as ts\n"
         "from trackstream.api.wire import to_wire\n"
         "print(orjson.dumps(to_wire(ts.compare('http', 'loss', agg='min'))).decode())"],
        env=env, capture_output=True, timeout=300, check=True,
    )
    direct = orjson.loads(in_process.stdout)
    local = _start_local(env, tmp_path / "local.log")
    try:
        _wait_for(lambda: _owner_url(data) is not None, timeout_s=120, what="the runner's query API")
        # another shell, without TRACKSTREAM_DATA_DIR: --data-dir names the store the runner owns
        other_shell = {**{k: v for k, v in env.items() if k not in ("TRACKSTREAM_DATA_DIR", "TRACKSTREAM_SPOOL_DIR")},
                       "HOME": str(tmp_path / "home")}
        through_http = _cli_json(other_shell, "compare", "http", "loss", "--agg", "min", "--data-dir", str(data))
        assert _cli_json(other_shell, "runs", "http") == []  # its default store (under HOME) holds nothing
        log = (tmp_path / "local.log").read_text()
    finally:
        local.terminate()
        local.wait(60)
    assert sorted(through_http, key=lambda r: r["id"]) == direct  # the CLI lists the best (lowest) first
    assert [row["id"] for row in through_http] == ["run2", "run1", "run0"]
    assert [row["value"] for row in sorted(direct, key=lambda r: r["id"])] == [0.5, 0.25, 0.5 / 3]
    assert "serving the query API" in log


def test_cli_runs_compare_curves_and_plot_on_the_embedded_store(tmp_path: Path) -> None:
    data, spool, plot = tmp_path / "data", tmp_path / "spool", tmp_path / "curves.png"
    env = _env(spool, data)
    script = (
        "import trackstream as ts\n"
        "for i in range(2):\n"
        "    with ts.start_run('cli', name=f\"it's {i}\", run_id=f'c{i}', params={'lr': 0.1 * (i + 1)},\n"
        "                      tags={'note': 'a \\\\ b; DROP TABLE points'}) as run:\n"
        "        run.log_metric('loss', [float(100 - s) / (i + 1) for s in range(100)])\n"
    )
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120)
    runs = {row["id"]: row for row in _cli_json(env, "runs", "cli")}
    assert runs["c0"]["name"] == "it's 0"
    assert runs["c1"]["tags"] == {"note": "a \\ b; DROP TABLE points"}
    assert runs["c1"]["params"] == {"lr": 0.2}
    curves = _cli_json(env, "curves", "cli", "loss", "--runs", "c0,c1", "--points", "10")
    assert [len(curves[run]) for run in ("c0", "c1")] == [10, 10]
    assert curves["c0"][0]["max"] == 100.0
    assert curves["c1"][-1]["min"] == 0.5
    table = subprocess.run([*CLI, "curves", "cli", "loss", "--runs", "c0,c1", "--plot", str(plot)], env=env,
                           capture_output=True, timeout=300, check=False)
    assert table.returncode == 0, table.stderr.decode()[-2000:]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rendered = subprocess.run([*CLI, "compare", "cli", "loss", "--agg", "min"], env=env, capture_output=True,
                              timeout=300, check=True).stdout.decode()
    assert "it's 1" in rendered
    assert "0.5" in rendered
