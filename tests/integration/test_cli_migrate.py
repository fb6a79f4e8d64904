"""`trackstream migrate`: the one command besides the writers that creates a store's database and tables.

Reads never create tables: a fresh embedded store holds no runs, and SQL over its tables answers with a clear
error until something writes to it or `trackstream migrate` runs. Each command runs in its own process (chDB
binds one store per process).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

from trackstream.store import StoreLock

CLI = [sys.executable, "-m", "trackstream.cli"]


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKSTREAM_")}
    env["TRACKSTREAM_SPOOL_DIR"] = str(tmp_path / "spool")  # empty: no read catches up with anything
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=300, check=False)


def test_migrate_creates_the_tables_a_read_needs_and_can_run_again(tmp_path: Path) -> None:
    data = tmp_path / "data"
    nothing = _run(tmp_path, "runs", "p", "--json", "--data-dir", str(data))
    assert nothing.returncode == 0, nothing.stderr[-2000:]
    assert orjson.loads(nothing.stdout) == []
    before = _run(tmp_path, "sql", "SELECT count() FROM points", "--json", "--data-dir", str(data))
    assert before.returncode == 1
    assert "trackstream migrate" in before.stderr, before.stderr[-2000:]
    assert not (data / "store").exists()
    assert not (data / "metadata").exists()
    for _ in range(2):  # idempotent
        migrated = _run(tmp_path, "migrate", "--data-dir", str(data))
        assert migrated.returncode == 0, migrated.stderr[-2000:]
    after = _run(tmp_path, "sql", "SELECT count() FROM points", "--json", "--data-dir", str(data))
    assert after.returncode == 0, after.stderr[-2000:]
    assert orjson.loads(after.stdout) == [{"count()": 0}]  # --json: one object per row, by column name


def test_migrate_leaves_a_store_that_a_live_process_owns(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    # This test's process stands for a live owner: the record is what migrate looks at first.
    (data / "owner.json").write_bytes(orjson.dumps({"url": "http://127.0.0.1:9", "pid": os.getpid(),
                                                    "host": "127.0.0.1", "port": 9}))
    lock = StoreLock(data)  # and holds the store, as every live owner does
    assert lock.acquire()
    try:
        refused = _run(tmp_path, "migrate", "--data-dir", str(data))
    finally:
        lock.release()
    assert refused.returncode == 1
    assert f"process {os.getpid()} owns the store" in refused.stderr, refused.stderr[-2000:]
    assert not (data / "metadata").exists()
    assert not (data / "store").exists()


OLD_SINK_CHUNKS = """
import sys
from trackstream.sinks.chdb_backend import ChdbBackend
from trackstream.sinks import schema
backend = ChdbBackend(sys.argv[1])
backend.command(schema.SINK_CHUNKS.replace("    write_key String DEFAULT ''\\n", "").replace("now(),", "now()"))
backend.command("INSERT INTO sink_chunks (group_id, topic, partition, first_offset, last_offset) "
                "VALUES ('g', 'p.points', 0, 0, 9)")
"""


def test_migrate_adds_the_write_key_to_a_store_made_before_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-c", OLD_SINK_CHUNKS, str(data)], check=True, timeout=120)
    assert _run(tmp_path, "migrate", "--data-dir", str(data)).returncode == 0
    read = ("from trackstream.sinks.chdb_backend import ChdbBackend; from trackstream.sinks.chunks import "
            "recorded_chunks; import sys, collections; tp = collections.namedtuple('TP', 'topic partition')"
            "('p.points', 0); from trackstream.sinks.sink import Sink; "
            "print(recorded_chunks(Sink(ChdbBackend(sys.argv[1])), 'g', tp, 0))")
    out = subprocess.run([sys.executable, "-c", read, str(data)], capture_output=True, text=True, check=True,
                         timeout=120)
    assert out.stdout.strip() == "[(0, 9, 'p.points:0:0-9')]"  # an old row: its write was the chunk alone


OLD_STATISTICS = """
import math, sys
from trackstream.schemas.envelope import EntityRef, MetricBatch
from trackstream.schemas.processed import EntityState, PointBlock
from trackstream.sinks.chdb_backend import ChdbBackend
from trackstream.sinks.sink import Sink
backend = ChdbBackend(sys.argv[1])
values = [float(i) for i in range(200)]
values[50], values[60], values[70] = math.nan, math.inf, math.nan
batch = MetricBatch("loss", "series", list(range(200)), [10**18 + i for i in range(200)], values)
ref = EntityRef("p", "run", "r1")
Sink(backend).write([PointBlock(ref, 0, "producer", 0, [batch], [0])],
                    entity_states=[EntityState(ref, "r1", "running", {}, {}, 1, 0, [], 0, 1)])
for table, columns in (("series_stats", ("infinite", "nan_step", "inf_step")), ("series_blocks", ("nans", "infinite"))):
    backend.command(f"ALTER TABLE {table} " + ", ".join(f"DROP COLUMN {c}" for c in columns))
"""


def test_migrate_adds_nan_statistics_and_old_rows_are_read_from_points(tmp_path: Path) -> None:
    """A store written before the NaN / ±Inf statistics existed: migrate adds them, and reads of series written
    before (whose statistics cannot tell) scan points, so nothing reads as NaN-free that is not."""
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-c", OLD_STATISTICS, str(data)], check=True, timeout=120)
    before = _run(tmp_path, "compare", "p", "loss", "--data-dir", str(data))
    assert before.returncode == 1
    assert "older trackstream" in before.stderr, before.stderr[-2000:]
    assert "`trackstream migrate`" in before.stderr
    assert _run(tmp_path, "migrate", "--data-dir", str(data)).returncode == 0
    compared = _run(tmp_path, "compare", "p", "loss", "--agg", "max", "--json", "--data-dir", str(data))
    assert compared.returncode == 0, compared.stderr[-2000:]
    row, = orjson.loads(compared.stdout)
    assert row["step"] == 60, row  # +inf is the max
    assert (row["nan_count"], row["inf_count"], row["first_nan_step"], row["first_inf_step"]) == (2, 1, 50, 60)
    curves = _run(tmp_path, "curves", "p", "loss", "--runs", "r1", "--points", "1", "--json", "--data-dir", str(data))
    assert curves.returncode == 0, curves.stderr[-2000:]
    (bucket,), = orjson.loads(curves.stdout).values()
    assert (bucket["nan_count"], bucket["inf_count"]) == (2, 1)
