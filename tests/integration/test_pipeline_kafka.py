"""The whole Kafka deployment end to end: SDK processes -> Kafka -> stream worker -> sink worker -> chDB -> queries.

`trackstream demo --bootstrap` starts the two workers as subprocesses (and stops them); the sink worker owns the
chDB store and serves the query API, which the demo and this test read through.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

CLI = [sys.executable, "-m", "trackstream.cli"]


@pytest.mark.kafka
def test_sweep_through_kafka_workers_lands_every_point_once(kafka_bootstrap: str, tmp_path: Path) -> None:
    data, report = tmp_path / "data", tmp_path / "report.json"
    env = {**os.environ, "TRACKSTREAM_DATA_DIR": str(data), "TRACKSTREAM_SPOOL_DIR": str(tmp_path / "spool")}
    env.pop("TRACKSTREAM_CLICKHOUSE_URL", None)
    configs, ranks, steps, metrics = 2, 2, 200, 2
    result = subprocess.run(
        [*CLI, "demo", "--bootstrap", kafka_bootstrap, "--configs", str(configs), "--ranks", str(ranks),
         "--steps", str(steps), "--metrics", str(metrics), "--data-dir", str(data), "--plot",
         str(tmp_path / "loss.png"), "--json", str(report), "--paced-seconds", "2", "--paced-rate", "3000"],
        env=env, capture_output=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    summary = orjson.loads(report.read_bytes())
    assert summary["figures"]["points"] == configs * ranks * (steps * metrics + 1)
    # The workers are gone: this read opens the store directly (after the runner-less catch-up, a no-op).
    query = [*CLI, "sql", "--json", "SELECT rank = 4294967295 AS cross_rank, count(), "
             "uniqExact(entity_id, metric, rank, step) FROM points WHERE startsWith(entity_id, {sweep:String}) "
             "GROUP BY cross_rank ORDER BY cross_rank", "--param", f"sweep={summary['sweep']}-"]
    counts = [list(row.values()) for row in
              orjson.loads(subprocess.run(query, env=env, capture_output=True, timeout=300, check=True).stdout)]
    expected = configs * ranks * (steps * metrics + 1)
    means = configs * steps * metrics  # the cross-rank rows: one mean over the ranks per (run, series, step)
    assert counts == [[False, expected, expected], [True, means, means]]
    paced = summary["figures"]["paced"]  # the paced phase's sweep: every point it logged, once
    query = [*CLI, "sql", "--json", "SELECT count(), uniqExact(entity_id, metric, rank, step) FROM points "
             "WHERE startsWith(entity_id, {sweep:String}) AND rank < 16777216",  # not the cross-rank rows
             "--param", f"sweep={summary['paced_sweep']}-"]
    counts = [list(row.values()) for row in
              orjson.loads(subprocess.run(query, env=env, capture_output=True, timeout=300, check=True).stdout)]
    assert paced["points"] > 0
    assert counts == [[paced["points"], paced["points"]]]
    runs = {row["id"]: row for row in summary["by_run"]}
    assert len(runs) == configs
    assert all(row["params"] for row in runs.values())
