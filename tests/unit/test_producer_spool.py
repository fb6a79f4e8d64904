"""The spool: frames round-trip, torn and corrupt tails, liveness by flock, positions and deletion."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest

from trackstream.producers.spool import START, SpoolPosition, SpoolReader, SpoolWriter, list_spools


def frames(n: int, size: int = 100) -> list[tuple[bytes, bytes]]:
    return [(f"key{i % 3}".encode(), bytes([i % 251]) * size) for i in range(n)]


def test_frames_round_trip_in_order_with_resumable_positions(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, "p1", fsync="batch")
    expected = frames(10)
    end = writer.append(expected[:4])
    writer.append(expected[4:])
    reader = SpoolReader(tmp_path / "p1")
    got = list(reader.frames())
    assert [(k, v) for _, k, v in got] == expected
    assert got[3][0] == end
    resumed = list(reader.frames(end))
    assert [(k, v) for _, k, v in resumed] == expected[4:]
    assert reader.at_end(got[-1][0])
    assert got[-1][0] == writer.end()
    writer.close()


def test_segments_roll_and_consumed_ones_are_deleted(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, "p1", segment_bytes=1000, fsync="never")
    expected = frames(30)
    for pair in expected:
        writer.append([pair])
    reader = SpoolReader(tmp_path / "p1")
    assert len(reader.segments()) >= 3
    got = list(reader.frames())
    assert [(k, v) for _, k, v in got] == expected
    middle = got[15][0]
    deleted = reader.delete_consumed(middle)
    assert deleted == middle.segment
    assert reader.segments()[0] == middle.segment
    assert [(k, v) for _, k, v in reader.frames(middle)] == expected[16:]
    writer.close()


def test_max_bytes_bounds_one_read(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, "p1")
    writer.append(frames(20, size=1000))
    reader = SpoolReader(tmp_path / "p1")
    assert len(list(reader.frames(max_bytes=3000))) == 3
    writer.close()


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_torn_or_corrupt_final_frame_ends_the_readable_data(tmp_path: Path, damage: str) -> None:
    writer = SpoolWriter(tmp_path, "p1")
    writer.append(frames(5))
    writer.close()
    segment = tmp_path / "p1" / f"{0:020d}.seg"
    data = segment.read_bytes()
    if damage == "truncate":
        segment.write_bytes(data[:-7])
    else:
        segment.write_bytes(data[:-3] + bytes([data[-3] ^ 0xFF]) + data[-2:])
    reader = SpoolReader(tmp_path / "p1")
    got = list(reader.frames())
    assert [(k, v) for _, k, v in got] == frames(5)[:4]
    assert reader.torn_bytes > 0
    assert reader.remove_if_drained(got[-1][0])
    assert not (tmp_path / "p1").exists()


def test_a_live_writers_partial_frame_is_not_read_until_complete(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, "p1")
    writer.append(frames(2))
    reader = SpoolReader(tmp_path / "p1")
    position = list(reader.frames())[-1][0]
    from trackstream.producers.spool import encode_frame

    frame = encode_frame(b"k", b"payload")
    with open(tmp_path / "p1" / f"{0:020d}.seg", "ab") as handle:
        handle.write(frame[:5])
        handle.flush()
        assert list(reader.frames(position)) == []
        handle.write(frame[5:])
    assert [(k, v) for _, k, v in reader.frames(position)] == [(b"k", b"payload")]
    writer.close()


def _hold_lock(spool_dir: str, ready: Any, done: Any) -> None:
    writer = SpoolWriter(spool_dir, "child")
    writer.append(frames(1))
    ready.set()
    done.wait(30)
    os._exit(0)


def test_liveness_follows_the_writers_flock(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    ready, done = context.Event(), context.Event()
    child = context.Process(target=_hold_lock, args=(str(tmp_path), ready, done))
    child.start()
    try:
        assert ready.wait(30)
        [spool] = list_spools(tmp_path)
        assert spool.producer_id == "child"
        assert spool.alive
        reader = SpoolReader(spool.path)
        assert not reader.claim()
        assert not reader.remove_if_drained(list(reader.frames())[-1][0])
    finally:
        done.set()
        child.join(30)
    assert [s.alive for s in list_spools(tmp_path)] == [False]
    reader = SpoolReader(tmp_path / "child")
    assert reader.claim()
    assert not reader.is_alive()
    assert reader.remove_if_drained(list(reader.frames())[-1][0])


def test_positions_are_saved_per_consumer(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, "p1")
    reader = SpoolReader(tmp_path / "p1")
    assert reader.load_position("local") == START
    reader.save_position("local", SpoolPosition(3, 1234))
    assert reader.load_position("local") == SpoolPosition(3, 1234)
    assert reader.load_position("kafka") == START
    writer.close()


def test_a_new_writer_in_an_existing_directory_starts_a_new_segment(tmp_path: Path) -> None:
    first = SpoolWriter(tmp_path, "p1")
    first.append(frames(2))
    first.close()
    second = SpoolWriter(tmp_path, "p1")
    second.append(frames(3)[2:])
    second.close()
    reader = SpoolReader(tmp_path / "p1")
    assert reader.segments() == [0, 1]
    assert [(k, v) for _, k, v in reader.frames()] == frames(3)


def test_one_large_append_spans_write_groups_and_segments(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, "p1", segment_bytes=50_000, fsync="never")
    expected = [(f"k{i % 5}".encode(), bytes([i % 251]) * (i % 700)) for i in range(2000)]
    end = writer.append(expected)
    reader = SpoolReader(tmp_path / "p1")
    got = list(reader.frames())
    assert [(k, v) for _, k, v in got] == expected
    assert got[-1][0] == end == writer.end()
    segments = reader.segments()
    assert len(segments) > 10
    assert all((tmp_path / "p1" / f"{i:020d}.seg").stat().st_size <= 50_000 for i in segments)
    assert reader.torn_bytes == 0
    writer.close()
