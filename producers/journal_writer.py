"""The spool-mode journal, write side: the file format and the per-handle writer (read side: :mod:`.journal`).

With ``durability="spool"`` every handle writes each log call, inside the call and under the handle's lock, to an
mmap'd file in its producer's spool directory. Stores into a shared file mapping are in the page cache as soon as
they are made, so when a log call returns its points survive a SIGKILL of the process (not a machine crash).

Files: ``<spool_dir>/<producer_id>/journal-<handle>-<n>.bin``, preallocated with ``posix_fallocate`` (so a full
disk fails at creation or growth with an error, never with SIGBUS on a store), grown by doubling.

- ``[0, 4096)``: header. ``b"TSJRNL01"`` (written last at creation), u32 format version, u32 length and the
  identity as JSON (producer id, handle, entity, rank, world size, host, envelope limits); at 3072 and 3200 two
  state slots, written alternately, each ``<QQB?6xqqqqqI>``: version, epoch, state (0 free, 1 active, 2 drained),
  has_base, base ``seq``, ``entity_seq``, ``entity_offset``, spool ``segment``, ``offset``, crc32 of the rest.
  A torn slot fails its crc and the other (older) one is read.
- ``[4096, ...)``: records, 8-byte aligned, each starting with its type byte. A record's body is written first and
  its non-zero type byte last; the region beyond the last record is zero, so a reader stops at the first zero type
  byte and never reads a torn record. Fixed records: ``POINT`` ``<xxxxIqqd>`` (key id, step, time, value);
  ``ROW_AUTO``/``ROW_STEP`` ``<xxxxIqq{n}d>`` (shape id, step, time, one value per key of the shape: a
  ``log_metrics`` call). Variable records ``<xxxxI>`` + body (length) + zero padding: ``KEY`` (id, name),
  ``SHAPE`` (id, key ids), ``STEPS`` (next step of every key), ``POINTS`` (key id, n, next step after, then
  steps, times, values as columns), ``SINGLE``, ``OVERWRITE``, ``EVENT`` (orjson).

The base of a file is where the producer stood before the file's first envelope is built: the producer's next
``seq``, the entity's next ``entity_seq`` and ``entity_offset``, and the spool's end. It is written at creation,
when the flusher swaps the file out (state ``drained``) and, for the file that becomes active, once the drained
batch is in the spool. Every file starts with the declarations (keys and shapes) and the steps snapshot it needs
to be read alone.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import struct
import zlib
from array import array
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final, NamedTuple, TypeAlias

import orjson

from trackstream.producers.errors import SpoolError
from trackstream.schemas import Event

MAGIC: Final = b"TSJRNL01"
VERSION: Final = 1
HEADER_BYTES: Final = 4096
SLOT_AT: Final = (3072, 3200)
SLOT: Final = struct.Struct("<QQB?6xqqqqq")
IDENTITY_MAX: Final = 3000
INITIAL_BYTES: Final = 1 << 20
MAX_SHAPES: Final = 1024
FREE, ACTIVE, DRAINED = 0, 1, 2

KEY, SHAPE, STEPS, ROW_AUTO, ROW_STEP, POINT, POINTS, SINGLE, OVERWRITE, EVENT = range(1, 11)
POINT_RECORD: Final = struct.Struct("<xxxxIqqd")
ROW_HEAD: Final = struct.Struct("<xxxxIqq")
VAR_HEAD: Final = struct.Struct("<xxxxI")
U32: Final = struct.Struct("<I")
POINTS_HEAD: Final = struct.Struct("<IIq")
SINGLE_HEAD: Final = struct.Struct("<qqd")
I64: Final = struct.Struct("<q")
_ZEROS: Final = bytes(1 << 20)

Shape: TypeAlias = tuple[tuple[str, ...], int, Callable[..., None], int]  # keys, id, row packer, row size


def _no_row(*args: object) -> None:
    raise AssertionError("NO_ROW is never packed")


NO_ROW: Final[Shape] = ((), -1, _no_row, 0)  # past MAX_SHAPES: the call was journaled key by key


class Base(NamedTuple):
    """Where the producer stood before a file's first envelope: next seq, entity counters, spool end."""

    seq: int
    entity_seq: int
    entity_offset: int
    segment: int
    offset: int


class State(NamedTuple):
    """A file's state slot."""

    version: int
    epoch: int
    state: int
    base: Base | None


def var_record(kind: int, body: bytes) -> bytes:
    """A complete variable-length record (type byte included), padded to 8 bytes."""
    size = VAR_HEAD.size + len(body)
    return bytes([kind]) + bytes(3) + U32.pack(len(body)) + body + bytes(-size % 8)


def pack_state(state: State) -> bytes:
    """The 68 bytes of a state slot."""
    base = state.base or Base(0, 0, 0, 0, 0)
    raw = SLOT.pack(state.version, state.epoch, state.state, state.base is not None, *base)
    return raw + U32.pack(zlib.crc32(raw))


def unpack_state(data: bytes | mmap.mmap) -> State | None:
    """The newest valid state slot of a header, None when neither checks."""
    best: State | None = None
    for at in SLOT_AT:
        raw = bytes(data[at : at + SLOT.size + 4])
        if len(raw) < SLOT.size + 4 or zlib.crc32(raw[: SLOT.size]) != U32.unpack_from(raw, SLOT.size)[0]:
            continue
        version, epoch, kind, has_base, *base = SLOT.unpack_from(raw)
        if best is None or version > best.version:
            best = State(version, epoch, kind, Base(*base) if has_base else None)
    return best


def row_packer(count: int) -> Callable[..., None]:
    """``pack_into(buffer, offset, shape_id, step, time_ns, *values)`` of a row record of ``count`` values."""
    return struct.Struct(f"<xxxxIqq{count}d").pack_into


class JournalFile:
    """One preallocated, mmap'd journal file."""

    def __init__(self, path: Path, identity: bytes, size: int = INITIAL_BYTES) -> None:
        self.path = path
        self.used = HEADER_BYTES
        self.version = 0
        self.epoch = 0
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            _allocate(self.fd, 0, size)
            self.mm = mmap.mmap(self.fd, size)
        except OSError:
            os.close(self.fd)
            path.unlink(missing_ok=True)
            raise
        self.size = size
        self.mm[8:12] = U32.pack(VERSION)
        self.mm[12:16] = U32.pack(len(identity))
        self.mm[16 : 16 + len(identity)] = identity
        self.mm[0:8] = MAGIC

    def set_state(self, state: int, epoch: int, base: Base | None) -> None:
        """Write the next state slot (the older of the two)."""
        self.version += 1
        self.epoch = epoch
        at = SLOT_AT[self.version % 2]
        self.mm[at : at + SLOT.size + 4] = pack_state(State(self.version, epoch, state, base))

    def grow(self, need: int) -> None:
        """Make room for ``need`` more bytes after ``used`` (doubling); raises SpoolError when the disk is full."""
        size = self.size
        while size < self.used + need:
            size *= 2
        try:
            _allocate(self.fd, self.size, size - self.size)
            self.mm.resize(size)
        except OSError as exc:
            raise SpoolError(f"cannot grow the journal {self.path} to {size} bytes: {exc}") from exc
        self.size = size

    def zero(self, end: int) -> None:
        """Zero the records region up to ``end`` (what a previous use wrote)."""
        for at in range(HEADER_BYTES, end, len(_ZEROS)):
            chunk = min(len(_ZEROS), end - at)
            self.mm[at : at + chunk] = _ZEROS[:chunk]

    def close(self, *, unlink: bool = False) -> None:
        """Unmap and close; ``unlink`` also removes the file."""
        with contextlib.suppress(BufferError, ValueError):
            self.mm.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)
        if unlink:
            self.path.unlink(missing_ok=True)


def _allocate(fd: int, offset: int, length: int) -> None:
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        os.ftruncate(fd, offset + length)


class Journal:
    """The journal of one handle: the active file the log calls write to, and the files being delivered.

    ``mm``, ``off``, ``last`` and ``shapes`` are read and written by the log calls' fast paths
    (:class:`~trackstream.producers.buffer.JournaledBuffer`), always under the handle's lock; so are the
    ``write_*`` methods and :meth:`swap`. :meth:`release` and :meth:`strand` run on the flusher thread.
    """

    __slots__ = ("_active", "_clean", "_decl", "_dir", "_epoch", "_files", "_handle", "_identity", "_spare",
                 "_stranded", "cap", "last", "mm", "off", "shapes")

    def __init__(self, directory: Path, handle: str, identity: dict[str, Any], base: Base) -> None:
        self._dir = directory
        self._handle = handle
        self._identity = identity
        self._files = 0
        self._spare: list[JournalFile] = []
        self._stranded: list[JournalFile] = []
        self._decl = bytearray()
        self._epoch = 1
        self.shapes: dict[tuple[str, ...], Shape] = {}
        self.last: Shape = NO_ROW  # the shape of the last log_metrics call
        self._active = self._new_file()
        self._active.set_state(ACTIVE, self._epoch, base)
        self.mm = self._active.mm
        self.off = HEADER_BYTES
        self.cap = self._active.size
        self._clean = self.off

    def _new_file(self) -> JournalFile:
        name = f"journal-{self._handle}-{self._files}.bin"
        self._files += 1
        identity = orjson.dumps({**self._identity, "handle": self._handle, "file": name})
        if len(identity) > IDENTITY_MAX:
            raise ValueError(f"journal identity is {len(identity)} bytes, at most {IDENTITY_MAX}")
        try:
            return JournalFile(self._dir / name, identity)
        except OSError as exc:
            raise SpoolError(f"cannot create the journal {self._dir / name}: {exc}") from exc

    @property
    def dirty(self) -> bool:
        """True when the active file holds records written since it was activated."""
        return self.off > self._clean

    def make_room(self, need: int) -> int:
        """Grow the active file so that ``need`` bytes fit at ``off``; returns ``off``."""
        self._active.used = self.off
        self._active.grow(need)
        self.mm = self._active.mm
        self.cap = self._active.size
        return self.off

    def _put(self, record: bytes | bytearray) -> None:
        """Append complete records: everything but the first type byte, then that byte."""
        if not record:
            return
        off = self.off
        if off + len(record) > self.cap:
            off = self.make_room(len(record))
        mm = self.mm
        mm[off + 1 : off + len(record)] = memoryview(record)[1:]
        mm[off] = record[0]
        self.off = off + len(record)

    def write_key(self, key_id: int, name: str) -> None:
        """Declare series ``name`` as ``key_id`` (its steps start at 0)."""
        record = var_record(KEY, U32.pack(key_id) + name.encode())
        self._decl += record
        self._put(record)

    def write_shape(self, keys: tuple[str, ...], ids: list[int]) -> Shape | None:
        """Declare the key order of a ``log_metrics`` call; None past :data:`MAX_SHAPES` (rows go key by key)."""
        if len(self.shapes) >= MAX_SHAPES:
            return None
        shape_id = len(self.shapes)
        record = var_record(SHAPE, U32.pack(shape_id) + array("I", ids).tobytes())
        self._decl += record
        self._put(record)
        shape = self.shapes[keys] = (keys, shape_id, row_packer(len(ids)), ROW_HEAD.size + 8 * len(ids))
        return shape

    def write_point(self, key_id: int, step: int, time_ns: int, value: float) -> None:
        """One series point (what the fast path of ``log_metric`` writes inline)."""
        off = self.off
        if off + POINT_RECORD.size > self.cap:
            off = self.make_room(POINT_RECORD.size)
        POINT_RECORD.pack_into(self.mm, off, key_id, step, time_ns, value)
        self.mm[off] = POINT
        self.off = off + POINT_RECORD.size

    def write_points(self, key_id: int, next_step: int, steps: Iterable[int], times: Iterable[int],
                     values: Iterable[float]) -> None:
        """Points appended to a series by a slow path; ``next_step``: the series' auto step afterwards."""
        columns = array("q", steps).tobytes() + array("q", times).tobytes() + array("d", values).tobytes()
        count = len(columns) // 24
        if count:
            self._put(var_record(POINTS, POINTS_HEAD.pack(key_id, count, next_step) + columns))

    def write_single(self, name: str, step: int, time_ns: int, value: float) -> None:
        """A single value (replaces the buffered one of ``name``)."""
        self._put(var_record(SINGLE, SINGLE_HEAD.pack(step, time_ns, value) + name.encode()))

    def write_overwrite(self, name: str, time_ns: int) -> None:
        """Drop what is buffered for ``name``, queue its overwrite event, restart its steps at 0."""
        self._put(var_record(OVERWRITE, I64.pack(time_ns) + name.encode()))

    def write_event(self, event: Event) -> None:
        """A lifecycle event."""
        self._put(var_record(EVENT, orjson.dumps([event.type, event.time_ns, event.data])))

    def write_steps(self, next_steps: list[int]) -> None:
        """The next auto step of every series, by key id."""
        self._put(var_record(STEPS, array("q", next_steps).tobytes()))

    def write_state(self, series: Mapping[str, Any], singles: Mapping[str, tuple[int, int, float]],
                    events: Iterable[Event]) -> None:
        """Everything a buffer holds (at attachment): its keys, their next steps, its points, singles and events."""
        for key, one in series.items():
            self.write_key(one.key_id, key)
        self.write_steps([one.next_step for one in series.values()])
        for one in series.values():
            if one.values:
                self.write_points(one.key_id, one.next_step, one.steps, one.times, one.values)
        for key, item in singles.items():
            self.write_single(key, *item)
        for event in events:
            self.write_event(event)

    def swap(self, next_steps: list[int], base: Base | None) -> JournalFile:
        """Make a clean file active and return the one that was (now ``drained``, with ``base``); lock held."""
        old = self._active
        old.used = self.off
        new = self._spare.pop() if self._spare else self._new_file()
        self._epoch += 1
        new.set_state(ACTIVE, self._epoch, None)
        old.set_state(DRAINED, old.epoch, base)
        self._active, self.mm, self.off, self.cap = new, new.mm, HEADER_BYTES, new.size
        self._put(self._decl)
        self.write_steps(next_steps)
        self._clean = self.off
        return old

    def set_base(self, base: Base) -> None:
        """Record where the producer stands now as the active file's base; lock held."""
        self._active.set_state(ACTIVE, self._active.epoch, base)

    def release(self, old: JournalFile) -> None:
        """``old`` is in the spool: mark it free, zero what it held, keep it for the next swap (flusher thread)."""
        old.set_state(FREE, old.epoch, None)
        old.zero(old.used)
        old.used = HEADER_BYTES
        self._spare.append(old)

    def strand(self, old: JournalFile) -> None:
        """``old`` could not be delivered: keep it, ``drained``, for :func:`~.journal.recover_journals`."""
        self._stranded.append(old)

    def retire(self) -> None:
        """The handle is closed and its last batch delivered: delete the files (stranded ones are kept)."""
        for journal_file in (self._active, *self._spare):
            journal_file.close(unlink=True)
        for journal_file in self._stranded:
            journal_file.close()
        self._spare, self._stranded = [], []

    def detach(self) -> None:
        """In a forked child: drop the parent's mappings and descriptors without touching the files."""
        for journal_file in (self._active, *self._spare, *self._stranded):
            journal_file.close()
        self._spare, self._stranded = [], []
