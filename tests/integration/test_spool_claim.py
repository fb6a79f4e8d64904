"""A spool feeds one store: a read or a runner on another store (a wrong ``--data-dir``, an old store) leaves it
alone instead of draining its points where nobody reads them. Real chDB stores, the CLI in subprocesses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from test_local import CLI, _cli_json, _env

LOG = """
import sys, trackstream as ts
for name in sys.argv[1:]:
    with ts.start_run("claim", run_id=name) as run:
        run.log_metric("loss", 1.0, step=0)
"""


def log_runs(env: dict[str, str], *names: str) -> None:
    subprocess.run([sys.executable, "-c", LOG, *names], env=env, check=True, timeout=120)


def test_a_store_that_does_not_own_the_spool_leaves_it_for_the_one_that_does(tmp_path: Path) -> None:
    spool, data, other = tmp_path / "spool", tmp_path / "data", tmp_path / "other"
    env = _env(spool, data)
    log_runs(env, "first")
    assert [row["id"] for row in _cli_json(env, "runs", "claim")] == ["first"]  # this store ingests: its spool
    log_runs(env, "second", "third")
    wrong = subprocess.run([*CLI, "runs", "claim", "--data-dir", str(other), "--json"], env=env,
                           capture_output=True, timeout=300, check=False)
    assert f"feeds the store {data.resolve()}" in wrong.stderr.decode()  # a warning; the read goes on
    assert f"TRACKSTREAM_DATA_DIR={data.resolve()}" in wrong.stderr.decode()
    runner = subprocess.run([*CLI, "local", "--data-dir", str(other)], env=env, capture_output=True,
                            timeout=300, check=False)
    assert runner.returncode != 0  # refused at start, before reading anything
    assert f"feeds the store {data.resolve()}" in runner.stderr.decode()
    assert sorted(row["id"] for row in _cli_json(env, "runs", "claim")) == ["first", "second", "third"]


def test_a_claim_whose_store_is_gone_is_taken_over(tmp_path: Path) -> None:
    spool, data, gone = tmp_path / "spool", tmp_path / "data", tmp_path / "gone"
    spool.mkdir()
    (spool / "store.json").write_text(f'{{"data_dir": "{gone}"}}\n')
    env = _env(spool, data)
    log_runs(env, "kept")
    assert [row["id"] for row in _cli_json(env, "runs", "claim")] == ["kept"]
    assert str(data.resolve()) in (spool / "store.json").read_text()
