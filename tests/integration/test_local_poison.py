"""`trackstream local` survives poison: a damaged spool, frames the processor rejects and frames whose records cannot
be built or stored each become a line of dlq.jsonl with their spool position, and every good point still lands.

The frames are written directly with the spool writer, as an older SDK (or a hand) would have written them. The
first tests run :class:`LocalIngest` against an in-memory sink (no chDB); the last ones run the real CLI on chDB in
subprocesses (chDB binds one store per process) and check that stored + dead-lettered = sent.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from trackstream.local import DLQ_FILE, STATE_FILE, LocalIngest
from trackstream.producers.spool import Frame, SpoolReader, SpoolWriter
from trackstream.producers.spool_scan import segment_name
from trackstream.schemas.envelope import EntityRef, Envelope, Event, MetricBatch, encode

CLI = [sys.executable, "-m", "trackstream.cli"]
PROJECT = "poison"


# --- envelopes as a producer writes them -------------------------------------------------------------------


@dataclass
class Run:
    """Builds the envelopes of one run of one producer, with contiguous entity_seq / entity_offset."""

    run_id: str
    producer_id: str
    rank: int = 0
    world_size: int = 1
    steps_per_envelope: int = 50
    seq: list[int] = field(default_factory=lambda: [0])
    entity_seq: int = 0
    sent_points: int = 0

    @property
    def key(self) -> bytes:
        return orjson.dumps([PROJECT, "run", self.run_id])

    def envelope(self, *, finish: bool = False) -> tuple[bytes, bytes]:
        events = []
        if self.entity_seq == 0:
            events.append(Event("run_started", time.time_ns(), {"name": self.run_id, "params": {"lr": 0.1},
                                                                "tags": {}}))
        if finish:
            events.append(Event("run_finished", time.time_ns(), {"status": "completed"}))
        first = self.sent_points
        steps = list(range(first, first + self.steps_per_envelope))
        batch = MetricBatch(name="loss", kind="series", steps=steps, times_ns=[1_000 + s for s in steps],
                            values=[1.0 / (s + 1) for s in steps])
        envelope = Envelope(producer_id=self.producer_id, seq=self.seq[0], sent_ns=time.time_ns(),
                            entity=EntityRef(PROJECT, "run", self.run_id), rank=self.rank,
                            world_size=self.world_size, host="h", metrics=[batch], events=events,
                            entity_seq=self.entity_seq, entity_offset=first)
        self.seq[0] += 1
        self.entity_seq += 1
        self.sent_points += len(steps)
        return self.key, encode(envelope)


def points_of(payload: bytes) -> int:
    return sum(len(group["steps"]) for group in orjson.loads(payload).get("metrics", ()))


def write_spool(spool: Path, producer_id: str, frames: list[tuple[bytes, bytes]], *,
                segment_bytes: int = 16_000) -> list[Frame]:
    writer = SpoolWriter(spool, producer_id, segment_bytes=segment_bytes, fsync="never")
    for frame in frames:
        writer.append([frame])
    writer.close()  # the producer is dead
    return [e for e in SpoolReader(spool / producer_id).entries() if isinstance(e, Frame)]


def zero_inside(spool: Path, producer_id: str, frame: Frame, size: int = 64) -> None:
    with open(spool / producer_id / segment_name(frame.start.segment), "r+b") as handle:
        handle.seek(frame.start.offset + 16)
        handle.write(bytes(size))


def dlq(data: Path) -> list[dict[str, Any]]:
    path = data / DLQ_FILE
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


# --- LocalIngest with an in-memory sink --------------------------------------------------------------------


class MemorySink:
    """Keeps what is written; ``refuse_prepare`` / ``refuse_insert`` pick blocks it cannot build or store."""

    def __init__(self, *, refuse_prepare: Callable[[Any], bool] = lambda block: False,
                 refuse_insert: Callable[[Any], bool] = lambda block: False) -> None:
        self.refuse_prepare = refuse_prepare
        self.refuse_insert = refuse_insert
        self.blocks: list[Any] = []
        self.states: dict[str, Any] = {}
        self.inserts = 0

    def prepare(self, point_blocks: Any, steps: Any, entity_states: Any, *, alerts: Any = ()) -> Any:
        for block in point_blocks:
            if self.refuse_prepare(block):
                raise OverflowError(f"rank {block.rank} out of bounds for uint32")
        return list(point_blocks), list(entity_states)

    def write_prepared(self, prepared: Any) -> None:
        blocks, states = prepared
        if any(self.refuse_insert(block) for block in blocks):
            raise RuntimeError("Code: 241. the store refused the insert")
        self.inserts += 1
        self.blocks += blocks
        for state in states:
            self.states[state.entity.id] = state

    def stored(self, run_id: str) -> list[int]:
        return sorted(s for b in self.blocks if b.entity.id == run_id for m in b.metrics for s in m.steps)

    def close(self) -> None:
        return None


def ingest(tmp_path: Path, sink: MemorySink, **options: Any) -> LocalIngest:
    (tmp_path / "data").mkdir(exist_ok=True)
    return LocalIngest(spool_dir=tmp_path / "spool", data_dir=tmp_path / "data", sink=sink, **options)


def test_unbuildable_frames_are_set_aside_and_the_processor_state_stays_exact(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    good, bad = Run("good", "p1"), Run("bad", "p1")  # the sink below cannot build "bad"'s records
    bad.seq = good.seq  # one producer, one seq counter
    frames = []
    for i in range(12):
        frames.append(good.envelope(finish=i == 11))
        if i in (3, 4, 9):
            frames.append(bad.envelope())
    written = write_spool(spool, "p1", frames)
    sink = MemorySink(refuse_prepare=lambda block: block.entity.id == "bad")

    stats = ingest(tmp_path, sink, max_batch_points=120).ingest_pass()
    assert sink.stored("good") == list(range(good.sent_points))
    assert sink.stored("bad") == []
    # replayed from the saved state: every good envelope written once, no hole in its entity_seq
    assert sorted(b.seq for b in sink.blocks if b.entity.id == "good") == sorted(
        orjson.loads(f.payload)["seq"] for f in written if f.key == good.key)
    assert sink.states["good"].lost_points == 0
    assert sink.states["good"].status == "completed"
    records = dlq(tmp_path / "data")
    assert [r["reason"] for r in records] == ["unstorable"] * 3
    bad_frames = [f for f in written if f.key == bad.key]
    assert [r["spool"] for r in records] == [
        {"producer_id": "p1", "segment": segment_name(f.start.segment), "offset": f.start.offset} for f in bad_frames]
    assert [base64.b64decode(r["raw"]) for r in records] == [f.payload for f in bad_frames]
    assert all("out of bounds for uint32" in r["detail"] for r in records)
    assert stats.points == good.sent_points
    assert stats.dead_letters == 3
    assert not (spool / "p1").exists()  # dead and fully ingested

    again = ingest(tmp_path, MemorySink())  # a restart from the saved state reads nothing twice
    assert again.ingest_pass().envelopes == 0


def test_a_frame_that_makes_the_processor_raise_is_dead_lettered(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from trackstream.streams.processor import Processor

    run = Run("r", "p1")
    frames = [run.envelope() for _ in range(5)]
    write_spool(tmp_path / "spool", "p1", frames)
    original = Processor.process

    def process(self: Processor, raw: bytes, **kwargs: Any) -> Any:
        if orjson.loads(raw)["seq"] == 2:
            raise RecursionError("maximum recursion depth exceeded")
        return original(self, raw, **kwargs)

    monkeypatch.setattr(Processor, "process", process)
    sink = MemorySink()
    ingest(tmp_path, sink).ingest_pass()
    assert sink.stored("r") == [s for s in range(250) if not 100 <= s < 150]
    assert [(r["reason"], r["detail"]) for r in dlq(tmp_path / "data")] == [
        ("internal_error", "RecursionError: maximum recursion depth exceeded")]


def test_a_frame_the_store_refuses_is_set_aside_once_the_store_takes_the_next_write(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    good, refused = Run("good", "p1"), Run("refused", "p1")
    write_spool(spool, "p1", [good.envelope(), good.envelope(), refused.envelope()])
    sink = MemorySink(refuse_insert=lambda block: block.entity.id == "refused")
    runner = ingest(tmp_path, sink)

    runner.ingest_pass()  # the refusal is the last write: nothing vouches for the store, so it stays unread
    assert sink.stored("good") == list(range(100))
    assert dlq(tmp_path / "data") == []
    assert (spool / "p1").is_dir()

    runner.ingest_pass()  # and is retried, still without a later write to tell: still unread, nothing lost
    assert dlq(tmp_path / "data") == []

    write_spool(spool, "p2", [Run("later", "p2").envelope()])
    runner.ingest_pass()  # the store takes the next frame: the refused one was poison
    assert sink.stored("later") == list(range(50))
    assert [r["reason"] for r in dlq(tmp_path / "data")] == ["unstorable"]
    assert "the store refused the insert" in dlq(tmp_path / "data")[0]["detail"]
    assert not (spool / "p1").exists()


def test_a_failing_store_stops_the_pass_and_sets_nothing_aside(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    run = Run("r", "p1")
    write_spool(spool, "p1", [run.envelope() for _ in range(4)])
    broken = MemorySink(refuse_insert=lambda block: True)
    with pytest.raises(RuntimeError, match="refused"):
        ingest(tmp_path, broken).ingest_pass()
    assert dlq(tmp_path / "data") == []
    assert not (tmp_path / "data" / STATE_FILE).exists()
    healed = MemorySink()
    ingest(tmp_path, healed).ingest_pass()
    assert healed.stored("r") == list(range(200))


def test_damage_and_a_dead_producers_torn_tail_are_dead_lettered_with_their_range(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    run = Run("r", "p1")
    written = write_spool(spool, "p1", [run.envelope() for _ in range(10)])
    zero_inside(spool, "p1", written[0])
    segment = spool / "p1" / segment_name(written[-1].after.segment)
    with open(segment, "ab") as handle:
        handle.write(b"\x10\x00\x00\x00torn")
    sink = MemorySink()
    stats = ingest(tmp_path, sink).ingest_pass()
    assert sink.stored("r") == list(range(50, 500))
    damaged, torn = dlq(tmp_path / "data")
    assert damaged["reason"] == "spool_damaged"
    assert damaged["range"] == {"segment": segment_name(0), "start": written[0].start.offset,
                                "end": written[0].after.offset, "bytes": written[0].after.offset - 8}
    assert damaged["spool"] == {"producer_id": "p1", "segment": segment_name(0), "offset": 8}
    assert base64.b64decode(damaged["raw"])[:16] == encode_frame_prefix(written[0])
    assert torn["reason"] == "spool_torn_tail"
    assert torn["range"]["bytes"] == 8
    assert stats.damaged == 2
    assert (spool / "p1" / segment_name(0)).exists()  # kept for `trackstream sync --discard-damaged`
    assert ingest(tmp_path, MemorySink()).ingest_pass().dead_letters == 0  # each range is dead-lettered once


def encode_frame_prefix(frame: Frame) -> bytes:
    from trackstream.producers.spool import encode_frame

    return encode_frame(frame.key, frame.payload)[:16]


# --- the real runner on chDB -------------------------------------------------------------------------------


def _env(spool: Path, data: Path) -> dict[str, str]:
    env = {**os.environ, "TRACKSTREAM_SPOOL_DIR": str(spool), "TRACKSTREAM_DATA_DIR": str(data)}
    env.pop("TRACKSTREAM_KAFKA_BOOTSTRAP", None)
    env.pop("TRACKSTREAM_CLICKHOUSE_URL", None)
    return env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, timeout=300, check=False)


def _sql(env: dict[str, str], query: str) -> Any:
    result = _cli(env, "sql", query, "--json")
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    return [list(row.values()) for row in orjson.loads(result.stdout)]  # rows as {column: value}


def _poisoned_spool(spool: Path) -> tuple[int, list[Frame], list[Frame]]:
    """Two dead producers: damaged frames, a rank no store column holds, good runs around them.

    Returns the points sent, the damaged frames and the poison frames.
    """
    a, b = Run("good-a", "pa", steps_per_envelope=200), Run("good-b", "pb")
    bad = Run("bad-rank", "pa", rank=2**32, world_size=2**32 + 1)
    bad.seq = a.seq  # one producer, one seq counter
    frames_a = [a.envelope() for _ in range(6)] + [bad.envelope()] + [a.envelope() for _ in range(6)]
    frames_a.append(a.envelope(finish=True))
    frames_b = [b.envelope(finish=i == 19) for i in range(20)]
    written_a = write_spool(spool, "pa", frames_a)
    written_b = write_spool(spool, "pb", frames_b, segment_bytes=4_000)
    first_of_segment_1 = next(f for f in written_b if f.start.segment == 1)
    damaged = [written_a[0], first_of_segment_1]
    for producer_id, frame in zip(("pa", "pb"), damaged, strict=True):
        zero_inside(spool, producer_id, frame)
    sent = sum(points_of(p) for _, p in frames_a + frames_b)
    return sent, damaged, [f for f in written_a if f.key == bad.key]


def test_local_lands_every_good_point_of_a_damaged_poisoned_spool(tmp_path: Path) -> None:
    spool, data = tmp_path / "spool", tmp_path / "data"
    env = _env(spool, data)
    sent, damaged, poison = _poisoned_spool(spool)
    damaged_points = sum(points_of(f.payload) for f in damaged)

    with open(tmp_path / "local.log", "wb") as log:
        local = subprocess.Popen([*CLI, "local"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while len(dlq(data)) < 3 or not (data / "owner.json").exists():  # polled, with a deadline
            assert local.poll() is None, (tmp_path / "local.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "local.log").read_text()[-3000:]
            time.sleep(0.1)
        stored = _sql(env, f"SELECT count() FROM points FINAL WHERE project = '{PROJECT}'")[0][0]
        runs = {row["id"]: row for row in orjson.loads(_cli(env, "runs", PROJECT, "--json").stdout)}
        assert local.poll() is None
    finally:
        local.terminate()
        assert local.wait(60) == 0
    records = dlq(data)
    assert {r["spool"]["producer_id"]: r["range"] for r in records if r["reason"] == "spool_damaged"} == {
        producer_id: {"segment": segment_name(f.start.segment), "start": f.start.offset, "end": f.after.offset,
                      "bytes": f.after.offset - f.start.offset}
        for producer_id, f in zip(("pa", "pb"), damaged, strict=True)}
    [bad_record] = [r for r in records if r["reason"] != "spool_damaged"]
    # the stream-side limits reject it (``out_of_range``); an older build got as far as the store: ``unstorable``
    assert bad_record["reason"] in ("out_of_range", "mistyped_field", "unstorable")
    [bad_frame] = poison
    assert bad_record["spool"] == {"producer_id": "pa", "segment": segment_name(bad_frame.start.segment),
                                   "offset": bad_frame.start.offset}
    dead_lettered = damaged_points + points_of(base64.b64decode(bad_record["raw"]))
    assert stored + dead_lettered == sent
    assert stored == sent - damaged_points - points_of(bad_frame.payload)
    assert runs["good-a"]["status"] == runs["good-b"]["status"] == "completed"
    assert "bad-rank" not in runs

    # the runner starts again, a read (which first catches up with the spool) answers, nothing is read twice
    assert _cli(env, "runs", PROJECT, "--json").returncode == 0
    assert len(dlq(data)) == 3
    # the damaged segments (and so both producer directories) are kept until an operator discards them
    assert sorted(p.name for p in spool.iterdir() if p.is_dir()) == ["pa", "pb"]
    discard = _cli(env, "sync", "--discard-damaged")
    assert discard.returncode == 0, discard.stderr.decode()[-3000:]
    out = discard.stdout.decode()
    for producer_id, frame in zip(("pa", "pb"), damaged, strict=True):
        assert f"discarded {spool / producer_id / segment_name(frame.start.segment)}" in out
    assert _cli(env, "runs", PROJECT, "--json").returncode == 0  # a catch-up pass removes the drained dirs
    assert [p for p in spool.iterdir() if p.is_dir()] == []
    assert _sql(env, f"SELECT count() FROM points FINAL WHERE project = '{PROJECT}'")[0][0] == stored


_UNSTORABLE_CATCH_UP = """
import sys
from pathlib import Path
from trackstream.sinks.sink import Sink
from trackstream.local import catch_up

original = Sink.prepare
def prepare(point_blocks=(), steps=(), entity_states=(), *, alerts=()):
    if any(block.entity.id == "unstorable" for block in point_blocks):
        raise OverflowError("value too large to fit in C integer type")
    return original(point_blocks, steps, entity_states, alerts=alerts)
Sink.prepare = staticmethod(prepare)
stats = catch_up(spool_dir=Path(sys.argv[1]), data_dir=Path(sys.argv[2]))
print(stats.points, stats.dead_letters)
"""


def test_catch_up_on_chdb_sets_aside_a_frame_the_sink_cannot_build(tmp_path: Path) -> None:
    spool, data = tmp_path / "spool", tmp_path / "data"
    env = _env(spool, data)
    good, poison = Run("fine", "p1"), Run("unstorable", "p1")
    poison.seq = good.seq
    frames = [good.envelope(), poison.envelope(), good.envelope(), poison.envelope(), good.envelope(finish=True)]
    write_spool(spool, "p1", frames)
    result = subprocess.run([sys.executable, "-c", _UNSTORABLE_CATCH_UP, str(spool), str(data)], env=env,
                            capture_output=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    assert result.stdout.split() == [b"150", b"2"]
    assert [r["reason"] for r in dlq(data)] == ["unstorable", "unstorable"]
    rows = _sql(env, f"SELECT entity_id, count() FROM points FINAL WHERE project = '{PROJECT}' GROUP BY entity_id")
    assert rows == [["fine", 150]]
    assert not (spool / "p1").exists()
