"""Cross-rank step accumulators held as columns: the state behind :class:`~trackstream.streams.aggregate.StepTracker`.

Every rank of a distributed run logs the same steps, in envelopes of a few hundred or thousand steps. A
:class:`Piece` holds such a run of steps: the steps in the order they first arrived and, per rank (in the order
the ranks reported), the column of that rank's values. A rank's batch costs a few list operations, and a completed
piece is aggregated by C-level passes over its columns, instead of one dict operation per point.

The semantics are those of one accumulator per step, ``[first_seen_ns, time_ns, emitted, {rank: value}]``, held
in the order the steps first arrived (as :attr:`StepColumns.pending` and :attr:`StepColumns.late` show them). A
batch's points apply in order: a step not held becomes pending, first seen now; a point of a pending step sets the
rank's value (a rank logging a step again keeps its place among the ranks) and raises the step's time to the
point's; the step is emitted and forgotten once it has ``world_size`` ranks. :meth:`StepColumns.expire` emits the
pending steps (from the oldest) that waited the timeout with the ranks they have, and keeps them as *late* for the
retention: a rank one lacked re-emits it with a higher count (its time stays), a rank it has replaces its value,
and it is forgotten once complete or past the retention.

The steps of a piece share their first sighting, state (pending or late, ``emitted``) and ranks. A batch covering
part of a piece splits it, the parts keeping their place in the arrival order (a doubly linked list). A part is a
window ``[start, stop)`` into the lists it was cut from and only the smaller part is re-indexed, so that a batch
costs about a constant per point and rank (times a logarithm at worst), however its steps are ordered or repeated.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import repeat
from typing import Any, cast

import orjson

from trackstream.schemas.floats import exact_float

StepAcc = list[Any]
# Emitted steps: (steps, one value column per rank in rank order, time columns whose per-step maximum is the time).
EmittedSteps = tuple[list[int], list[list[float]], list[list[int]]]
Emitted = list[EmittedSteps]
_consume: Callable[[Iterable[object]], None] = deque[object](maxlen=0).extend  # runs an iterator out at C speed


class _Link:
    __slots__ = ("next", "prev")

    prev: _Link
    next: _Link


class _Chain(_Link):
    """Pieces in arrival order: a doubly linked ring around this sentinel (insert and unlink in constant time)."""

    __slots__ = ()

    def __init__(self) -> None:
        self.prev = self.next = self

    def __bool__(self) -> bool:
        return self.next is not self

    def __iter__(self) -> Iterator[Piece]:
        """The pieces from the oldest; the current one may be unlinked (or moved to another chain) meanwhile."""
        link = self.next
        while link is not self:
            following = link.next
            yield cast(Piece, link)
            link = following

    def insert(self, after: _Link, piece: Piece) -> None:
        piece.prev, piece.next = after, after.next
        after.next.prev = piece
        after.next = piece

    def append(self, piece: Piece) -> None:
        self.insert(self.prev, piece)

    @staticmethod
    def unlink(piece: Piece) -> None:
        piece.prev.next = piece.next
        piece.next.prev = piece.prev


class Piece(_Link):
    """Steps ``steps[start:stop]`` that share their first sighting, state and ranks, with their columns.

    ``values[k]`` is the column of rank ``ranks[k]``; ``times`` holds one column per batch applied while pending
    (a step's time is their maximum). Columns are aligned with ``steps``; a piece cut from another shares its lists
    and narrows the window until :meth:`compact` gives it lists of its own. A column is replaced, never changed in
    place: steps emitted from a piece keep their values when it is cut or compacted.
    """

    __slots__ = ("_positions", "_steps_wire", "_times_wire", "_values_wire", "emitted", "first_seen", "late", "ranks",
                 "start", "steps", "stop", "times", "values")

    def __init__(self, steps: list[int], *, first_seen: int, emitted: int, late: bool, ranks: list[int],
                 values: list[list[float]], times: list[list[int]]) -> None:
        self.steps, self.start, self.stop = steps, 0, len(steps)
        self.first_seen, self.emitted, self.late = first_seen, emitted, late
        self.ranks, self.values, self.times = ranks, values, times
        # {step: index in steps}, built when a step's place cannot be computed; shared with the pieces cut from this
        self._positions: list[dict[int, int] | None] = [None]
        self._steps_wire: orjson.Fragment | None = None
        self._values_wire: list[orjson.Fragment | None] = [None] * len(values)
        self._times_wire: list[orjson.Fragment | None] = [None] * len(times)

    def cut(self, start: int, stop: int) -> Piece:
        """A piece for ``steps[start:stop]`` sharing this one's lists and state (the caller narrows this one)."""
        part = Piece(self.steps, first_seen=self.first_seen, emitted=self.emitted, late=self.late,
                     ranks=list(self.ranks), values=list(self.values), times=list(self.times))
        part.start, part.stop, part._positions = start, stop, self._positions
        return part

    def compact(self) -> None:
        """Give the piece lists of its own holding only its window (a no-op when they hold nothing else)."""
        start, stop = self.start, self.stop
        if start == 0 and stop == len(self.steps):
            return
        self.steps = self.steps[start:stop]
        self.values = [column[start:stop] for column in self.values]
        self.times = [column[start:stop] for column in self.times]
        self.start, self.stop, self._positions = 0, stop - start, [None]
        self.forget_wire()

    def window(self) -> list[int]:
        """The piece's steps, in arrival order."""
        return self.steps if self.start == 0 and self.stop == len(self.steps) else self.steps[self.start:self.stop]

    def position(self, step: int) -> int:
        """Where ``step`` (a step of this piece) is in ``steps``: computed when the steps are evenly spaced."""
        steps, start, stop = self.steps, self.start, self.stop
        first = steps[start]
        at = start + step - first
        if start <= at < stop and steps[at] == step:
            return at
        if stop - start > 1:
            stride = steps[start + 1] - first
            if stride and not (step - first) % stride:
                at = start + (step - first) // stride
                if start <= at < stop and steps[at] == step:
                    return at
        positions = self._positions[0]
        if positions is None:
            positions = self._positions[0] = dict(zip(steps, range(len(steps)), strict=True))
        return positions[step]

    def set_rank(self, rank: int, values: list[float]) -> None:
        """Set the column of ``rank`` (compact pieces only): a new rank goes last, a known one keeps its place."""
        ranks = self.ranks
        if rank in ranks:
            at = ranks.index(rank)
            self.values[at] = values
            self._values_wire[at] = None
        else:
            ranks.append(rank)
            self.values.append(values)
            self._values_wire.append(None)

    def add_times(self, times: list[int]) -> None:
        """Add one batch's times; more columns than ranks (a rank logged the steps again) fold into their maximum."""
        self.times.append(times)
        if len(self.times) > len(self.ranks):
            self.times, self._times_wire = [list(map(max, *self.times))], [None]
        else:
            self._times_wire.append(None)

    def acc(self, at: int) -> StepAcc:
        """The accumulator of ``steps[at]`` as ``[first_seen_ns, time_ns, emitted, {rank: value}]``."""
        return [self.first_seen, max(column[at] for column in self.times), self.emitted,
                {rank: column[at] for rank, column in zip(self.ranks, self.values, strict=True)}]

    def forget_wire(self) -> None:
        self._steps_wire, self._values_wire = None, [None] * len(self.values)
        self._times_wire = [None] * len(self.times)

    def to_wire(self) -> list[Any]:
        """``[first_seen_ns, emitted, ranks, steps, time columns, value columns]``, the columns as orjson fragments
        kept until they change (a checkpoint after every envelope writes each column once)."""
        self.compact()
        if self._steps_wire is None:
            self._steps_wire = orjson.Fragment(orjson.dumps(self.steps))
        for k, frame in enumerate(self._times_wire):
            if frame is None:
                self._times_wire[k] = orjson.Fragment(orjson.dumps(self.times[k]))
        for k, frame in enumerate(self._values_wire):
            if frame is None:
                self._values_wire[k] = orjson.Fragment(_floats_json(self.values[k]))
        return [self.first_seen, self.emitted, list(self.ranks), self._steps_wire, list(self._times_wire),
                list(self._values_wire)]


def _floats_json(values: list[float]) -> bytes:
    """A float column as JSON: orjson writes non-finite floats as ``null`` (the one ``n`` a column of numbers can
    hold), and then the column is written again with those as ``{"$f64": bits}``."""
    blob = orjson.dumps(values)
    if b"n" in blob:
        blob = orjson.dumps([exact_float(value) for value in values])
    return blob


class StepColumns:
    """Pending and late :class:`Piece` columns of one (entity, metric, generation) in arrival order, and the piece of
    every step held (``_index``); see the module."""

    __slots__ = ("_index", "_late", "_pending")

    def __init__(self) -> None:
        self._pending, self._late = _Chain(), _Chain()
        self._index: dict[int, Piece] = {}

    def add(self, rank: int, steps: list[int], times_ns: list[int], values: list[float], *, world_size: int,
            now_ns: int, emit: Emitted) -> None:
        """Record one rank's points; steps that became complete (or grew after a timeout) go to ``emit``."""
        n = len(steps)
        if len(times_ns) != n or len(values) != n:
            raise ValueError(f"{n} steps, {len(times_ns)} times and {len(values)} values")
        if not n:
            return
        index = self._index
        piece = index.get(steps[0])
        if piece is None:  # the first rank of a flush: usually all its steps are new
            if (not index or index.keys().isdisjoint(steps)) and len(set(steps)) == n:
                self._create(list(steps), list(times_ns), list(values), rank, now_ns)
                return
        elif piece.start == 0 and piece.stop == n == len(piece.steps) and piece.steps == steps:  # the next ranks
            self._apply(piece, rank, list(times_ns), list(values), world_size=world_size, emit=emit)
            return
        self._add_runs(rank, list(steps), list(times_ns), list(values), world_size=world_size, now_ns=now_ns,
                       emit=emit)

    def _add_runs(self, rank: int, steps: list[int], times_ns: list[int], values: list[float], *, world_size: int,
                  now_ns: int, emit: Emitted) -> None:
        """The general case, one run at a time: steps not held (new piece), or the part of a piece they follow."""
        index, n = self._index, len(steps)
        repeated = len(set(steps)) < n
        kept: list[int] = []  # where late steps still held were emitted: re-read at the end when steps repeat
        i = 0
        while i < n:
            piece = index.get(steps[i])
            if piece is None:
                end = self._fresh_run(steps, i)
                self._create(steps[i:end], times_ns[i:end], values[i:end], rank, now_ns)
                i = end
                continue
            at = piece.position(steps[i])
            size = _common(steps, i, piece.steps, at, piece.stop)
            piece = self._isolate(piece, at, at + size)
            piece.compact()
            before = len(emit)
            self._apply(piece, rank, times_ns[i:i + size], values[i:i + size], world_size=world_size, emit=emit)
            if repeated and len(emit) > before and piece.late and index.get(piece.steps[0]) is piece:
                kept.append(before)
            i += size
        for at in kept:  # a later point of the batch may have replaced a value: emit what the step holds at the end
            emit[at] = self._current(emit[at][0])

    def _fresh_run(self, steps: list[int], i: int) -> int:
        """Where the run from ``i`` of steps not held, none twice, ends (``steps[i]`` is not held)."""
        index, n = self._index, len(steps)
        seen = {steps[i]}
        end, size = i + 1, 16
        while end < n:
            chunk = steps[end:end + size]
            if index.keys().isdisjoint(chunk) and seen.isdisjoint(chunk) and len(set(chunk)) == len(chunk):
                seen.update(chunk)
                end, size = end + len(chunk), size * 2
                continue
            for step in chunk:
                if step in index or step in seen:
                    return end
                seen.add(step)
                end += 1
        return end

    def _create(self, steps: list[int], times: list[int], values: list[float], rank: int, now_ns: int) -> None:
        piece = Piece(steps, first_seen=now_ns, emitted=0, late=False, ranks=[rank], values=[values], times=[times])
        self._pending.append(piece)
        self._index.update(zip(steps, repeat(piece)))

    def _apply(self, piece: Piece, rank: int, times: list[int], values: list[float], *, world_size: int,
               emit: Emitted) -> None:
        """One rank's values for all the steps of a compact piece, in the piece's order."""
        piece.set_rank(rank, values)
        count = len(piece.ranks)
        if piece.late:
            if count > piece.emitted:
                piece.emitted = count
                emit.append((piece.steps, piece.values, piece.times))
                if count >= world_size:
                    self._drop(piece)
            return
        piece.add_times(times)
        if count >= world_size:
            self._drop(piece)
            emit.append((piece.steps, piece.values, piece.times))

    def _drop(self, piece: Piece) -> None:
        _Chain.unlink(piece)
        _consume(map(self._index.__delitem__, piece.window()))

    def _isolate(self, piece: Piece, start: int, stop: int) -> Piece:
        """The piece holding exactly ``piece.steps[start:stop]``, cut from ``piece``."""
        if stop < piece.stop:
            piece = self._split(piece, stop)[0]
        if start > piece.start:
            piece = self._split(piece, start)[1]
        return piece

    def _split(self, piece: Piece, at: int) -> tuple[Piece, Piece]:
        """Cut ``piece`` before ``steps[at]``; the smaller part becomes the new piece. Returns (first, second)."""
        chain = self._late if piece.late else self._pending
        if at - piece.start <= piece.stop - at:
            part = piece.cut(piece.start, at)
            piece.start = at
            chain.insert(piece.prev, part)
            pair = part, piece
        else:
            part = piece.cut(at, piece.stop)
            piece.stop = at
            chain.insert(piece, part)
            pair = piece, part
        piece.forget_wire()
        self._index.update(zip(part.window(), repeat(part)))
        return pair

    def _current(self, steps: list[int]) -> EmittedSteps:
        """``steps`` (late ones still held) emitted with the values they hold now."""
        rows, times = [], []
        for step in steps:
            piece = self._index[step]
            at = piece.position(step)
            rows.append([column[at] for column in piece.values])
            times.append(max(column[at] for column in piece.times))
        return steps, [list(column) for column in zip(*rows, strict=True)], [times]

    def expire(self, now_ns: int, timeout_ns: int, retention_ns: int, emit: Emitted) -> bool:
        """Emit steps that waited ``timeout_ns``; forget late ones after ``retention_ns``. True if changed."""
        changed = False
        for piece in self._late:
            if piece.first_seen + retention_ns > now_ns:
                break
            self._drop(piece)
            changed = True
        for piece in self._pending:
            if piece.first_seen + timeout_ns > now_ns:
                break
            _Chain.unlink(piece)
            piece.compact()
            piece.late, piece.emitted = True, len(piece.ranks)
            self._late.append(piece)
            emit.append((piece.steps, piece.values, piece.times))
            changed = True
        return changed

    # --- state ------------------------------------------------------------------------------------------

    def pieces_to_wire(self, *, late: bool) -> list[list[Any]]:
        """The pending (or late) pieces in arrival order, each as :meth:`Piece.to_wire`."""
        return [piece.to_wire() for piece in (self._late if late else self._pending)]

    def load_pieces(self, wires: Iterable[list[Any]], *, late: bool) -> None:
        """Append pieces written by :meth:`pieces_to_wire` (their value columns already read back into floats)."""
        chain, index = self._late if late else self._pending, self._index
        for first_seen, emitted, ranks, steps, times, values in wires:
            piece = Piece(steps, first_seen=first_seen, emitted=emitted, late=late, ranks=ranks, values=values,
                          times=times)
            chain.append(piece)
            index.update(zip(steps, repeat(piece)))

    def load_accs(self, accs: Mapping[int, StepAcc], *, late: bool) -> None:
        """Append steps held as ``{step: [first_seen_ns, time_ns, emitted, {rank: value}]}`` (arrival order): the
        representation before pieces. Consecutive steps with the same sighting, ``emitted`` and ranks share a piece."""
        chain, index = self._late if late else self._pending, self._index
        piece: Piece | None = None
        for step, (first_seen, time_ns, emitted, ranks) in accs.items():
            keys = list(ranks)
            if piece is None or piece.first_seen != first_seen or piece.emitted != emitted or piece.ranks != keys:
                piece = Piece([step], first_seen=first_seen, emitted=emitted, late=late, ranks=keys,
                              values=[[value] for value in ranks.values()], times=[[time_ns]])
                chain.append(piece)
            else:
                piece.steps.append(step)
                piece.times[0].append(time_ns)
                for column, value in zip(piece.values, ranks.values(), strict=True):
                    column.append(value)
                piece.stop += 1
            index[step] = piece


def _common(steps: list[int], i: int, held: list[int], at: int, stop: int) -> int:
    """How many of ``steps[i:]`` match ``held[at:stop]`` one for one (at least the first, which does): compared in
    slices of growing size, so that a run costs about its length."""
    limit = min(len(steps) - i, stop - at)
    done, size = 1, 16
    while done < limit:
        end = min(limit, done + size)
        if steps[i + done:i + end] != held[at + done:at + end]:
            while steps[i + done] == held[at + done]:
                done += 1
            return done
        done, size = end, size * 2
    return done
