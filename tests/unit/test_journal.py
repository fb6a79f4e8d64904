"""The spool-mode journal: format, torn records, swap and release, recovery after a simulated SIGKILL at every step."""

from __future__ import annotations

import math
import os
import random
import struct
from pathlib import Path
from typing import Any

import pytest

from trackstream.producers import journal as journal_module
from trackstream.producers.buffer import Drained, MetricBuffer
from trackstream.producers.config import ProducerConfig
from trackstream.producers.errors import SpoolError
from trackstream.producers.flusher import deliver_journaled, new_journal, producer_base
from trackstream.producers.handles import Run, SpoolRun, start_run
from trackstream.producers.journal import recover_journals, replay
from trackstream.producers.journal_writer import (
    DRAINED,
    FREE,
    HEADER_BYTES,
    MAX_SHAPES,
    SLOT,
    SLOT_AT,
    JournalFile,
    unpack_state,
)
from trackstream.producers.journaled import JournaledBuffer
from trackstream.producers.pipeline import Pipeline
from trackstream.producers.spool import SpoolReader
from trackstream.schemas import EntityRef, Event, decode
from trackstream.streams.dedup import ProducerTrack

RUN = EntityRef("p", "run", "r1")
OTHER = EntityRef("p", "run", "r2")


def bits(value: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", value))[0]


def same(left: Drained, right: Drained) -> None:
    """Equal drains, comparing floats by their bits (NaN payloads and -0.0 included)."""
    assert [(e.type, e.time_ns, e.data) for e in left.events] == [(e.type, e.time_ns, e.data) for e in right.events]
    assert list(left.series) == list(right.series)
    for name, (steps, times, values) in left.series.items():
        assert right.series[name][:2] == (steps, times), name
        assert [bits(v) for v in right.series[name][2]] == [bits(v) for v in values], name
    assert list(left.singles) == list(right.singles)
    for name, (step, time_ns, value) in left.singles.items():
        assert right.singles[name][:2] == (step, time_ns)
        assert bits(right.singles[name][2]) == bits(value)


class Producer:
    """A spool-only pipeline with journaled handles, driven by hand: each step of a flusher cycle can be stopped."""

    def __init__(self, tmp_path: Path, **options: Any) -> None:
        self.config = ProducerConfig(spool_dir=str(tmp_path), max_envelope_points=options.pop("points", 8), **options)
        self.pipeline = Pipeline(self.config)
        self.handles: dict[EntityRef, JournaledBuffer] = {}

    @property
    def path(self) -> Path:
        return self.pipeline.spool_path

    def handle(self, entity: EntityRef = RUN) -> JournaledBuffer:
        if entity not in self.handles:
            handle = JournaledBuffer(str(entity))
            handle.add_event(Event("run_started", 1, {"name": "", "params": {}, "tags": {}}))
            handle.attach_journal(new_journal(self.pipeline, entity, 0, 1))
            self.handles[entity] = handle
        return self.handles[entity]

    def cycle(self, entity: EntityRef = RUN) -> None:
        deliver_journaled(self.handles[entity], self.pipeline, entity, 0, 1)

    def kill(self) -> None:
        """What a SIGKILL leaves: the files as they are, the directory's lock released."""
        assert self.pipeline.spool is not None
        self.pipeline.spool.abandon()


def spooled(path: Path) -> list[Any]:
    return [decode(payload) for _, _, payload in SpoolReader(path).frames()]


def check_exact(path: Path, expected: dict[str, int]) -> list[Any]:
    """Every key holds steps 0..n-1 exactly once; seqs unique; per entity, entity_seq and offsets run on exactly."""
    envelopes = spooled(path)
    seqs = [e.seq for e in envelopes]
    assert len(seqs) == len(set(seqs))
    steps: dict[str, list[int]] = {}
    tracks: dict[bytes, ProducerTrack] = {}
    for envelope in envelopes:
        track = tracks.setdefault(envelope.entity.key(), ProducerTrack())
        assert track.accept(envelope.seq, envelope.entity_seq, envelope.entity_offset, envelope.point_count())
        for batch in envelope.metrics:
            steps.setdefault(f"{envelope.entity.id}/{batch.name}", []).extend(batch.steps)
    for track in tracks.values():
        assert track.lost_points() == 0
        assert not track.ahead
    assert {k: len(v) for k, v in steps.items()} == expected
    for key, got in steps.items():
        assert sorted(got) == list(range(len(got))), key
    return envelopes


def journal_bytes(handle: JournaledBuffer) -> bytes:
    assert handle.journal is not None
    return handle.journal._active.path.read_bytes()


# --- format ------------------------------------------------------------------------------------------------


def test_replay_of_the_active_file_equals_what_a_drain_takes(tmp_path: Path) -> None:
    producer = Producer(tmp_path)
    buffer = producer.handle()
    rng = random.Random(3)
    payload_nan = struct.unpack("<d", b"\x01\x00\x00\x00\x00\x00\xf8\x7f")[0]
    specials = [math.nan, -math.inf, math.inf, -0.0, 5e-324, payload_nan]
    for round_ in range(6):
        for i in range(300):
            op = rng.randrange(10)
            key = f"k{rng.randrange(6)}"
            value = rng.choice([rng.random(), rng.randrange(-5, 5), rng.choice(specials)])
            if op < 4:
                buffer.log_metrics({f"k{j}": value for j in rng.sample(range(6), rng.randrange(1, 5))},
                                   step=rng.choice([None, i, 10**12]))
            elif op == 4:
                buffer.log_metric(key, float(value), step=rng.choice([None, i]))
            elif op == 5:
                buffer.log_metric(key, [1.5, value, 2])
            elif op == 6:
                buffer.log_metric(f"s{rng.randrange(3)}", value, single_value=True, overwrite=rng.random() < 0.3)
            elif op == 7 and rng.random() < 0.2:
                buffer.log_metric(key, 0.25, overwrite=True)
            elif op == 8:
                buffer.log_history(key, [i, i + 1], [0.5, value], times_ns=[7, 8])
            else:
                buffer.add_event(Event("tags", i, {"tags": {"round": str(round_)}}))
        replayed = replay(journal_bytes(buffer))
        assert replayed.complete
        drained, journal_file = buffer.drain_journaled(producer_base(producer.pipeline, RUN))
        same(drained, replayed.drained)
        assert journal_file is not None
        buffer.settle_journal(journal_file, producer_base(producer.pipeline, RUN))


def test_records_are_cut_at_the_first_zero_type_byte(tmp_path: Path) -> None:
    buffer = Producer(tmp_path).handle()
    buffer.log_metric("a", 1.0)
    buffer.log_metrics({"a": 2.0})
    buffer.log_metrics({"a": 3.0})  # the shape of {"a"} is declared by the call before: this one is one row
    data = bytearray(journal_bytes(buffer))
    assert replay(bytes(data)).drained.series["a"][2] == [1.0, 2.0, 3.0]
    end = data.index(b"\0" * 64, HEADER_BYTES)
    row = end - 32  # the last record: a row of one value is 32 bytes
    torn = bytearray(data)
    torn[row] = 0  # killed after the body, before the type byte: the record does not exist
    assert replay(bytes(torn)).drained.series["a"][2] == [1.0, 2.0]
    torn[row + 8 : row + 32] = b"\xff" * 24  # a body half written makes no difference either
    assert replay(bytes(torn)).drained.series["a"][2] == [1.0, 2.0]
    garbage = bytearray(data)
    garbage[end] = 250  # an unknown record type: read up to it, and say so
    replayed = replay(bytes(garbage))
    assert not replayed.complete
    assert replayed.drained.series["a"][2] == [1.0, 2.0, 3.0]


def test_a_torn_state_slot_leaves_the_previous_one(tmp_path: Path) -> None:
    journal_file = JournalFile(tmp_path / "j.bin", b"{}", size=HEADER_BYTES + 4096)
    journal_file.set_state(1, 7, None)
    journal_file.set_state(2, 7, None)
    state = unpack_state(journal_file.mm)
    assert state is not None
    assert state.state == DRAINED
    at = SLOT_AT[journal_file.version % 2]
    journal_file.mm[at + SLOT.size - 8] ^= 0xFF  # torn: its crc no longer matches
    state = unpack_state(journal_file.mm)
    assert state is not None
    assert state.state == 1
    assert state.epoch == 7
    journal_file.close()


def test_swap_and_release_reuse_two_zeroed_files(tmp_path: Path) -> None:
    producer = Producer(tmp_path)
    buffer = producer.handle()
    for step in range(200):
        buffer.log_metrics({"a": 1.0, "b": 2.0})
        if step % 50 == 49:
            producer.cycle()
    files = sorted(producer.path.glob("journal-*.bin"))
    assert len(files) == 2
    assert buffer.journal is not None
    active = buffer.journal._active.path
    spare = next(f for f in files if f != active)
    data = spare.read_bytes()
    state = unpack_state(data)
    assert state is not None
    assert state.state == FREE
    assert not data[HEADER_BYTES:].strip(b"\0")
    assert not replay(journal_bytes(buffer)).drained  # the active file holds declarations and steps only


def test_a_journal_grows_past_its_initial_size(tmp_path: Path) -> None:
    producer = Producer(tmp_path, points=8192)
    buffer = producer.handle()
    keys = {f"k{i}": 0.5 for i in range(64)}
    buffer.log_metrics(keys)
    for _ in range(10_000):  # 10,000 rows of 64 values: 5 MB, past the 1 MiB a file starts with
        buffer.log_metrics(keys)
    assert buffer.journal is not None
    assert buffer.journal.cap > 4 << 20
    assert len(replay(journal_bytes(buffer)).drained.series["k3"][2]) == 10_001


def test_past_the_shape_cap_calls_are_journaled_key_by_key(tmp_path: Path) -> None:
    buffer = Producer(tmp_path).handle()
    for i in range(MAX_SHAPES + 20):
        buffer.log_metrics({f"k{i}": 1.0, "common": 2.0})
        buffer.log_metrics({f"k{i}": 3.0, "common": 4.0})
    replayed = replay(journal_bytes(buffer))
    drained = buffer.drain()
    same(drained, replayed.drained)


def test_memory_mode_handles_are_not_journaled(tmp_path: Path) -> None:
    run = start_run("p", run_id="memory-mode", spool_dir=str(tmp_path), kafka_bootstrap="")
    try:
        assert type(run) is Run
        assert type(run).log_metrics is MetricBuffer.log_metrics
        assert type(run).log_metric is MetricBuffer.log_metric
    finally:
        run.finish()
    spool = start_run("p", run_id="spool-mode", spool_dir=str(tmp_path), kafka_bootstrap="", durability="spool")
    try:
        assert isinstance(spool, SpoolRun)
        assert isinstance(spool, Run)
        spool.log_metrics({"a": 1.0})
        path = Path(tmp_path) / spool.producer_id
        assert list(path.glob("journal-*.bin"))
    finally:
        spool.finish()
    assert not list(path.glob("journal-*.bin"))  # a finished run's journal is deleted


# --- recovery ----------------------------------------------------------------------------------------------


def log_rows(buffer: JournaledBuffer, count: int, keys: int = 3) -> None:
    for _ in range(count):
        buffer.log_metrics({f"m{i}": 0.5 for i in range(keys)})


def test_recovery_of_the_active_file_continues_seq_and_entity_counters(tmp_path: Path) -> None:
    producer = Producer(tmp_path)
    buffer = producer.handle()
    log_rows(buffer, 40)
    producer.cycle()
    log_rows(buffer, 25)
    buffer.log_metric("single", 3.0, single_value=True)
    producer.kill()
    before = spooled(producer.path)
    report = recover_journals(producer.path)
    assert report.recovered_points == 25 * 3 + 1
    assert report.already_spooled == 0
    envelopes = check_exact(producer.path, {"r1/m0": 65, "r1/m1": 65, "r1/m2": 65, "r1/single": 1})
    recovered = envelopes[len(before):]
    assert recovered[0].seq == before[-1].seq + 1
    assert recovered[0].entity_seq == before[-1].entity_seq + 1
    assert not list(producer.path.glob("journal-*"))
    assert recover_journals(producer.path).envelopes == 0  # idempotent


@pytest.mark.parametrize("stop", ["after_drain", "after_build", "after_spool", "partial_spool", "torn_frame"])
def test_recovery_after_a_kill_inside_a_cycle_delivers_each_point_once(tmp_path: Path, stop: str) -> None:
    producer = Producer(tmp_path)
    buffer = producer.handle()
    log_rows(buffer, 30)
    producer.cycle()
    log_rows(buffer, 30)  # 90 points: 12 envelopes of at most 8
    pipeline = producer.pipeline
    drained, journal_file = buffer.drain_journaled(producer_base(pipeline, RUN))
    assert journal_file is not None
    envelopes = [] if stop == "after_drain" else pipeline.build(RUN, 0, 1, drained)
    assert pipeline.spool is not None
    if stop == "after_spool":
        pipeline.submit(envelopes)
    elif stop in ("partial_spool", "torn_frame"):
        pipeline.spool.append((e.key, e.payload) for e in envelopes[:5])
        if stop == "torn_frame":
            with open(pipeline.spool.path / "00000000000000000000.seg", "ab") as segment:
                segment.write(b"\x10\x02\x00\x00\x99\x98")  # the head of a frame the kill cut short
    log_rows(buffer, 7)  # logged while the flusher worked: in the new active file
    producer.kill()
    report = recover_journals(producer.path)
    assert report.already_spooled == {"after_spool": 90, "partial_spool": 40, "torn_frame": 40}.get(stop, 0)
    check_exact(producer.path, {"r1/m0": 67, "r1/m1": 67, "r1/m2": 67})
    assert not SpoolReader(producer.path).damaged_segments()
    started = [e for env in spooled(producer.path) for e in env.events if e.type == "run_started"]
    assert len(started) == 1


def test_recovery_interrupted_after_writing_its_segment_is_completed_not_repeated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    producer = Producer(tmp_path)
    buffer = producer.handle()
    log_rows(buffer, 20)
    producer.kill()
    calls = []
    finish = journal_module._finish_plan

    def crash_on_the_second_call(directory: Path) -> bool:
        calls.append(directory)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed after the rename")
        return finish(directory)

    monkeypatch.setattr(journal_module, "_finish_plan", crash_on_the_second_call)
    with pytest.raises(KeyboardInterrupt):
        recover_journals(producer.path)
    monkeypatch.setattr(journal_module, "_finish_plan", finish)
    assert (producer.path / journal_module.PLAN).exists()
    assert recover_journals(producer.path).envelopes == 0
    check_exact(producer.path, {"r1/m0": 20, "r1/m1": 20, "r1/m2": 20})
    assert not list(producer.path.glob("journal-*"))


def test_recovery_interrupted_before_the_rename_starts_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    producer = Producer(tmp_path)
    log_rows(producer.handle(), 20)
    producer.kill()

    def crash(*args: Any) -> None:
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(journal_module.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        recover_journals(producer.path)
    monkeypatch.undo()
    assert list(producer.path.glob("*.recovering"))
    assert recover_journals(producer.path).recovered_points == 60
    assert not list(producer.path.glob("*.recovering"))
    check_exact(producer.path, {"r1/m0": 20, "r1/m1": 20, "r1/m2": 20})


def test_a_live_producer_is_left_alone(tmp_path: Path) -> None:
    producer = Producer(tmp_path)
    log_rows(producer.handle(), 5)
    report = recover_journals(producer.path)
    assert report.skipped_live
    assert report.envelopes == 0
    assert list(producer.path.glob("journal-*"))
    assert recover_journals(tmp_path / "missing").journals == 0


def test_two_entities_of_one_producer_keep_their_own_counters(tmp_path: Path) -> None:
    producer = Producer(tmp_path)
    first, second = producer.handle(RUN), producer.handle(OTHER)
    for round_ in range(3):
        log_rows(first, 11)
        log_rows(second, 13, keys=2)
        if round_ < 2:
            producer.cycle(RUN)
            producer.cycle(OTHER)
    drained, _journal_file = second.drain_journaled(producer_base(producer.pipeline, OTHER))
    producer.pipeline.submit(producer.pipeline.build(OTHER, 0, 1, drained)[:2])  # killed mid-write
    producer.kill()
    recover_journals(producer.path)
    check_exact(producer.path, {"r1/m0": 33, "r1/m1": 33, "r1/m2": 33, "r2/m0": 39, "r2/m1": 39})


def test_a_batch_the_spool_refused_is_kept_and_recovered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    producer = Producer(tmp_path)
    buffer = producer.handle()
    log_rows(buffer, 10)
    producer.cycle()
    log_rows(buffer, 10)
    with monkeypatch.context() as patch:
        patch.setattr(producer.pipeline, "submit", lambda envelopes: (_ for _ in ()).throw(OSError("disk full")))
        producer.cycle()
    log_rows(buffer, 10)
    producer.cycle()
    assert len(list(producer.path.glob("journal-*.bin"))) == 3  # the refused batch's file is not reused
    producer.kill()
    report = recover_journals(producer.path)
    assert report.recovered_points == 30
    envelopes = spooled(producer.path)
    steps = sorted(s for e in envelopes for b in e.metrics if b.name == "m0" for s in b.steps)
    assert steps == list(range(30))
    assert len({e.seq for e in envelopes}) == len(envelopes)


def test_a_closed_run_leaves_no_journal_and_recovery_keeps_its_end(tmp_path: Path) -> None:
    producer = Producer(tmp_path)
    buffer = producer.handle()
    log_rows(buffer, 9)
    buffer.close_buffer(Event("run_finished", 5, {"status": "completed"}))
    drained, _journal_file = buffer.drain_journaled(producer_base(producer.pipeline, RUN))
    envelopes = producer.pipeline.build(RUN, 0, 1, drained)
    producer.pipeline.submit(envelopes[:-1])  # killed before the last envelope, the one with run_finished
    producer.kill()
    recover_journals(producer.path)
    events = [e.type for env in spooled(producer.path) for e in env.events]
    assert events == ["run_started", "run_finished"]
    check_exact(producer.path, {"r1/m0": 9, "r1/m1": 9, "r1/m2": 9})


def test_an_unreadable_journal_is_kept(tmp_path: Path) -> None:
    producer = Producer(tmp_path)
    log_rows(producer.handle(), 3)
    producer.kill()
    odd = producer.path / "journal-odd-0.bin"
    odd.write_bytes(b"NOTAJRNL" + bytes(100))
    report = recover_journals(producer.path)
    assert report.kept == [odd]
    assert odd.exists()
    assert report.recovered_points == 9


def test_after_a_fork_the_child_leaves_the_parent_journal(tmp_path: Path) -> None:
    producer = Producer(tmp_path)
    buffer = producer.handle()
    log_rows(buffer, 3)
    assert buffer.journal is not None
    path = buffer.journal._active.path
    buffer.reset_after_fork()  # what the child does
    assert buffer.journal is None
    assert path.exists()
    assert replay(path.read_bytes()).drained.series["m0"][2] == [0.5] * 3


def test_a_forked_child_journals_into_its_own_producer(tmp_path: Path) -> None:
    run = start_run("p", run_id="forked", spool_dir=str(tmp_path), kafka_bootstrap="", durability="spool")
    run.log_metric("parent", 1.0)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            run.log_metrics({"child": 2.0})
            run.log_metric("child", [3.0, 4.0])
            run.flush(timeout_s=20)
            run.log_metric("child", 5.0)  # journaled, never flushed: the child dies without its exit hooks
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    run.log_metric("parent", 6.0)
    run.finish()
    (child_dir,) = [p for p in tmp_path.iterdir() if p.name != run.producer_id]
    assert not list((tmp_path / run.producer_id).glob("journal-*"))
    assert recover_journals(child_dir).recovered_points == 1
    child = [b for e in spooled(child_dir) for b in e.metrics]
    assert [(s, v) for b in child for s, v in zip(b.steps, b.values, strict=True)] == [
        (0, 2.0), (1, 3.0), (2, 4.0), (3, 5.0)]
    parent = [b for e in spooled(tmp_path / run.producer_id) for b in e.metrics]
    assert [(s, v) for b in parent for s, v in zip(b.steps, b.values, strict=True)] == [(0, 1.0), (1, 6.0)]


def test_a_journal_that_cannot_grow_fails_the_call_and_leaves_the_buffer_as_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = Producer(tmp_path).handle()
    keys = {f"k{i}": 0.5 for i in range(64)}
    buffer.log_metrics(keys)
    buffer.log_metrics(keys)

    def disk_full(self: JournalFile, need: int) -> None:
        raise SpoolError("disk full")

    monkeypatch.setattr(JournalFile, "grow", disk_full)

    def log_until_it_raises(call: Any, count: int) -> None:
        for _ in range(count):
            call()

    with pytest.raises(SpoolError):  # 5000 rows of 64 values do not fit in the 1 MiB of the file
        log_until_it_raises(lambda: buffer.log_metrics(keys), 5000)
    with pytest.raises(SpoolError):
        log_until_it_raises(lambda: buffer.log_metric("k1", 1.0), 200)
    replayed = replay(journal_bytes(buffer))
    drained = buffer.drain()
    same(drained, replayed.drained)
    steps = drained.series["k1"][0]
    assert steps == list(range(len(steps)))
