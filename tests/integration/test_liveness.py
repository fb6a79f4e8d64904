"""A SIGKILLed training process leaves its run crashed, not running forever; a live one stays running.

Embedded pipeline: the SDK in child processes (heartbeats every 100 ms) -> spool -> `trackstream local` with a
1 s heartbeat timeout -> chDB -> runs() through the runner's query API.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from trackstream import _query
from trackstream.schemas.settings import StoreSettings

CHILD = textwrap.dedent("""
    import sys, time, trackstream as ts
    run = ts.start_run("liveness", run_id=sys.argv[1], heartbeat_ms=100, linger_ms=10)
    for step in range(100):
        run.log_metric("loss", 1.0 / (step + 1), step=step)
    run.flush()
    open(sys.argv[2], "w").close()
    while True:
        time.sleep(0.05)  # alive: the flusher thread sends heartbeats
""")


def _wait_for(condition: Callable[[], Any], what: str, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)
    return value


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    spool, data = tmp_path / "spool", tmp_path / "data"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TRACKSTREAM_")},
           "TRACKSTREAM_SPOOL_DIR": str(spool), "TRACKSTREAM_DATA_DIR": str(data)}
    with open(tmp_path / "local.log", "wb") as log:
        local = subprocess.Popen([sys.executable, "-m", "trackstream.cli", "local", "--heartbeat-timeout-ms", "1000"],
                                 env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        from trackstream.api.owner import read_owner

        _wait_for(lambda: read_owner(data) is not None or local.poll() is not None, "the runner")
        assert local.poll() is None, (tmp_path / "local.log").read_text()
        yield env, data
    finally:
        local.terminate()
        local.wait(60)


def test_a_killed_process_crashes_its_run_and_a_live_one_keeps_it_running(
    runner: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, data = runner
    children = {}
    for run_id in ("killed", "alive"):
        ready = tmp_path / f"{run_id}.ready"
        children[run_id] = subprocess.Popen([sys.executable, "-c", CHILD, run_id, str(ready)], env=env)
        _wait_for(ready.exists, f"{run_id} to log")
    try:
        reader = _query.reader(StoreSettings(data_dir=str(data)))

        def status() -> dict[str, str]:
            return {row["id"]: row["status"] for row in reader.runs("liveness")}

        _wait_for(lambda: status() == {"killed": "running", "alive": "running"}, "both runs to be running")
        children["killed"].send_signal(signal.SIGKILL)
        children["killed"].wait(30)
        _wait_for(lambda: status().get("killed") == "crashed", "the killed run to be crashed")
        rows = {row["id"]: row for row in reader.runs("liveness")}
        assert [rank["status"] for rank in rows["killed"]["ranks"]] == ["crashed"]
        assert rows["killed"]["ended_at"] is not None
        # the live process went on beating all along: several heartbeat timeouts later it still runs
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert status()["alive"] == "running"
            time.sleep(0.2)
        stored = reader.sql("SELECT entity_id, count() FROM points FINAL WHERE project = 'liveness' "
                            "GROUP BY entity_id ORDER BY entity_id")
        assert [tuple(row) for row in stored] == [("alive", 100), ("killed", 100)]
    finally:
        for child in children.values():
            if child.poll() is None:
                child.kill()
                child.wait(30)
