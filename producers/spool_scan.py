"""Reading spool segments frame by frame, resynchronising after damage (the format: :mod:`.spool`).

A frame that is incomplete, has an implausible length or fails its CRC starts a bad region. The scanner then
looks for the next offset where a complete frame starts whose CRC checks (:func:`find_frame`, reading 1 MiB at
a time), and:

- finds one: the bytes in between are a damaged range (:class:`Damage`). Every intact frame after it is read.
- finds none, in the last segment: the region is the tail. For a live writer it is a frame still being written
  (the reader stops and retries later); for a dead one it is the torn tail of a crash (``SegmentScan.tail``).
- finds none, in an earlier segment: the rest of that segment is damaged (a writer never returns to a segment it
  has left, so nothing will complete it).

Payloads and keys are orjson text, which never holds a byte below 0x20, while a frame length (at most
:data:`MAX_FRAME`) always has a top byte of 0x10 or less: the search meets no false frame start inside intact
JSON, and a false start elsewhere must also match a CRC-32.

A damaged range is recorded in a marker file ``<segment number>.damaged`` (JSON) beside its segment, so that
the segment, and so its producer directory, is kept until an operator discards it
(``trackstream sync --discard-damaged``). A consumer that has read past a damaged segment marks it ``read``
(:func:`mark_read`); only such segments are discarded.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import stat
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

log = logging.getLogger(__name__)

MAGIC: Final = b"TSSPOOL1"
SEGMENT_SUFFIX: Final = ".seg"
DAMAGE_SUFFIX: Final = ".damaged"
HEADER: Final = struct.Struct("<II")
KEY_LEN: Final = struct.Struct("<H")
_FRAME_HEAD: Final = struct.Struct("<IIH")
MAX_FRAME: Final = 256 * 1024 * 1024
SAMPLE_BYTES: Final = 64 * 1024  # how much of a damaged range a dead-letter record carries
_WINDOW: Final = 1 << 20  # bytes read at once while resynchronising
_CHEAP: Final = 1 << 20  # frames up to this size are verified as soon as a resynchronising scan meets them


@dataclass(frozen=True, order=True, slots=True)
class SpoolPosition:
    """A read position: the next byte to read in segment number ``segment``."""

    segment: int
    offset: int


def segment_name(index: int) -> str:
    """The file name of segment number ``index``: 20 digits and ``.seg``."""
    return f"{index:020d}{SEGMENT_SUFFIX}"


@dataclass(frozen=True, slots=True)
class Frame:
    """One intact frame: where it starts, the position after it, its key and its payload."""

    start: SpoolPosition
    after: SpoolPosition
    key: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class Damage:
    """Bytes ``[start, end)`` of segment ``segment`` that hold no valid frame.

    ``sample`` is their first :data:`SAMPLE_BYTES` bytes and ``sha256`` the digest of all of them.
    """

    segment: int
    start: int
    end: int
    sha256: str = ""
    sample: bytes = field(default=b"", repr=False)

    @property
    def file(self) -> str:
        """The segment's file name."""
        return segment_name(self.segment)

    @property
    def size(self) -> int:
        """How many bytes the range spans."""
        return self.end - self.start

    @property
    def after(self) -> SpoolPosition:
        """The position right after the range: where reading resumes."""
        return SpoolPosition(self.segment, self.end)

    def to_json(self) -> dict[str, Any]:
        """``{"segment": <file name>, "start", "end", "bytes"}``."""
        return {"segment": self.file, "start": self.start, "end": self.end, "bytes": self.size}


def _region(fd: int, index: int, start: int, end: int) -> Damage:
    """The :class:`Damage` of bytes ``[start, end)`` of an open segment (digest and sample read from the file)."""
    digest, sample = hashlib.sha256(), b""
    for at in range(start, end, _WINDOW):
        chunk = os.pread(fd, min(_WINDOW, end - at), at)
        digest.update(chunk)
        sample = sample or chunk[:SAMPLE_BYTES]
    return Damage(index, start, end, digest.hexdigest(), sample)


def _start_pattern(available: int) -> re.Pattern[bytes]:
    """Offsets whose u32 could be a frame length: at least 2, top byte within ``min(available, MAX_FRAME)``."""
    top = min(available, MAX_FRAME) >> 24
    return re.compile(rb"(?=(?![\x00\x01]\x00\x00\x00)[\x00-\xff]{3}[\x00-\x%02x])" % top)


_Candidate = tuple[int, int, int, bytes, int]  # offset, length, crc, the chunk holding its header, index in it


def _candidates(fd: int, begin: int, end: int, size: int) -> Iterator[_Candidate]:
    """Plausible frame starts in ``[begin, end)`` of a file of ``size`` bytes: complete within it, sane lengths."""
    for pos in range(begin, end, _WINDOW):
        limit = min(_WINDOW, end - pos)
        chunk = os.pread(fd, limit + _FRAME_HEAD.size - 1, pos)
        for match in _start_pattern(size - pos).finditer(chunk):
            i = match.start()
            if i >= limit or i + _FRAME_HEAD.size > len(chunk):
                break
            length, crc, key_len = _FRAME_HEAD.unpack_from(chunk, i)
            if KEY_LEN.size + key_len <= length <= MAX_FRAME and pos + i + HEADER.size + length <= size:
                yield pos + i, length, crc, chunk, i


def _crc_ok(fd: int, candidate: _Candidate) -> bool:
    at, length, crc, chunk, i = candidate
    body: bytes | memoryview = memoryview(chunk)[i + HEADER.size : i + HEADER.size + length]
    if len(body) < length:
        body = os.pread(fd, length, at + HEADER.size)
    return len(body) == length and zlib.crc32(body) == crc


def find_frame(fd: int, start: int, size: int) -> int | None:
    """The offset of the first complete frame after ``start`` whose CRC checks, in a file of ``size`` bytes.

    A frame up to :data:`_CHEAP` bytes is verified where it is met. A larger one is verified only if it ends
    exactly where the found frame starts (or where the data ends), so that random bytes, where every few hundred
    offsets read as a large plausible length, never cost a CRC over megabytes each. A large frame followed by
    damage is therefore counted in the damaged range.
    """
    target = size
    for candidate in _candidates(fd, start + 1, size - _FRAME_HEAD.size + 1, size):
        if candidate[1] <= _CHEAP and _crc_ok(fd, candidate):
            target = candidate[0]
            break
    found = target if target < size else None
    while True:  # larger frames ending right where the found frame starts (or the data ends) come before it
        for candidate in _candidates(fd, start + 1, target, size):
            at, length = candidate[:2]
            if length > _CHEAP and at + HEADER.size + length == target and _crc_ok(fd, candidate):
                found = target = at
                break
        else:
            return found


class SegmentScan:
    """The entries of one segment file from an offset; ``tail`` is the unreadable end of the last segment.

    ``on_header_damage`` is called with a damaged segment header (``[0, 8)``, not yielded: it holds no data).
    """

    def __init__(self, path: Path, index: int, *, last: bool,
                 on_header_damage: Callable[[Damage], None] = lambda damage: None) -> None:
        self.path = path
        self.index = index
        self.last = last
        self.on_header_damage = on_header_damage
        self.tail: Damage | None = None

    def entries(self, offset: int) -> Iterator[Frame | Damage]:
        """Yield every intact :class:`Frame` and every :class:`Damage` from ``offset``, in file order."""
        try:
            # O_NONBLOCK: a FIFO (or device) planted in the spool must not hang the reader; it holds no frames
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            log.warning("spool: %s is not a regular file; skipped", self.path)
            return
        os.set_blocking(fd, True)
        with open(fd, "rb") as handle:
            magic = handle.read(len(MAGIC))
            if magic and magic != MAGIC and not (self.last and MAGIC.startswith(magic)):  # else: being written
                self.on_header_damage(_region(handle.fileno(), self.index, 0, len(magic)))
            if len(magic) < len(MAGIC):  # no frame in it
                return
            handle.seek(offset)
            while True:
                head = handle.read(_FRAME_HEAD.size)
                if not head:
                    return
                frame = _read_frame(handle, head)
                if frame is not None:
                    key, payload = frame
                    after = offset + _FRAME_HEAD.size + len(key) + len(payload)
                    yield Frame(SpoolPosition(self.index, offset), SpoolPosition(self.index, after), key, payload)
                    offset = after
                    continue
                fd = handle.fileno()
                size = os.fstat(fd).st_size
                found = find_frame(fd, offset, size)
                if found is None:
                    if self.last:
                        self.tail = _region(fd, self.index, offset, size)
                    else:
                        yield _region(fd, self.index, offset, size)
                    return
                yield _region(fd, self.index, offset, found)
                offset = found
                handle.seek(offset)


def _read_frame(handle: Any, head: bytes) -> tuple[bytes, bytes] | None:
    """The (key, payload) whose 10 header bytes are ``head``; None when incomplete, implausible or corrupt."""
    if len(head) < _FRAME_HEAD.size:
        return None
    length, crc, key_len = _FRAME_HEAD.unpack(head)
    if not KEY_LEN.size + key_len <= length <= MAX_FRAME:
        return None
    key = handle.read(key_len)
    payload = handle.read(length - KEY_LEN.size - key_len)
    if KEY_LEN.size + len(key) + len(payload) != length:
        return None
    if zlib.crc32(payload, zlib.crc32(head[HEADER.size :] + key)) != crc:
        return None
    return key, payload


# --- damage markers ---------------------------------------------------------------------------------------


def marker_path(directory: Path, index: int) -> Path:
    """The damage marker of segment ``index`` in a producer directory."""
    return directory / f"{index:020d}{DAMAGE_SUFFIX}"


def load_marker(directory: Path, index: int) -> dict[str, Any] | None:
    """The marker of segment ``index`` (``{"segment", "ranges": [[start, end], ...], "read"}``), or None."""
    try:
        marker: dict[str, Any] = orjson.loads(marker_path(directory, index).read_bytes())
    except FileNotFoundError:
        return None
    except orjson.JSONDecodeError:  # a marker cut short by a crash still says: this segment is damaged
        return {"segment": segment_name(index), "ranges": [], "read": False}
    return marker


def damaged_segments(directory: Path) -> list[int]:
    """Numbers of the segments that have a damage marker, ascending."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(int(n[: -len(DAMAGE_SUFFIX)]) for n in names
                  if n.endswith(DAMAGE_SUFFIX) and n[: -len(DAMAGE_SUFFIX)].isdigit())


def _save_marker(directory: Path, index: int, marker: dict[str, Any]) -> None:
    target = marker_path(directory, index)
    temporary = target.with_suffix(f".tmp{os.getpid()}")
    temporary.write_bytes(orjson.dumps(marker))
    os.replace(temporary, target)


def record_damage(directory: Path, damage: Damage) -> bool:
    """Add ``damage`` to its segment's marker; True when the range was not recorded before."""
    marker = load_marker(directory, damage.segment) or {"segment": damage.file, "ranges": [], "read": False}
    span = [damage.start, damage.end]
    if span in marker["ranges"]:
        return False
    marker["ranges"] = sorted([*marker["ranges"], span])
    _save_marker(directory, damage.segment, marker)
    return True


def note_damage(directory: Path, damage: Damage, seen: list[Damage]) -> None:
    """Record ``damage`` in its segment's marker and log it, one warning per range ever.

    ``seen``: the ranges this reader met before (what decides when the marker cannot be written).
    """
    try:
        new = record_damage(directory, damage)
    except OSError as exc:
        log.warning("trackstream spool: cannot record damage in %s: %s", directory, exc)
        new = damage not in seen
    if new:
        log.warning("trackstream spool: %d damaged bytes in %s at [%d, %d) hold no valid frame; reading resumed "
                    "at the next valid frame. The segment is kept until `trackstream sync --discard-damaged` "
                    "removes it", damage.size, directory / damage.file, damage.start, damage.end)


def read_past(directory: Path, index: int, position: SpoolPosition, *, final: bool) -> bool:
    """True when ``position`` has passed all of segment ``index``; ``final``: no writer appends to it any more."""
    if index < position.segment:
        return True  # the writer has moved on to a later segment
    if not final:
        return False
    try:
        return position.offset >= (directory / segment_name(index)).stat().st_size
    except FileNotFoundError:
        return True


def mark_read(directory: Path, index: int) -> None:
    """Note in segment ``index``'s marker that a consumer has read past all of it (it may now be discarded)."""
    marker = load_marker(directory, index)
    if marker is not None and not marker.get("read"):
        marker["read"] = True
        _save_marker(directory, index, marker)


@dataclass(frozen=True, slots=True)
class Discarded:
    """A damaged segment removed by :func:`discard_read`: its path, its damaged ranges and its size."""

    path: Path
    ranges: list[list[int]]
    size: int


def discard_read(directory: Path) -> tuple[list[Discarded], list[Path]]:
    """Delete the damaged segments that a consumer has read past, with their markers.

    Returns what was removed and the damaged segments kept because intact frames in them are still unread.
    """
    removed: list[Discarded] = []
    kept: list[Path] = []
    for index in damaged_segments(directory):
        marker = load_marker(directory, index) or {}
        segment = directory / segment_name(index)
        if not segment.exists():  # a stale marker: its segment is gone
            marker_path(directory, index).unlink(missing_ok=True)
            continue
        if not marker.get("read"):
            kept.append(segment)
            continue
        size = 0
        with contextlib.suppress(FileNotFoundError):
            size = segment.stat().st_size
            segment.unlink()
        marker_path(directory, index).unlink(missing_ok=True)
        removed.append(Discarded(segment, [list(r) for r in marker.get("ranges", [])], size))
    return removed, kept
