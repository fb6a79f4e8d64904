"""SIGKILL of a process logging at full speed with ``durability="spool"``: after recovery, every point whose log call
had returned is in the spool exactly once, with exact seq, entity_seq and entity_offset."""

from __future__ import annotations

import mmap
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from trackstream.producers.journal import journal_files, recover_journals
from trackstream.producers.spool import SpoolReader, is_locked
from trackstream.schemas import decode
from trackstream.streams.dedup import ProducerTrack

KEYS = 8
# The child counts the calls that returned in a shared mapping, right after each call: the count it leaves may be one
# behind the calls that returned (a kill between a call's return and the store), never ahead.
CHILD = textwrap.dedent("""
    import mmap, os, sys
    import trackstream as ts

    spool_dir, counter_path, linger_ms = sys.argv[1], sys.argv[2], int(sys.argv[3])
    fd = os.open(counter_path, os.O_RDWR)
    counter = memoryview(mmap.mmap(fd, 16)).cast("q")
    run = ts.start_run("sigkill", "n", run_id="victim", durability="spool", spool_dir=spool_dir, kafka_bootstrap="",
                       linger_ms=linger_ms, heartbeat_ms=0)
    model = ts.model("sigkill", "net", durability="spool", spool_dir=spool_dir, kafka_bootstrap="",
                     linger_ms=linger_ms, heartbeat_ms=0)
    counter[1] = os.getpid()
    keys = [f"m{i}" for i in range(KEYS)]
    i = 0
    while True:
        run.log_metrics(dict.fromkeys(keys, float(i)))
        if i % 10 == 0:
            model.log_metric("acc", float(i))
        if i % 997 == 0:
            run.log_metric("single", float(i), single_value=True)
        i += 1
        counter[0] = i
""").replace("KEYS", str(KEYS))


def wait_for(condition, timeout_s: float, what: str, process: subprocess.Popen[bytes]) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the child exited ({process.returncode}) before {what}: "
                                 f"{process.stderr.read().decode() if process.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def kill_while_logging(tmp_path: Path, spool_dir: Path, *, calls: int, linger_ms: int,
                       signum: int = signal.SIGKILL, exit_timeout_s: float = 30) -> int:
    """Run CHILD logging into ``spool_dir``, send it ``signum`` once ``calls`` log calls returned and wait up to
    ``exit_timeout_s`` for it to die of it; returns how many calls had returned."""
    counter_path = tmp_path / "counter"
    counter_path.write_bytes(bytes(16))
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    process = subprocess.Popen([sys.executable, str(script), str(spool_dir), str(counter_path), str(linger_ms)],
                               stderr=subprocess.PIPE)
    try:
        with open(counter_path, "r+b") as handle:
            shared = mmap.mmap(handle.fileno(), 16)
            count = memoryview(shared).cast("q")
            wait_for(lambda: count[0] >= calls, 120, f"{calls:,} log calls", process)
            os.kill(process.pid, signum)
            process.wait(timeout=exit_timeout_s)
            returned = count[0]
            count.release()
            shared.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        if process.stderr is not None:
            process.stderr.close()
    assert process.returncode == -signum
    return int(returned)


@pytest.mark.parametrize(("calls", "linger_ms"), [(20_000, 200), (150_000, 200), (60_000, 5)])
def test_sigkill_while_logging_loses_nothing_in_spool_mode(tmp_path: Path, calls: int, linger_ms: int) -> None:
    spool_dir = tmp_path / "spool"
    returned = kill_while_logging(tmp_path, spool_dir, calls=calls, linger_ms=linger_ms)
    (producer,) = [p for p in spool_dir.iterdir() if p.is_dir()]
    assert not is_locked(producer)
    assert journal_files(producer)

    report = recover_journals(producer)
    assert not report.skipped_live
    assert not report.kept
    assert not journal_files(producer)
    assert recover_journals(producer).envelopes == 0  # a second run finds nothing to do

    steps: dict[str, list[int]] = {}
    values_ok = True
    tracks: dict[bytes, ProducerTrack] = {}
    seqs: set[int] = set()
    started = 0
    for _, key, payload in SpoolReader(producer).frames():
        envelope = decode(payload)
        assert envelope.seq not in seqs
        seqs.add(envelope.seq)
        track = tracks.setdefault(key, ProducerTrack())
        assert track.accept(envelope.seq, envelope.entity_seq, envelope.entity_offset, envelope.point_count())
        started += sum(e.type == "run_started" for e in envelope.events)
        for batch in envelope.metrics:
            if batch.kind == "series":
                steps.setdefault(batch.name, []).extend(batch.steps)
                scale = 10 if batch.name == "acc" else 1
                values_ok = values_ok and all(float(s * scale) == v
                                              for s, v in zip(batch.steps, batch.values, strict=True))
    assert started == 1
    assert len(tracks) == 2
    for track in tracks.values():
        assert track.lost_points() == 0
        assert not track.ahead
    assert values_ok
    acc = steps.pop("acc")
    assert sorted(steps) == [f"m{i}" for i in range(KEYS)]
    lengths = {len(found) for found in steps.values()}
    assert len(lengths) == 1  # a log_metrics call is journaled whole or not at all
    (logged,) = lengths
    assert returned <= logged <= returned + 1, (returned, logged, report)
    for name, found in steps.items():
        assert sorted(found) == list(range(logged)), name  # each point exactly once
    assert sorted(acc) == list(range(len(acc)))
    assert (returned + 9) // 10 <= len(acc) <= (returned + 10) // 10


def test_sigterm_while_logging_in_spool_mode_finishes_the_run_and_leaves_no_journal(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    # 60 s: a handler waiting for a lock its own thread holds would hang the exit
    returned = kill_while_logging(tmp_path, spool_dir, calls=30_000, linger_ms=200, signum=signal.SIGTERM,
                                  exit_timeout_s=60)
    (producer,) = [p for p in spool_dir.iterdir() if p.is_dir()]
    assert not journal_files(producer)
    found: dict[str, list[int]] = {}
    finished = []
    for _, _, payload in SpoolReader(producer).frames():
        envelope = decode(payload)
        finished += [e.data["status"] for e in envelope.events if e.type == "run_finished"]
        for batch in envelope.metrics:
            found.setdefault(batch.name, []).extend(batch.steps)
    assert finished == ["killed"]
    assert returned <= len(found["m0"]) <= returned + 1
    assert sorted(found["m7"]) == list(range(len(found["m0"])))


def test_sigkill_in_spool_mode_then_a_read_stores_every_returned_point(tmp_path: Path) -> None:
    """The whole embedded path: SIGKILL, then a plain read (which recovers the journals and catches up) counts."""
    from trackstream import _query
    from trackstream.schemas.settings import StoreSettings

    spool_dir, data_dir = tmp_path / "spool", tmp_path / "data"
    returned = kill_while_logging(tmp_path, spool_dir, calls=30_000, linger_ms=200)
    reader = _query.reader(StoreSettings(data_dir=str(data_dir)), spool_dir=spool_dir)
    rows = reader.sql("SELECT metric, count(), uniqExact(step), max(step) FROM points FINAL "
                      "WHERE project = 'sigkill' AND entity_type = 'run' AND startsWith(metric, 'm') GROUP BY metric")
    assert len(rows) == KEYS
    for metric, stored, distinct, top in rows:
        assert stored == distinct, metric  # once each
        assert stored in (returned, returned + 1), (metric, stored, returned)  # every returned call, nothing else
        assert top == stored - 1
    (run,) = reader.runs("sigkill")
    assert run["lost_points"] == 0
    assert not (data_dir / "dlq.jsonl").exists()
