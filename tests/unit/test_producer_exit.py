"""How a training process ends: SIGTERM (default or chained handler), sys.exit codes; checked in the spool."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from trackstream.producers.spool import SpoolReader, list_spools
from trackstream.schemas import Envelope, decode

REPO = Path(__file__).resolve().parents[2]

# Logs two series in a tight loop (so the signal often lands inside a log call) and says when it is warm.
LOOP = """
import trackstream as ts
run = ts.start_run("proj", run_id="r")
i = 0
while True:
    run.log_metrics({"a": float(i), "b": -float(i)})
    i += 1
    if i == 20_000:
        print("ready", flush=True)
"""


def start(body: str, spool_dir: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "TRACKSTREAM_SPOOL_DIR": str(spool_dir), "PYTHONPATH": str(REPO)}
    env.pop("TRACKSTREAM_KAFKA_BOOTSTRAP", None)
    return subprocess.Popen([sys.executable, "-c", "import trackstream as ts\n" + textwrap.dedent(body)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def terminate_when_ready(process: subprocess.Popen[str]) -> tuple[str, str]:
    assert process.stdout is not None
    line = process.stdout.readline()
    if line.strip() != "ready":
        process.kill()
        pytest.fail(f"child did not start: {line!r} {process.communicate(timeout=30)}")
    process.send_signal(signal.SIGTERM)
    return process.communicate(timeout=60)


def spooled(spool_dir: Path) -> list[Envelope]:
    found = [decode(p) for s in list_spools(spool_dir) for _, _, p in SpoolReader(s.path).frames()]
    return sorted(found, key=lambda e: (e.producer_id, e.seq))


def finished(found: list[Envelope]) -> list[Any]:
    return [ev.data["status"] for e in found for ev in e.events if ev.type == "run_finished"]


def assert_every_point(found: list[Envelope], minimum: int) -> None:
    """Series a and b hold steps 0..n-1 (n >= minimum) with their values, nothing missing or torn."""
    points: dict[str, list[tuple[int, float]]] = {"a": [], "b": []}
    for envelope in found:
        for batch in envelope.metrics:
            points[batch.name].extend(zip(batch.steps, batch.values, strict=True))
    count = len(points["a"])
    assert count >= minimum
    assert points["a"] == [(i, float(i)) for i in range(count)]
    assert points["b"] == [(i, -float(i)) for i in range(count)]
    assert found[-1].events[-1].type == "run_finished", "the run ends after its last point"


def test_sigterm_delivers_the_buffer_finishes_the_run_as_killed_and_dies_of_sigterm(tmp_path: Path) -> None:
    process = start(LOOP, tmp_path)
    _, stderr = terminate_when_ready(process)
    assert process.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM), stderr
    found = spooled(tmp_path)
    assert finished(found) == ["killed"]
    assert_every_point(found, 20_000)
    assert [s.alive for s in list_spools(tmp_path)] == [False]


def test_sigterm_chains_to_the_programs_own_handler(tmp_path: Path) -> None:
    process = start(textwrap.dedent("""
        import signal, sys
        def own(signum, frame):
            print("own handler", signum, flush=True)
            sys.exit(5)
        signal.signal(signal.SIGTERM, own)
    """) + LOOP, tmp_path)
    stdout, stderr = terminate_when_ready(process)
    assert process.returncode == 5, stderr
    assert f"own handler {int(signal.SIGTERM)}" in stdout
    found = spooled(tmp_path)
    assert finished(found) == ["killed"], "a job stopped by SIGTERM is killed, whatever its exit code"
    assert_every_point(found, 20_000)


def test_an_ignored_sigterm_and_runs_started_off_the_main_thread_install_nothing(tmp_path: Path) -> None:
    process = start("""
        import signal, threading
        def in_thread():
            ts.start_run("proj").finish()
        thread = threading.Thread(target=in_thread)
        thread.start()
        thread.join()
        print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
        run = ts.start_run("proj")
        print(signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        import trackstream.producers.runtime as runtime
        runtime._sigterm_installed = False
        ts.start_run("proj")
        print(signal.getsignal(signal.SIGTERM) is signal.SIG_IGN)
    """, tmp_path)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert stdout.split() == ["True", "True", "True"]


@pytest.mark.parametrize(("call", "code", "status"), [
    ("sys.exit(3)", 3, "failed"),
    ("sys.exit('no data')", 1, "failed"),
    ("sys.exit(0)", 0, "completed"),
    ("sys.exit()", 0, "completed"),
])
def test_sys_exit_with_a_non_zero_code_fails_the_run(tmp_path: Path, call: str, code: int, status: str) -> None:
    process = start(f"""
        import sys
        run = ts.start_run("proj", run_id="r")
        for i in range(1000):
            run.log_metrics({{"a": float(i), "b": -float(i)}})
        {call}
    """, tmp_path)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    found = spooled(tmp_path)
    assert finished(found) == [status]
    assert_every_point(found, 1000)


def test_sys_exit_inside_a_with_block_uses_the_exit_code(tmp_path: Path) -> None:
    process = start("""
        import sys
        with ts.start_run("proj", run_id="clean") as run:
            run.log_metrics({"a": 0.0, "b": -0.0})
            try:
                with ts.start_run("proj", run_id="bad") as other:
                    sys.exit(2)
            except SystemExit:
                pass
            sys.exit(0)
    """, tmp_path)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    found = spooled(tmp_path)
    by_run = {e.entity.id: ev.data["status"] for e in found for ev in e.events if ev.type == "run_finished"}
    assert by_run == {"clean": "completed", "bad": "failed"}
