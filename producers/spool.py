"""The local spool: append-only, CRC-checked segment files per producer incarnation.

Layout (format version 1)::

    <spool_dir>/<producer_id>/          one directory per producer incarnation (uuid4 hex)
        LOCK                            the live writer holds an exclusive flock on it: liveness
        producer.json                   {"format": 1, "producer_id", "pid", "host", "created_ns"}
        00000000000000000000.seg        segments, numbered from 0, each starting with b"TSSPOOL1"
        <consumer>.pos                  {"segment": n, "offset": k}: a consumer's saved read position
        00000000000000000000.damaged    damaged ranges found in that segment (see below)

A frame is ``<u32 length><u32 crc32><u16 key length><key><payload>`` (little-endian), where ``length``
counts the bytes after the 8-byte header and ``crc32`` (zlib) covers them. ``key`` is the Kafka key (the
entity key) and ``payload`` one encoded envelope (:func:`trackstream.schemas.encode`). A writer appends whole frames
(``writev``, no copy of the payloads) and starts a new segment past ``segment_bytes``; it never rewrites a byte.

Readers (:class:`SpoolReader`) iterate frames from a :class:`SpoolPosition` and get the position after
each frame, so they can save it and resume. A frame that is incomplete or fails its CRC starts a bad region,
and the reader resynchronises at the next frame whose header and CRC check (:mod:`.spool_scan`):

- with an intact frame after it, the region is damage: its byte range is yielded as a :class:`Damage` entry
  (:meth:`SpoolReader.entries`), logged once as a warning and recorded in a ``<segment number>.damaged``
  marker beside the segment. A damaged segment, and so its producer directory, is kept until an operator
  discards it (``trackstream sync --discard-damaged``) after a consumer has read past it;
- with nothing valid after it, at the end of the last segment, it is the tail (``SpoolReader.torn``): for a live
  writer a frame still being written, for a dead one (no flock) the torn tail of a crash, which is ignored.

Segments before a consumer's position can be deleted (damaged ones excepted); a dead producer's directory is
removed once it has been read to its end and holds no damaged segment.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson

from trackstream.producers import spool_scan as _scan
from trackstream.producers.errors import SpoolError
from trackstream.producers.spool_scan import MAGIC, SEGMENT_SUFFIX, Damage, Discarded, Frame, SpoolPosition

__all__ = ["MAGIC", "START", "Damage", "Discarded", "Frame", "ProducerSpool", "SpoolPosition", "SpoolReader",
           "SpoolWriter", "encode_frame", "is_locked", "list_spools"]

log = logging.getLogger(__name__)

FORMAT_VERSION: Final = 1
_HEADER: Final = _scan.HEADER
_KEY_LEN: Final = _scan.KEY_LEN
_IOV_BUFFERS: Final = 3 * 300  # three buffers per frame, below IOV_MAX (1024 on Linux)


START: Final = SpoolPosition(0, len(MAGIC))


def encode_frame(key: bytes, payload: bytes) -> bytes:
    """One spool frame as bytes: ``<u32 length><u32 crc32><u16 key length><key><payload>``, little-endian.

    ``length`` counts the bytes after the 8-byte header and ``crc32`` (zlib) covers them (docs/wire-format.md).
    """
    body = _KEY_LEN.pack(len(key)) + key + payload
    return _HEADER.pack(len(body), zlib.crc32(body)) + body


def _segments(path: Path) -> list[int]:
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return []
    return sorted(int(n[: -len(SEGMENT_SUFFIX)]) for n in names
                  if n.endswith(SEGMENT_SUFFIX) and n[: -len(SEGMENT_SUFFIX)].isdigit())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SpoolWriter:
    """Appends frames for one producer incarnation; holds the directory's flock while open."""

    def __init__(
        self, spool_dir: str | os.PathLike[str], producer_id: str, *, segment_bytes: int = 64 << 20,
        fsync: str = "interval", fsync_interval_ms: int = 1000,
    ) -> None:
        self.path = Path(spool_dir) / producer_id
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self._fsync_interval_ns = fsync_interval_ms * 1_000_000
        self._last_sync_ns = time.monotonic_ns()
        self._dirty = False
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.path / "LOCK", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            meta = {"format": FORMAT_VERSION, "producer_id": producer_id, "pid": os.getpid(),
                    "host": socket.gethostname(), "created_ns": time.time_ns()}
            (self.path / "producer.json").write_bytes(orjson.dumps(meta))
            existing = _segments(self.path)
            self._index = existing[-1] + 1 if existing else 0
            self._fd = self._open_segment(self._index)
        except OSError as exc:
            raise SpoolError(f"cannot open spool directory {self.path}: {exc}") from exc
        self._size = len(MAGIC)

    def _open_segment(self, index: int) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        fd = os.open(self.path / _scan.segment_name(index), flags, 0o644)
        os.write(fd, MAGIC)
        if self.fsync == "batch":
            os.fsync(fd)
            _fsync_dir(self.path)
        return fd

    def end(self) -> SpoolPosition:
        """The position right after the last frame written."""
        return SpoolPosition(self._index, self._size)

    def append(self, frames: Iterable[tuple[bytes, bytes]]) -> SpoolPosition:
        """Append (key, payload) frames in order; returns the new end position.

        Frames go out with ``writev`` in groups, header and payload as separate buffers: the payloads
        are never copied, so spooling tens of MiB at once (Kafka away) costs no extra memory.
        """
        vectors: list[bytes] = []
        pending = 0
        for key, payload in frames:
            prefix = _KEY_LEN.pack(len(key)) + key
            length = len(prefix) + len(payload)
            size = self._size + pending
            if size > len(MAGIC) and size + _HEADER.size + length > self.segment_bytes:
                self._write_vectors(vectors)
                vectors, pending = [], 0
                self._roll()
            vectors += (_HEADER.pack(length, zlib.crc32(payload, zlib.crc32(prefix))), prefix, payload)
            pending += _HEADER.size + length
            if len(vectors) >= _IOV_BUFFERS:
                self._write_vectors(vectors)
                vectors, pending = [], 0
        self._write_vectors(vectors)
        if self.fsync == "batch" or (
            self.fsync == "interval" and time.monotonic_ns() - self._last_sync_ns >= self._fsync_interval_ns
        ):
            self.sync()
        return self.end()

    def _write_vectors(self, vectors: list[bytes]) -> None:
        """Write ``vectors`` whole at the end of the segment; on failure cut back what was written."""
        if not vectors:
            return
        total = sum(len(v) for v in vectors)
        written = 0
        remaining: list[bytes | memoryview] = list(vectors)
        try:
            while written < total:
                done = os.writev(self._fd, remaining)
                written += done
                while remaining and done >= len(remaining[0]):
                    done -= len(remaining[0])
                    remaining.pop(0)
                if done:
                    remaining[0] = memoryview(remaining[0])[done:]
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise SpoolError(f"cannot write to spool {self.path}: {exc}") from exc
        self._size += written
        self._dirty = True

    def _roll(self) -> None:
        self.sync()
        os.close(self._fd)
        self._index += 1
        self._fd = self._open_segment(self._index)
        self._size = len(MAGIC)

    def sync(self) -> None:
        """fsync the current segment if anything was written since the last sync (not with ``fsync="never"``).

        Restarts the ``interval`` clock; an :class:`OSError` from fsync is not wrapped.
        """
        if self._dirty and self.fsync != "never":
            os.fsync(self._fd)
        self._dirty = False
        self._last_sync_ns = time.monotonic_ns()

    def close(self) -> None:
        """Sync, close and release the lock (the directory then reads as dead)."""
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            self.sync()
        os.close(self._fd)
        os.close(self._lock_fd)
        self._fd = self._lock_fd = -1

    def abandon(self) -> None:
        """In a forked child: drop the inherited descriptors without touching the parent's lock or data."""
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._lock_fd = -1


@dataclass(frozen=True, slots=True)
class ProducerSpool:
    """One producer incarnation's spool directory, and whether its writer is alive."""

    producer_id: str
    path: Path
    alive: bool


def is_locked(path: Path) -> bool:
    """True while a live writer holds the directory's flock."""
    return flock_held(path / "LOCK")


def try_flock(path: Path, *, create_mode: int | None = None) -> int:
    """A descriptor of ``path`` holding its exclusive ``flock``, or -1 when another descriptor holds it.

    ``create_mode``: create a missing file with this mode; without it a missing file raises FileNotFoundError.
    """
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create_mode is not None else 0)
    fd = os.open(path, flags, 0o600 if create_mode is None else create_mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return -1
    return fd


def flock_held(path: Path) -> bool:
    """True while some open descriptor (another process's, or another of this one) holds ``path``'s ``flock``; a
    missing file is not held. Probes without creating anything."""
    try:
        fd = try_flock(path)
    except FileNotFoundError:
        return False
    if fd < 0:
        return True
    os.close(fd)
    return False


def list_spools(spool_dir: str | os.PathLike[str]) -> list[ProducerSpool]:
    """Every producer directory under ``spool_dir``, oldest first, with its liveness."""
    root = Path(spool_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and (p / "LOCK").exists()]
    found.sort(key=lambda p: (p / "LOCK").stat().st_mtime_ns)
    return [ProducerSpool(p.name, p, is_locked(p)) for p in found]


class SpoolReader:
    """Reads one producer directory's frames in order, from any saved position.

    ``torn`` is the unreadable tail of the last segment met by the latest read (``torn_bytes`` its size): a frame
    still being written when the writer is alive, the torn tail of a crash when it is dead. ``damaged`` lists
    the damaged ranges this reader has met, in order.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.torn: Damage | None = None
        self.damaged: list[Damage] = []
        self._claim_fd = -1

    @property
    def torn_bytes(self) -> int:
        """Size of the unreadable tail met by the latest read (0: none)."""
        return 0 if self.torn is None else self.torn.size

    def is_alive(self) -> bool:
        """True while the writer (or another claimant) holds the directory's lock."""
        return self._claim_fd < 0 and is_locked(self.path)

    def claim(self) -> bool:
        """Take the directory's lock for exclusive draining; False if a writer or claimant holds it."""
        if self._claim_fd >= 0:
            return True
        try:
            fd = try_flock(self.path / "LOCK")
        except FileNotFoundError:
            return False
        if fd < 0:
            return False
        self._claim_fd = fd
        return True

    def release(self) -> None:
        """Give up the lock taken by :meth:`claim`, if held; a no-op otherwise."""
        if self._claim_fd >= 0:
            os.close(self._claim_fd)
            self._claim_fd = -1

    def segments(self) -> list[int]:
        """Numbers of the segment files in the directory, ascending (empty when the directory is gone)."""
        return _segments(self.path)

    def frames(
        self, start: SpoolPosition | None = None, *, max_bytes: int | None = None,
    ) -> Iterator[tuple[SpoolPosition, bytes, bytes]]:
        """Yield ``(position after the frame, key, payload)`` from ``start`` (default: the beginning).

        Stops at the end of the readable data, or after about ``max_bytes`` of frames. Damaged ranges are
        skipped (see :meth:`entries`).
        """
        for entry in self.entries(start, max_bytes=max_bytes):
            if isinstance(entry, Frame):
                yield entry.after, entry.key, entry.payload

    def entries(self, start: SpoolPosition | None = None, *, max_bytes: int | None = None) -> Iterator[Frame | Damage]:
        """Yield every intact :class:`Frame` and every :class:`Damage` range from ``start``, in spool order.

        A damaged range is logged (one warning per range, ever) and recorded in its segment's marker the first
        time it is met. Stops at the end of the readable data, or after about ``max_bytes`` of frames.
        """
        position = start or START
        budget = max_bytes if max_bytes is not None else -1
        self.torn = None
        segments = self.segments()
        for index in segments:
            if index < position.segment:
                continue
            offset = position.offset if index == position.segment else len(MAGIC)
            scan = _scan.SegmentScan(self.path / _scan.segment_name(index), index, last=index == segments[-1],
                               on_header_damage=self._note)
            for entry in scan.entries(offset):
                if isinstance(entry, Damage):
                    self._note(entry)
                    yield entry
                    continue
                yield entry
                budget -= len(entry.payload) + len(entry.key)
                if max_bytes is not None and budget <= 0:
                    return
            self.torn = scan.tail

    def _note(self, damage: Damage) -> None:
        _scan.note_damage(self.path, damage, self.damaged)
        self.damaged.append(damage)

    def damaged_segments(self) -> list[int]:
        """Numbers of the segments that hold recorded damage (kept until :meth:`discard_damaged`)."""
        return sorted(set(_scan.damaged_segments(self.path)) & set(self.segments()))

    def delete_consumed(self, position: SpoolPosition) -> int:
        """Delete the segments wholly before ``position``; returns how many were deleted.

        A damaged segment is kept, and marked read once ``position`` has passed all of it (see
        :meth:`discard_damaged`).
        """
        deleted = 0
        damaged = set(self.damaged_segments())
        segments = self.segments()
        for index in segments:
            if index in damaged and index <= position.segment:
                final = index != segments[-1] or not self.is_alive()  # else the writer may still append to it
                if _scan.read_past(self.path, index, position, final=final):
                    with contextlib.suppress(OSError):  # a read-only spool: it is merely kept
                        _scan.mark_read(self.path, index)
            elif index < position.segment:
                with contextlib.suppress(FileNotFoundError):
                    (self.path / _scan.segment_name(index)).unlink()
                    deleted += 1
        return deleted

    def discard_damaged(self) -> tuple[list[Discarded], list[Path]]:
        """Delete the damaged segments a consumer has read past (their marker says ``read``), with their markers.

        Returns the segments removed, and the damaged segments kept because intact frames in them are unread.
        """
        return _scan.discard_read(self.path)

    def at_end(self, position: SpoolPosition) -> bool:
        """True when no complete frame follows ``position``."""
        return next(self.frames(position), None) is None

    def remove_if_drained(self, position: SpoolPosition) -> bool:
        """Remove the whole directory of a dead producer read to its end; True if removed.

        A directory holding a damaged segment is kept until :meth:`discard_damaged` removed it.
        """
        if self.damaged_segments() or self.is_alive() or not self.at_end(position):
            return False
        for child in self.path.iterdir():
            if child.name != "LOCK":
                child.unlink()
        (self.path / "LOCK").unlink()
        self.release()
        self.path.rmdir()
        return True

    def load_position(self, consumer: str) -> SpoolPosition:
        """A consumer's saved position, or the beginning."""
        try:
            raw = orjson.loads((self.path / f"{consumer}.pos").read_bytes())
        except FileNotFoundError:
            return START
        return SpoolPosition(int(raw["segment"]), int(raw["offset"]))

    def save_position(self, consumer: str, position: SpoolPosition) -> None:
        """Atomically record a consumer's position (write to a temporary file, then rename)."""
        target = self.path / f"{consumer}.pos"
        temporary = target.with_suffix(f".tmp{os.getpid()}")
        temporary.write_bytes(orjson.dumps({"segment": position.segment, "offset": position.offset}))
        os.replace(temporary, target)
