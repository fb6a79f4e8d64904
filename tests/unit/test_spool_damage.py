"""Spool damage is contained: the reader resynchronises after a damaged frame, keeps every intact frame, records
the exact damaged range (logged once) and keeps the damaged segment, and its producer directory, until
`trackstream sync --discard-damaged` removes it. A torn final frame of a live writer is not damage."""

from __future__ import annotations

import logging
import random
import struct
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from trackstream import cli
from trackstream.producers import sync as sync_module
from trackstream.producers.spool import Damage, Frame, SpoolReader, SpoolWriter, encode_frame
from trackstream.producers.spool_scan import MAGIC, find_frame, load_marker, marker_path, segment_name
from trackstream.producers.sync import sync_spool

PRODUCER = "p1"


def envelopes(n: int, *, seed: int = 0) -> list[tuple[bytes, bytes]]:
    """(key, payload) pairs shaped like the SDK's: orjson entity keys and envelopes."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        key = orjson.dumps(["proj", "run", f"r{i % 3}"])
        payload = orjson.dumps({"v": 1, "producer_id": PRODUCER, "seq": i, "metrics": [
            {"name": "loss", "steps": list(range(i, i + 20)), "values": [rng.random() for _ in range(20)]}]})
        out.append((key, payload))
    return out


def write(tmp_path: Path, frames: list[tuple[bytes, bytes]], *, segment_bytes: int = 1 << 20,
          close: bool = True) -> tuple[SpoolWriter, list[Frame]]:
    """Write ``frames`` (one append per frame) and return the writer and every frame as first read."""
    writer = SpoolWriter(tmp_path, PRODUCER, segment_bytes=segment_bytes, fsync="never")
    for frame in frames:
        writer.append([frame])
    if close:
        writer.close()
    read = list(SpoolReader(tmp_path / PRODUCER).entries())
    assert all(isinstance(entry, Frame) for entry in read)
    return writer, [entry for entry in read if isinstance(entry, Frame)]


def segment(tmp_path: Path, index: int) -> Path:
    return tmp_path / PRODUCER / segment_name(index)


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def pairs(entries: list[Any]) -> list[tuple[bytes, bytes]]:
    return [(e.key, e.payload) for e in entries if isinstance(e, Frame)]


def ranges(entries: list[Any]) -> list[tuple[int, int, int]]:
    return [(e.segment, e.start, e.end) for e in entries if isinstance(e, Damage)]


def damage_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "damaged bytes" in r.getMessage()]


# --- the damage cases --------------------------------------------------------------------------------------


def _zero_first_frame(tmp_path: Path, frames: list[Frame]) -> tuple[set[int], tuple[int, int, int]]:
    first = frames[0]
    overwrite(segment(tmp_path, 0), first.start.offset + 20, bytes(64))  # 64 bytes zeroed inside it
    return {0}, (0, first.start.offset, first.after.offset)


def _zero_middle_frame(tmp_path: Path, frames: list[Frame]) -> tuple[set[int], tuple[int, int, int]]:
    index = len(frames) // 2
    middle = frames[index]
    overwrite(segment(tmp_path, middle.start.segment), middle.start.offset + 30, bytes(64))
    return {index}, (middle.start.segment, middle.start.offset, middle.after.offset)


def _corrupt_length(tmp_path: Path, frames: list[Frame]) -> tuple[set[int], tuple[int, int, int]]:
    index = len(frames) // 3
    victim = frames[index]
    size = segment(tmp_path, victim.start.segment).stat().st_size
    overwrite(segment(tmp_path, victim.start.segment), victim.start.offset, struct.pack("<I", size * 4))  # past the end
    return {index}, (victim.start.segment, victim.start.offset, victim.after.offset)


def _garbage_between_frames(tmp_path: Path, frames: list[Frame]) -> tuple[set[int], tuple[int, int, int]]:
    before = frames[len(frames) // 2 - 1]
    path = segment(tmp_path, before.after.segment)
    data = path.read_bytes()
    garbage = random.Random(7).randbytes(333) + bytes(40) + b"\x05\x00\x00\x00garbage"
    cut = before.after.offset
    path.write_bytes(data[:cut] + garbage + data[cut:])
    return set(), (before.after.segment, cut, cut + len(garbage))


CASES = {
    "zeroed inside the first frame": _zero_first_frame,
    "zeroed inside a middle frame": _zero_middle_frame,
    "length field pointing past the end": _corrupt_length,
    "garbage between frames": _garbage_between_frames,
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("segment_bytes", [1 << 20, 4000], ids=["one segment", "several segments"])
def test_the_reader_resynchronises_and_keeps_every_intact_frame(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str, segment_bytes: int,
) -> None:
    sent = envelopes(40)
    _, frames = write(tmp_path, sent, segment_bytes=segment_bytes)
    lost, expected_range = CASES[case](tmp_path, frames)
    caplog.set_level(logging.WARNING)
    reader = SpoolReader(tmp_path / PRODUCER)
    got = list(reader.entries())
    assert pairs(got) == [pair for i, pair in enumerate(sent) if i not in lost]
    assert ranges(got) == [expected_range]
    [damage] = reader.damaged
    assert damage.size == expected_range[2] - expected_range[1]
    assert damage.to_json() == {"segment": segment_name(expected_range[0]), "start": expected_range[1],
                                "end": expected_range[2], "bytes": damage.size}
    assert reader.torn is None
    assert len(damage_warnings(caplog)) == 1
    assert load_marker(tmp_path / PRODUCER, expected_range[0]) == {
        "segment": segment_name(expected_range[0]), "ranges": [list(expected_range[1:])], "read": False}
    # read again (a replay, another pass, another reader): the same entries, and no second warning
    assert list(SpoolReader(tmp_path / PRODUCER).entries()) == got
    assert len(damage_warnings(caplog)) == 1
    # frames() is the same stream without the damage
    assert [(k, v) for _, k, v in reader.frames()] == pairs(got)


@pytest.mark.parametrize("case", list(CASES))
def test_a_damaged_segment_is_kept_until_sync_discards_it(tmp_path: Path, case: str) -> None:
    _, frames = write(tmp_path, envelopes(40), segment_bytes=4000)
    _, (damaged_segment, _, _) = CASES[case](tmp_path, frames)
    reader = SpoolReader(tmp_path / PRODUCER)
    last = list(reader.entries())[-1].after
    segments = reader.segments()
    assert len(segments) >= 3

    # not read past yet: --discard-damaged keeps it
    report = sync_spool(tmp_path, discard_damaged=True, kafka_bootstrap="")
    assert report.discarded == []
    assert report.kept_damaged == [segment(tmp_path, damaged_segment)]

    reader.delete_consumed(last)  # a consumer (here: local's way) saved ``last`` and deletes what it consumed
    assert reader.segments() == sorted({damaged_segment, last.segment})
    assert load_marker(tmp_path / PRODUCER, damaged_segment)["read"] is True
    assert not reader.remove_if_drained(last)
    assert (tmp_path / PRODUCER).is_dir()

    report = sync_spool(tmp_path, discard_damaged=True, kafka_bootstrap="")
    assert [gone.path for gone in report.discarded] == [segment(tmp_path, damaged_segment)]
    assert report.kept_damaged == []
    assert not marker_path(tmp_path / PRODUCER, damaged_segment).exists()
    if damaged_segment != last.segment:
        assert report.removed == []  # the last segment still holds frames this sync (no Kafka) did not read
        assert reader.remove_if_drained(last)  # the consumer removes it on its next pass
    else:
        assert report.removed == [PRODUCER]
    assert not (tmp_path / PRODUCER).exists()


def test_damage_at_the_end_of_a_segment_the_writer_left_is_damage(tmp_path: Path) -> None:
    sent = envelopes(30)
    _, frames = write(tmp_path, sent, segment_bytes=4000)
    last_of_first = [i for i, f in enumerate(frames) if f.start.segment == 0][-1]
    victim = frames[last_of_first]
    overwrite(segment(tmp_path, 0), victim.start.offset + 12, bytes(16))
    reader = SpoolReader(tmp_path / PRODUCER)
    got = list(reader.entries())
    assert pairs(got) == sent[:last_of_first] + sent[last_of_first + 1 :]
    assert ranges(got) == [(0, victim.start.offset, victim.after.offset)]
    assert victim.after.offset == segment(tmp_path, 0).stat().st_size


def test_a_damaged_segment_header_is_recorded_and_every_frame_read(tmp_path: Path) -> None:
    sent = envelopes(5)
    write(tmp_path, sent)
    overwrite(segment(tmp_path, 0), 0, b"\xff" * len(MAGIC))
    reader = SpoolReader(tmp_path / PRODUCER)
    got = list(reader.entries())
    assert pairs(got) == sent
    assert ranges(got) == []  # no data in it: nothing to dead-letter
    assert [(d.segment, d.start, d.end) for d in reader.damaged] == [(0, 0, len(MAGIC))]
    assert reader.damaged_segments() == [0]  # the segment is kept all the same
    assert not reader.remove_if_drained(got[-1].after)


@pytest.mark.parametrize("header", [b"", b"TSSP", b"XX"])
def test_a_short_header_is_a_segment_being_created_when_last_and_damage_otherwise(tmp_path: Path,
                                                                                  header: bytes) -> None:
    sent = envelopes(3)
    write(tmp_path, sent)
    segment(tmp_path, 1).write_bytes(header)
    reader = SpoolReader(tmp_path / PRODUCER)
    assert pairs(list(reader.entries())) == sent
    being_written = MAGIC.startswith(header)
    assert reader.damaged_segments() == ([] if being_written else [1])
    segment(tmp_path, 2).write_bytes(MAGIC)  # the writer moved on: segment 1 will never be finished
    assert pairs(list(reader.entries())) == sent
    assert reader.damaged_segments() == ([1] if header else [])


def test_a_torn_final_frame_of_a_live_writer_is_not_damage(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sent = envelopes(6)
    writer, frames = write(tmp_path, sent, close=False)
    frame = encode_frame(*envelopes(7)[6])
    end = frames[-1].after.offset
    caplog.set_level(logging.WARNING)
    with open(segment(tmp_path, 0), "ab") as handle:
        handle.write(frame[:37])  # the writer is half-way through its next frame
        handle.flush()
        reader = SpoolReader(tmp_path / PRODUCER)
        got = list(reader.entries())
        assert pairs(got) == sent
        assert reader.damaged == []
        assert damage_warnings(caplog) == []
        assert reader.torn is not None
        assert (reader.torn.segment, reader.torn.start, reader.torn.end) == (0, end, end + 37)  # not recorded
        assert reader.torn_bytes == 37
        reader.delete_consumed(got[-1].after)
        assert not reader.remove_if_drained(got[-1].after)
        assert segment(tmp_path, 0).exists()
        assert reader.damaged_segments() == []
        handle.write(frame[37:])
    assert pairs(list(reader.entries(got[-1].after))) == [envelopes(7)[6]]
    assert reader.torn is None
    writer.close()


def test_a_torn_final_frame_of_a_dead_writer_is_ignored_and_the_directory_removed(tmp_path: Path) -> None:
    sent = envelopes(6)
    _, frames = write(tmp_path, sent)
    with open(segment(tmp_path, 0), "ab") as handle:
        handle.write(encode_frame(b"k", b"x" * 100)[:50])
    reader = SpoolReader(tmp_path / PRODUCER)
    got = list(reader.entries())
    assert pairs(got) == sent
    assert reader.damaged == []
    assert reader.torn is not None
    assert (reader.torn.start, reader.torn.size) == (frames[-1].after.offset, 50)
    assert reader.remove_if_drained(got[-1].after)


def test_random_damage_never_loses_an_untouched_frame(tmp_path: Path) -> None:
    """Binary payloads (zero runs, header-like bytes) and random damage: every frame whose bytes are untouched is
    read, every frame read was written, and frames plus damaged ranges tile the segment exactly."""
    rng = random.Random(1234)
    for trial in range(150):
        sent = [(rng.randbytes(rng.randrange(0, 8)), bytes(rng.randrange(0, 40)) + rng.randbytes(rng.randrange(0, 300)))
                for _ in range(rng.randrange(3, 25))]
        directory = tmp_path / str(trial)
        _, frames = write(directory, sent)
        path = directory / PRODUCER / segment_name(0)
        data = bytearray(path.read_bytes())
        touched: set[int] = set()
        for _ in range(rng.randrange(1, 4)):
            start = rng.randrange(len(MAGIC), len(data) - 1)
            length = rng.randrange(1, 80)
            data[start : start + length] = bytes(length) if rng.random() < 0.5 else rng.randbytes(length)
            touched |= {i for i, f in enumerate(frames) if start < f.after.offset and f.start.offset < start + length}
        path.write_bytes(bytes(data))
        got = list(SpoolReader(directory / PRODUCER).entries())
        read = pairs(got)
        assert set(read) <= set(sent)
        untouched = [pair for i, pair in enumerate(sent) if i not in touched]
        assert [pair for pair in read if pair in untouched] == untouched
        offset = len(MAGIC)
        for entry in got:
            start = entry.start.offset if isinstance(entry, Frame) else entry.start
            assert start == offset
            offset = entry.after.offset
        assert offset <= len(data)


def _find(tmp_path: Path, data: bytes, start: int = 0) -> int | None:
    path = tmp_path / "blob"
    path.write_bytes(data)
    with open(path, "rb") as handle:
        return find_frame(handle.fileno(), start, len(data))


def test_find_frame_skips_json_and_zeroed_bytes(tmp_path: Path) -> None:
    frame = encode_frame(b'["p","run","r"]', orjson.dumps({"values": list(range(100))}))
    noise = orjson.dumps({"text": "x" * 10_000}) + bytes(3 << 20)  # spans several read windows
    assert _find(tmp_path, noise + frame) == len(noise)
    assert _find(tmp_path, noise + frame[:-1]) is None
    assert _find(tmp_path, noise + frame + frame, start=len(noise)) == len(noise) + len(frame)


def test_find_frame_in_random_bytes_is_bounded_and_keeps_large_frames(tmp_path: Path) -> None:
    rng = random.Random(5)
    large = encode_frame(b"k", rng.randbytes(3 << 20))  # larger than what is verified where met
    small = encode_frame(b"k", b"x" * 100)
    garbage = rng.randbytes(1 << 20)
    started = time.monotonic()
    assert _find(tmp_path, garbage + large + small) == len(garbage)  # ends where a verified frame starts
    assert _find(tmp_path, garbage + large) == len(garbage)  # ends where the data ends
    assert _find(tmp_path, garbage + small + garbage) == len(garbage)
    assert _find(tmp_path, garbage + large + garbage + small) == 2 * len(garbage) + len(large)
    assert time.monotonic() - started < 20  # no CRC over megabytes per plausible-looking offset


# --- trackstream sync --------------------------------------------------------------------------------------


class _FakeKafka:
    sent: list[tuple[bytes, bytes]] = []

    def __init__(self, config: Any) -> None:
        self.config = config

    async def send(self, items: list[tuple[bytes, bytes]]) -> None:
        _FakeKafka.sent.extend(items)

    async def close(self) -> None:
        return None


def test_sync_sends_every_intact_frame_then_discard_damaged_removes_the_spool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(sync_module, "KafkaTransport", _FakeKafka)
    _FakeKafka.sent = []
    sent = envelopes(40)
    _, frames = write(tmp_path, sent, segment_bytes=4000)
    _, expected_range = _zero_first_frame(tmp_path, frames)
    caplog.set_level(logging.WARNING)

    report = sync_spool(tmp_path, kafka_bootstrap="127.0.0.1:1")
    assert _FakeKafka.sent == sent[1:]
    assert [(d.segment, d.start, d.end) for d in report.damaged] == [expected_range]
    assert report.kept_damaged == [segment(tmp_path, 0)]
    assert report.removed == []
    assert (tmp_path / PRODUCER).is_dir()
    assert len(damage_warnings(caplog)) == 1

    report = sync_spool(tmp_path, kafka_bootstrap="127.0.0.1:1")  # nothing new: nothing resent
    assert len(_FakeKafka.sent) == len(sent) - 1
    assert report.damaged == []

    report = sync_spool(tmp_path, discard_damaged=True, kafka_bootstrap="127.0.0.1:1")
    assert [gone.path for gone in report.discarded] == [segment(tmp_path, 0)]
    assert report.removed == [PRODUCER]
    assert not (tmp_path / PRODUCER).exists()
    assert len(_FakeKafka.sent) == len(sent) - 1


def test_cli_sync_discard_damaged_prints_what_it_removed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, frames = write(tmp_path, envelopes(10))
    _zero_middle_frame(tmp_path, frames)
    reader = SpoolReader(tmp_path / PRODUCER)
    reader.delete_consumed(list(reader.entries())[-1].after)
    assert cli.main(["sync", "--discard-damaged", "--spool-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"discarded {segment(tmp_path, 0)}" in out
    assert not (tmp_path / PRODUCER).exists()


def test_cli_sync_without_kafka_still_needs_discard_damaged(tmp_path: Path) -> None:
    assert cli.main(["sync", "--spool-dir", str(tmp_path)]) == 2
