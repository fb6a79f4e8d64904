"""Recovering a dead producer's spool-mode journals into its spool: :func:`recover_journals`.

With ``durability="spool"`` every log call is journaled before it returns (:mod:`.journal_writer` has the format,
:mod:`.journaled` the protocol with the flusher, :mod:`.journal_replay` the reading). After a SIGKILL, the points of
the last ``linger_ms`` are in the journals of the dead producer's spool directory, not in its segments.
:func:`recover_journals` turns them into envelopes, appends them to that spool as a new segment and deletes the
journals, so that ``trackstream sync`` or ``trackstream local`` deliver them like any spooled envelope.

Exactness. A journal file is either active (never drained: nothing of it is in the spool) or drained (its batch was
being written to the spool when the process died: all, some or none of its envelopes are there). Each file carries
the base the producer stood at before its first envelope (next ``seq``, the entity's next ``entity_seq`` and
``entity_offset``, the spool's end). For a drained file, the envelopes of its entity found in the spool after that
position, contiguous from its ``entity_seq``, are its first envelopes: their points (a prefix, in the order the
builder cuts a drain) and their events are dropped from the replay, so nothing is delivered twice. Recovered
envelopes continue the producer's ``seq`` after the highest one known, and each entity's ``entity_seq`` and
``entity_offset`` exactly after its last envelope, so the stream side's deduplication and loss accounting stay exact.

Two limits. If a consumer reading the live spool (``trackstream local``) had already deleted a segment holding the
first envelopes of the drained batch (the writer moved to a new segment within that batch, the consumer read past it,
and the kill came before the batch was settled, all within milliseconds), those points are delivered again under new
``entity_seq``s: at most one batch; ``points`` keeps one row per (series, rank, step), running summaries may count
them twice. If the spool refused a batch (disk full) and the process went on, the batch is recovered after the
process ends, but under new ``entity_seq``s: the hole it left stays counted in ``lost_points``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import orjson

from trackstream.producers.batching import EnvelopeBuilder, Origin, SeqCounter
from trackstream.producers.buffer import Drained
from trackstream.producers.journal_replay import JournalImage, Replayed, load_header, replay
from trackstream.producers.journal_writer import DRAINED, FREE, Base
from trackstream.producers.spool import MAGIC as SEGMENT_MAGIC
from trackstream.producers.spool import Frame, SpoolPosition, SpoolReader, encode_frame
from trackstream.producers.spool_scan import damaged_segments, segment_name
from trackstream.schemas import WireFormatError, decode

__all__ = ["PLAN", "RecoveryReport", "Replayed", "journal_files", "recover_journals", "replay"]

log = logging.getLogger(__name__)

PLAN: Final = "journal-recovery.json"


@dataclass(slots=True)
class _Sent:
    """What the recovery needs of one envelope already in the spool."""

    start: SpoolPosition
    key: bytes
    seq: int
    entity_seq: int | None
    entity_offset: int | None
    points: int
    finished: bool


@dataclass(slots=True)
class RecoveryReport:
    """What :func:`recover_journals` did for one producer directory.

    ``recovered_points``: points appended to the spool (in ``envelopes`` envelopes, in ``segment``);
    ``already_spooled``: points of a drained journal found in the spool (not appended again); ``journals``: journal
    files read and deleted; ``kept``: journal files that could not be read (left in place, logged);
    ``skipped_live``: the producer is alive (or another process is recovering it), nothing was done.
    """

    producer_id: str
    journals: int = 0
    envelopes: int = 0
    recovered_points: int = 0
    already_spooled: int = 0
    segment: Path | None = None
    kept: list[Path] = field(default_factory=list)
    skipped_live: bool = False


def recover_journals(producer_dir: Path, *, locked: bool = False) -> RecoveryReport:
    """Append what a dead producer's journals hold and its spool lacks to its spool, then delete the journals.

    Takes the directory's lock (``LOCK``) for the duration, so a live producer, or a concurrent recovery, is left
    alone (``skipped_live``); ``locked=True`` when the caller already holds it (``SpoolReader.claim``). Safe to run
    on any producer directory (without journals it only lists the directory) and again after an interruption: the
    recovered segment is written under a temporary name and renamed, and ``journal-recovery.json`` names it and the
    journals it replaces until they are deleted. Never rewrites a byte of an existing segment; the only change to
    one is cutting a torn tail (a frame the dead writer did not finish, whose points the journal holds) off the
    last segment, since a segment after it would make it a damaged range. A journal file that cannot be read is
    kept and listed in ``kept``. Raises OSError when the directory cannot be written.
    """
    producer_dir = Path(producer_dir)
    report = RecoveryReport(producer_dir.name)
    try:
        names = sorted(n for n in os.listdir(producer_dir) if n.startswith("journal-"))
    except FileNotFoundError:
        return report
    if not names:
        return report
    reader = SpoolReader(producer_dir)
    if not locked and not reader.claim():
        report.skipped_live = True
        return report
    try:
        _recover(producer_dir, reader, report)
    finally:
        if not locked:
            reader.release()
    return report


def _finish_plan(directory: Path) -> bool:
    """Complete an interrupted recovery; True when its segment was written (the journals it names are gone)."""
    plan_path = directory / PLAN
    try:
        plan = orjson.loads(plan_path.read_bytes())
    except FileNotFoundError:
        return False
    except orjson.JSONDecodeError:  # the plan is written before the segment is renamed: that had not happened
        plan_path.unlink()
        return False
    if not (directory / segment_name(plan["segment"])).exists():
        plan_path.unlink()
        return False
    for name in plan["journals"]:
        (directory / name).unlink(missing_ok=True)
    plan_path.unlink()
    return True


def _recover(directory: Path, reader: SpoolReader, report: RecoveryReport) -> None:
    _finish_plan(directory)
    for stale in [*directory.glob("*.seg.recovering"), (directory / PLAN).with_suffix(".tmp")]:
        stale.unlink(missing_ok=True)
    images: list[JournalImage] = []
    empty: list[Path] = []
    for path in sorted(directory.glob("journal-*.bin")):
        try:
            image = load_header(path)
        except (OSError, ValueError) as exc:
            log.warning("trackstream: cannot read the journal %s (%s); it is kept", path, exc)
            report.kept.append(path)
            continue
        if image is None or image.state.state == FREE:
            empty.append(path)
        else:
            images.append(image)
    report.journals = len(images) + len(empty)
    work = _plan_work(images)
    sent = _sent_frames(reader, [image.state.base for image in images if image.state.base is not None])
    frames = _rebuild(work, sent, report)
    if not frames:
        for path in [*empty, *(image.path for image in images)]:
            path.unlink(missing_ok=True)
        return
    segments = reader.segments()
    torn = reader.torn
    if torn is not None and segments and torn.segment == segments[-1]:
        os.truncate(directory / segment_name(torn.segment), torn.start)
        log.warning("trackstream: cut the torn tail (%d bytes) off %s; its points are in the journal",
                    torn.size, directory / segment_name(torn.segment))
    bases = [image.state.base.segment for image in images if image.state.base is not None]
    number = max([*segments, *bases, *damaged_segments(directory), -1]) + 1
    target = directory / segment_name(number)
    temporary = target.with_name(target.name + ".recovering")
    with open(temporary, "wb") as out:
        out.write(SEGMENT_MAGIC)
        for key, payload in frames:
            out.write(encode_frame(key, payload))
        out.flush()
        os.fsync(out.fileno())
    journals = [path.name for path in [*empty, *(image.path for image in images)]]
    plan = directory / PLAN
    plan.with_suffix(".tmp").write_bytes(orjson.dumps({"segment": number, "journals": journals}))
    os.replace(plan.with_suffix(".tmp"), plan)
    os.replace(temporary, target)
    report.segment = target
    _finish_plan(directory)
    log.warning("trackstream: recovered %d points (%d envelopes) of dead producer %s from its journals into %s",
                report.recovered_points, report.envelopes, directory.name, target)


def _plan_work(images: list[JournalImage]) -> list[JournalImage]:
    """Journal files in delivery order: per handle by epoch, handles by the first base seq they recorded."""
    handles: dict[str, list[JournalImage]] = {}
    for image in images:
        handles.setdefault(str(image.identity.get("handle")), []).append(image)
    groups = [sorted(files, key=lambda image: image.state.epoch) for files in handles.values()]

    def first_seq(files: list[JournalImage]) -> int:
        return min((f.state.base.seq for f in files if f.state.base is not None), default=2**63)

    groups.sort(key=first_seq)
    return [image for files in groups for image in files]


def _sent_frames(reader: SpoolReader, bases: list[Base]) -> list[_Sent]:
    """The envelopes in the spool after the earliest base (read to the end, so ``reader.torn`` is the tail)."""
    start = min((SpoolPosition(b.segment, b.offset) for b in bases), default=None)
    out: list[_Sent] = []
    for entry in reader.entries(start):
        if not isinstance(entry, Frame):
            continue
        try:
            envelope = decode(entry.payload)
        except WireFormatError:
            continue
        out.append(_Sent(entry.start, entry.key, envelope.seq, envelope.entity_seq, envelope.entity_offset,
                         envelope.point_count(), any(e.type == "run_finished" for e in envelope.events)))
    return out


def _rebuild(work: list[JournalImage], sent: list[_Sent], report: RecoveryReport) -> list[tuple[bytes, bytes]]:
    """The (key, payload) frames of everything the journals hold that the spool lacks, numbered to continue it."""
    seq = max([s.seq + 1 for s in sent] + [i.state.base.seq for i in work if i.state.base is not None] + [0])
    counters: dict[bytes, list[int]] = {}

    def advance(key: bytes, entity_seq: int, entity_offset: int) -> None:
        current = counters.setdefault(key, [0, 0])
        if entity_seq > current[0]:
            current[:] = [entity_seq, entity_offset]

    for s in sent:
        if s.entity_seq is not None and s.entity_offset is not None:
            advance(s.key, s.entity_seq + 1, s.entity_offset + s.points)
    for image in work:
        if image.state.base is not None:
            advance(image.entity.key(), image.state.base.entity_seq, image.state.base.entity_offset)
    frames: list[tuple[bytes, bytes]] = []
    for image in work:
        identity = image.identity
        replayed = replay(_read(image.path))
        if not replayed.complete:
            log.warning("trackstream: the journal %s ends in a record that does not parse; read up to it", image.path)
        drained = replayed.drained
        key = image.entity.key()
        if image.state.state == DRAINED and image.state.base is not None:
            report.already_spooled += _drop_sent(drained, image.state.base, key, sent)
        if not drained:
            continue
        builder = EnvelopeBuilder(SeqCounter(), max_points=int(identity["max_points"]),
                                  max_bytes=int(identity["max_bytes"]))
        builder.seqs.next = seq
        builder._entity_counters[key] = list(counters.get(key, [0, 0]))
        origin = Origin(str(identity["producer_id"]), int(identity["rank"]), int(identity["world_size"]),
                        str(identity["host"]))
        envelopes = builder.build(image.entity, origin, drained)
        seq = builder.seqs.next
        counters[key] = builder._entity_counters[key]
        frames += [(e.key, e.payload) for e in envelopes]
        report.envelopes += len(envelopes)
        report.recovered_points += sum(e.points for e in envelopes)
    return frames


def _drop_sent(drained: Drained, base: Base, key: bytes, sent: list[_Sent]) -> int:
    """Drop from a drained file's replay what its envelopes already in the spool carry; returns the points dropped.

    Those envelopes are the ones of ``key`` after the base position whose ``entity_seq`` runs on from the base's:
    the builder's first envelopes of this drain. They hold the first points in the builder's order (series in
    order, then single values), the leading events (in the first one) and ``run_finished`` (in the last one).
    """
    position = SpoolPosition(base.segment, base.offset)
    expected, points, finished = base.entity_seq, 0, False
    for s in sent:
        if s.start >= position and s.key == key and s.seq >= base.seq and s.entity_seq == expected:
            expected += 1
            points += s.points
            finished = finished or s.finished
    if expected == base.entity_seq:
        return 0
    drained.events = [e for e in drained.events if e.type == "run_finished" and not finished]
    remaining = points
    for name in list(drained.series):
        if remaining <= 0:
            break
        steps, times, values = drained.series[name]
        if remaining >= len(values):
            del drained.series[name]
            remaining -= len(values)
        else:
            drained.series[name] = (steps[remaining:], times[remaining:], values[remaining:])
            remaining = 0
    for name in list(drained.singles):
        if remaining <= 0:
            break
        del drained.singles[name]
        remaining -= 1
    return points


def _read(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def journal_files(producer_dir: Path) -> list[Path]:
    """The journal files of a producer directory (what :func:`recover_journals` would read)."""
    with contextlib.suppress(FileNotFoundError):
        return sorted(Path(producer_dir).glob("journal-*.bin"))
    return []
