"""Reads of an embedded store nobody owns: no DDL on the query path, the store kept open between reads and let go
when idle or when a runner asks, the spool ingested only when it has new data, and no spool content failing a read.

chDB binds one store per process and this test process may hold the session's store, so each scenario runs in
a subprocess (the script below) against its own spool and data directories, as a notebook would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import orjson

from trackstream.store import store_held

CLI = [sys.executable, "-m", "trackstream.cli"]

_PRELUDE = """
import json, logging, sys, time
from pathlib import Path
import trackstream as ts
from trackstream import _query
from trackstream.store import StoreLock

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
DATA = Path(sys.argv[1])

def log_run(name, steps, first=0):
    with ts.start_run("p", run_id=name, name=name, params={"lr": 0.1}) as run:
        for step in range(first, first + steps):
            run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    ts.flush()

def wait(condition, what, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for " + what)
        time.sleep(0.02)

def store_free():
    lock = StoreLock(DATA)
    try:
        return lock.acquire()
    finally:
        lock.release()
"""


def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "TRACKSTREAM_SPOOL_DIR": str(tmp_path / "spool"),
           "TRACKSTREAM_DATA_DIR": str(tmp_path / "data")}
    env.pop("TRACKSTREAM_KAFKA_BOOTSTRAP", None)
    env.pop("TRACKSTREAM_CLICKHOUSE_URL", None)
    return env


def _run(tmp_path: Path, body: str, *, timeout_s: float = 300) -> dict[str, Any]:
    script = _PRELUDE + textwrap.dedent(body)
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "data")], env=_env(tmp_path),
                            capture_output=True, timeout=timeout_s, check=False)
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    report: dict[str, Any] = orjson.loads(result.stdout.splitlines()[-1])
    report["stderr"] = result.stderr.decode()
    return report


def test_reads_run_no_ddl_and_ingest_only_new_spool_data(tmp_path: Path) -> None:
    report = _run(tmp_path, """
        from trackstream.local import LocalIngest
        from trackstream.sinks.chdb_backend import ChdbBackend

        passes = []
        real_pass = LocalIngest.ingest_pass
        def counted(self, **kw):
            passes.append(1)
            return real_pass(self, **kw)
        LocalIngest.ingest_pass = counted

        log_run("a", 50)
        first = ts.runs("p")                      # the spool has news: the ingest path catches up (and migrates)
        after_first = len(passes)

        writes = []
        def refuse(name):
            def call(self, *args, **kwargs):
                writes.append(name + ": " + str(args[0])[:80])
                raise AssertionError("a read wrote: " + name)
            return call
        real = {name: getattr(ChdbBackend, name) for name in ("command", "insert", "create_database")}
        for name in real:
            setattr(ChdbBackend, name, refuse(name))
        reads = [ts.compare("p", "loss", agg="min"), ts.runs("p"), ts.sql("SELECT count() FROM points")]
        _query.release()
        reads.append(ts.runs("p"))                # a fresh session on the store: still no DDL
        no_news_passes = len(passes) - after_first
        for name, method in real.items():
            setattr(ChdbBackend, name, method)

        log_run("b", 30)
        grown = ts.compare("p", "loss", agg="min")
        print(json.dumps({"first": len(first), "after_first": after_first, "no_news_passes": no_news_passes,
                          "writes": writes, "count": reads[2][0][0], "grown": sorted(r["id"] for r in grown),
                          "passes": len(passes)}))
    """)
    assert report["first"] == 1
    assert report["after_first"] == 1
    assert report["writes"] == []
    assert report["no_news_passes"] == 0
    assert report["count"] == 50
    assert report["grown"] == ["a", "b"]
    assert report["passes"] == 2


def test_the_store_is_kept_open_between_reads_and_let_go_when_idle(tmp_path: Path) -> None:
    report = _run(tmp_path, """
        log_run("a", 10)
        reader = _query.backend()
        reader.idle_release_s = 0.5
        ts.runs("p")
        held = not store_free()                   # kept open after the read: the next one is cheap
        wait(store_free, "the idle reader to let the store go")
        again = ts.runs("p")                      # and opened again on the next read
        print(json.dumps({"held": held, "again": len(again)}))
    """)
    assert report["held"] is True
    assert report["again"] == 1


def test_a_runner_takes_the_store_from_a_busy_reader_and_reads_go_through_it(tmp_path: Path) -> None:
    env = _env(tmp_path)
    log = tmp_path / "local.log"
    script = _PRELUDE + textwrap.dedent("""
        log_run("a", 20)
        reader = _query.backend()
        reader.idle_release_s = 3600.0            # never idle: only the runner's request makes it let go
        results = set()
        started = time.monotonic()
        from trackstream.api.owner import read_owner
        while time.monotonic() - started < 120:
            results.add(len(ts.runs("p")))
            if read_owner(DATA) is not None:
                results.add(len(ts.runs("p")))    # through the runner's API now
                print(json.dumps({"served": True, "results": sorted(results)}))
                break
            time.sleep(0.02)
        else:
            print(json.dumps({"served": False}))
    """)
    reader = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "data")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    local: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "data" / "store.lock").exists() or not store_held(tmp_path / "data"):
            assert reader.poll() is None, reader.stderr.read().decode()[-3000:] if reader.stderr else ""
            assert time.monotonic() < deadline, "the reader never opened the store"
            time.sleep(0.05)
        with open(log, "wb") as out:
            local = subprocess.Popen([*CLI, "local"], env=env, stdout=out, stderr=subprocess.STDOUT)
        out_bytes, err_bytes = reader.communicate(timeout=180)
        assert reader.returncode == 0, err_bytes.decode()[-3000:]
        report = orjson.loads(out_bytes.splitlines()[-1])
        assert report == {"served": True, "results": [1]}, log.read_text()[-3000:]
        assert local.poll() is None, log.read_text()[-3000:]
    finally:
        for process in (reader, local):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=60)


def test_no_spool_content_fails_a_read(tmp_path: Path) -> None:
    report = _run(tmp_path, """
        import os
        from trackstream.local import LocalIngest

        log_run("a", 10)
        stored = ts.runs("p")
        _query.release()
        # a producer directory full of garbage: damage goes to the dead-letter file, the read goes on
        junk = Path(os.environ["TRACKSTREAM_SPOOL_DIR"]) / "junk-producer"
        junk.mkdir(parents=True)
        (junk / "LOCK").write_bytes(b"")
        (junk / "00000000000000000000.seg").write_bytes(b"TSSPOOL1" + os.urandom(4096))
        piped = Path(os.environ["TRACKSTREAM_SPOOL_DIR"]) / "fifo-producer"  # a FIFO must not hang the read
        piped.mkdir()
        (piped / "LOCK").write_bytes(b"")
        os.mkfifo(piped / "00000000000000000000.seg")
        garbage = ts.runs("p")
        # an ingest that fails outright: logged, and the read answers from what is stored
        def broken(self, **kw):
            raise RuntimeError("disk on fire")
        LocalIngest.ingest_pass = broken
        log_run("b", 5)
        _query.release()
        failing = ts.runs("p")
        print(json.dumps({"stored": len(stored), "garbage": len(garbage), "failing": len(failing),
                          "dlq": (DATA / "dlq.jsonl").read_text().count("spool_")}))
    """)
    assert report["stored"] == 1
    assert report["garbage"] == 1
    assert report["failing"] == 1
    assert report["dlq"] >= 1
    assert "could not bring the store" in report["stderr"]
    assert "disk on fire" in report["stderr"]


def test_a_store_nothing_was_written_to_holds_no_runs_and_creates_no_tables(tmp_path: Path) -> None:
    report = _run(tmp_path, """
        from trackstream.sinks.errors import QueryError
        empty = [ts.runs("p"), ts.compare("p", "loss"), ts.curves("p", ["a"], "loss")]
        try:
            ts.sql("SELECT count() FROM points")
            raised = None
        except QueryError as exc:
            raised = str(exc)
        print(json.dumps({"empty": empty, "raised": raised, "one": ts.sql("SELECT 1")}))
    """)
    assert report["empty"] == [[], [], {}]
    assert report["raised"] is not None
    assert "trackstream migrate" in report["raised"]
    assert report["one"] == [[1]]
