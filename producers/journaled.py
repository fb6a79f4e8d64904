"""The buffer of a ``durability="spool"`` handle: every log call also writes what it logs to the handle's journal.

The journal (:class:`~trackstream.producers.journal_writer.Journal`, mmap'd files in the producer's spool directory) is
written in the same call and under the same lock as the in-memory columns, so a point is in the page cache when its
call returns, and a drain swaps the journal file exactly where it swaps the columns. Delivery (the flusher):

1. :meth:`JournaledBuffer.drain_journaled` takes the columns and swaps the journal: the file that held them becomes
   ``drained``, with the base the flusher passes (the producer's next seq, the entity's counters, the spool's end);
2. the flusher builds the envelopes and appends them to the spool;
3. :meth:`JournaledBuffer.settle_journal` records the new base in the active file, then frees and zeroes the drained
   file for the next swap. If the spool write failed, the drained file is kept for recovery instead.

A SIGKILL anywhere in between leaves, per handle, at most one drained file (its envelopes may be in the spool, all,
some or none) and the active file; :func:`~trackstream.producers.journal.recover_journals` delivers exactly what
is missing. The fast paths (``log_metric``, ``log_metrics``) and :meth:`~JournaledBuffer.attach_journal` are defined
in :mod:`.buffer` (see the note there); the slow paths mirror each change of the columns in the journal.

A journal file that must grow while the disk is full makes the log call raise :class:`SpoolError`. The fast paths
then leave the buffer as it was; a slow path (new keys, lists, single values, history) may have applied the call in
memory: it is delivered, but a call that raised has no durability promise.
"""

from __future__ import annotations

from typing import Any

from trackstream.producers.buffer import (
    Drained,
    MetricBuffer,
    _Series,
    journaled_attach,
    journaled_log_metric,
    journaled_log_metrics,
)
from trackstream.producers.errors import SpoolError
from trackstream.producers.journal_writer import NO_ROW, Base, Journal, JournalFile, Shape
from trackstream.schemas import Event


class JournaledBuffer(MetricBuffer):
    """A :class:`MetricBuffer` whose log calls are journaled (the base of spool-mode runs and models)."""

    _journal: Journal | None = None
    _jw: Journal  # the same journal, for the fast paths (set by attach_journal)

    log_metric = journaled_log_metric
    log_metrics = journaled_log_metrics
    attach_journal = journaled_attach

    @property
    def journal(self) -> Journal | None:
        """The journal, once :meth:`attach_journal` gave one (the flusher does, at registration)."""
        return self._journal

    def find_shape(self, journal: Journal, keys: tuple[str, ...], now: int) -> Shape:
        """The shape of a ``log_metrics`` call's keys, declared if new (lock held); it becomes ``journal.last``.

        Past the cap of shapes, the call just made is journaled key by key instead and ``NO_ROW`` is returned.
        """
        shape = journal.shapes.get(keys) or journal.write_shape(keys, [self._series[key].key_id for key in keys])
        if shape is not None:
            journal.last = shape
            return shape
        for key in keys:
            series = self._series[key]
            journal.write_point(series.key_id, series.steps[-1], now, series.values[-1])
        return NO_ROW

    def room_for_row(self, journal: Journal, size: int, metrics: dict[str, Any]) -> int:
        """Grow the journal for a row (lock held); if it cannot grow, undo the call's appends and raise SpoolError."""
        try:
            return journal.make_room(size)
        except SpoolError:
            self._rollback(metrics, "")  # no key is "": every append of the call is undone
            raise

    # Slow paths, lock held: every change of the columns is mirrored in the journal.

    def _new_series(self, key: str) -> _Series:
        series = super()._new_series(key)
        if self._journal is not None:
            self._journal.write_key(series.key_id, key)
        return series

    def _append(
        self, key: str, number: float, many: list[float] | None, at: int | None, now: int, *, overwrite: bool,
    ) -> None:
        super()._append(key, number, many, at, now, overwrite=overwrite)
        count, series = 1 if many is None else len(many), self._series[key]
        if self._journal is not None and count:
            self._journal.write_points(series.key_id, series.next_step, series.steps[-count:],
                                       series.times[-count:], series.values[-count:])

    def _extend(self, key: str, series: _Series, steps: list[int], times: list[int], values: list[float]) -> None:
        super()._extend(key, series, steps, times, values)
        if self._journal is not None:
            self._journal.write_points(series.key_id, series.next_step, steps, times, values)

    def _put_single(self, key: str, item: tuple[int, int, float]) -> None:
        super()._put_single(key, item)
        if self._journal is not None:
            self._journal.write_single(key, *item)

    def _overwrite(self, key: str, now: int) -> None:
        super()._overwrite(key, now)
        if self._journal is not None:
            self._journal.write_overwrite(key, now)

    def _push_event(self, event: Event) -> None:
        super()._push_event(event)
        if self._journal is not None:
            self._journal.write_event(event)

    # Delivery (flusher thread).

    def drain_journaled(self, base: Base | None) -> tuple[Drained, JournalFile | None]:
        """Swap the columns out, and the journal with them; ``base``: where the producer stands now.

        Returns the columns and the journal file that holds them (None when nothing was journaled since the
        last swap), for :meth:`settle_journal` once the batch is in the spool or could not be written.
        """
        out, journal_file = Drained(), None
        with self._mutex:
            journal = self._journal
            if journal is not None and journal.dirty:  # first: if no file can be had, nothing is taken
                journal_file = journal.swap([s.next_step for s in self._series.values()], base)
            elif journal is not None and base is not None:
                journal.set_base(base)
            self._take(out)
        self.drained_event.set()
        return out, journal_file

    def settle_journal(self, journal_file: JournalFile, base: Base | None) -> None:
        """``journal_file``'s batch is in the spool, and the producer now stands at ``base``.

        With ``base`` None the batch could not be written: the file is kept (``drained``) for
        :func:`~trackstream.producers.journal.recover_journals`.
        """
        journal = self._journal
        if journal is None:
            return
        if base is None:
            journal.strand(journal_file)
            return
        with self._mutex:
            journal.set_base(base)  # first: once the drained file is free, the active one is where recovery starts
        journal.release(journal_file)

    def retire_journal(self) -> None:
        """After the last drain of a closed handle was settled: delete its journal files."""
        if self._journal is not None:
            self._journal.retire()

    def drain(self) -> Drained:
        """Swap everything out and count it as delivered (the flusher uses :meth:`drain_journaled`)."""
        out, journal_file = self.drain_journaled(None)
        if journal_file is not None and self._journal is not None:
            self._journal.release(journal_file)
        return out

    def reset_after_fork(self) -> None:
        """As :meth:`MetricBuffer.reset_after_fork`; the parent's journal stays the parent's (the child's flusher
        attaches a new one in the child's producer directory when it registers the handle)."""
        if self._journal is not None:
            self._journal.detach()
            self._journal = None
            del self._jw
        super().reset_after_fork()
