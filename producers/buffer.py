"""The caller-side buffer of one handle: validate, stamp time, append to per-metric columns. No I/O.

This is the hot path of a training loop. A log call takes the handle's lock for a few appends and never
waits for the network: the background flusher swaps the columns out (:meth:`MetricBuffer.drain`) and does
all encoding and delivery in its own thread. Validation happens at the call (docs/metrics.md): a bad metric name
or a value that is not a number raises :class:`ValueError` naming the key, and a call that raises leaves
the buffer exactly as it was.

What a SIGKILL of the process loses depends on ``durability``:

- ``"memory"`` (this class): the points logged since the flusher's last drain, i.e. at most ``linger_ms``
  (default 200 ms; less once ``flush_points`` points are buffered) of logging, plus, when sending straight to
  Kafka, the envelopes Kafka has not acknowledged yet (at most a quarter of ``max_buffer_bytes``: past that they go
  to the spool). Lost at the end of a run, they leave no hole between envelopes that arrived, so the stream side
  does not count them in ``lost_points``.
- ``"spool"`` (:class:`~trackstream.producers.journaled.JournaledBuffer`): nothing. Each call is journaled to an
  mmap'd file before it returns, so its points are in the page cache (a machine crash is another matter: see
  ``fsync``), and :func:`~trackstream.producers.journal.recover_journals` delivers them after the process died.
  The caller pays one ``struct.pack_into`` per call for it (``bench/producer.py`` measures both).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from struct import error as StructError
from typing import TYPE_CHECKING, Any, Final

from trackstream.producers.checks import check_key, check_step, check_time, check_value, check_values, prepare
from trackstream.producers.errors import HandleClosedError
from trackstream.producers.journal_writer import NO_ROW as _NO_ROW
from trackstream.producers.journal_writer import POINT, POINT_RECORD, ROW_AUTO, ROW_STEP
from trackstream.schemas import Event
from trackstream.schemas.limits import INT64_MAX as _INT64_MAX
from trackstream.schemas.limits import INT64_MIN as _INT64_MIN

if TYPE_CHECKING:
    from trackstream.producers.journal_writer import Journal
    from trackstream.producers.journaled import JournaledBuffer

__all__ = ["POINT_BYTES", "POINT_CAP", "Drained", "MetricBuffer", "check_key", "check_step", "check_time",
           "check_value", "check_values"]

_time_ns: Final = time.time_ns
_EXACT: Final = 2**53
POINT_BYTES: Final = 100  # what one buffered point costs in Python lists (float, two ints, three slots)
POINT_CAP: Final = 32 * 1024 * 1024 // POINT_BYTES


class _Series:
    """Buffered points of one series metric, plus the step counter of (entity, key) in this producer."""

    __slots__ = ("key_id", "next_step", "prev_step", "steps", "times", "values")

    def __init__(self, key_id: int) -> None:
        self.key_id = key_id  # creation order in the handle: the series' id in the spool-mode journal
        self.steps: list[int] = []
        self.times: list[int] = []
        self.values: list[float] = []
        self.next_step = 0
        self.prev_step = 0


@dataclass(slots=True)
class Drained:
    """What the flusher took out of one buffer: events first, then series and single values."""

    events: list[Event] = field(default_factory=list)
    series: dict[str, tuple[list[int], list[int], list[float]]] = field(default_factory=dict)
    singles: dict[str, tuple[int, int, float]] = field(default_factory=dict)

    def point_count(self) -> int:
        """Number of points taken: the lengths of all series value columns plus one per single value."""
        return sum(len(cols[2]) for cols in self.series.values()) + len(self.singles)

    def __bool__(self) -> bool:
        """True when anything was taken (events, series or single values)."""
        return bool(self.events or self.series or self.singles)


class _ClosedLock:
    """Stands in for the lock of a closed handle: entering it raises, so the hot path needs no check."""

    def __init__(self, what: str) -> None:
        self._what = what

    def __enter__(self) -> None:
        raise HandleClosedError(f"{self._what} is closed: nothing more can be logged to it")

    def __exit__(self, *exc: object) -> None:
        return None


class MetricBuffer:
    """Per-handle, per-metric column buffers behind one short lock (the base of Run and Model)."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._mutex = threading.Lock()
        self._lock: Any = self._mutex  # the gate of log calls; a _ClosedLock once the handle is closed
        self._series: dict[str, _Series] = {}
        self._singles: dict[str, tuple[int, int, float]] = {}
        self._events: list[Event] = []
        self.point_cap = POINT_CAP
        self._series_cap = POINT_CAP
        self.on_full: Callable[[MetricBuffer], None] | None = None
        self.drained_event = threading.Event()

    def log_metric(
        self, key: str, value: Any, *, step: int | None = None, single_value: bool = False,
        overwrite: bool = False, time_ns: int | None = None,
    ) -> None:
        """Log one number (or a list of numbers at consecutive steps) for ``key``; see docs/metrics.md.

        ``time_ns`` replaces the call's timestamp (for importing history); by default it is now.
        """
        plain = not single_value and not overwrite and time_ns is None
        if type(value) is float and plain and (step is None or type(step) is int):
            now = _time_ns()
            with self._lock:
                series = self._series.get(key)
                if series is not None:
                    at = series.next_step if step is None else step
                    if _INT64_MIN <= at <= _INT64_MAX:
                        series.steps.append(at)
                        series.times.append(now)
                        series.values.append(value)
                        series.next_step = at + 1
                    else:
                        series = None  # out of range: the slow path raises with the reason
            if series is not None:
                if len(series.values) > self._series_cap:
                    self._full()
                return
        self._log_slow(key, value, step, single_value, overwrite, time_ns=time_ns)

    def log_metrics(
        self, metrics: dict[str, Any], *, step: int | None = None, overwrite: bool = False,
    ) -> None:
        """Log several metrics at once (same step when given); a bad entry raises and logs nothing."""
        if overwrite or type(metrics) is not dict or (
                step is not None and (type(step) is not int or not _INT64_MIN <= step <= _INT64_MAX)):
            self._log_many_slow(metrics, step, overwrite)
            return
        now = _time_ns()
        complete = True
        series: _Series | None = None
        with self._lock:
            table = self._series
            for key, value in metrics.items():
                series = table.get(key)
                if series is None or type(value) is not float:
                    if series is None or type(value) is not int or not -_EXACT < value < _EXACT:
                        self._rollback(metrics, key)
                        complete = False
                        break
                    value = float(value)  # noqa: PLW2901 - an exact int, converted in place
                at = series.next_step
                if at > _INT64_MAX:
                    self._rollback(metrics, key)
                    complete = False
                    break
                series.prev_step = at
                if step is not None:
                    at = step
                series.steps.append(at)
                series.times.append(now)
                series.values.append(value)
                series.next_step = at + 1
        if complete:
            if series is not None and len(series.values) > self._series_cap:
                self._full()
            return
        self._log_many_slow(metrics, step, overwrite)

    def _full(self) -> None:
        """Backpressure: past ``point_cap`` buffered points, wait (bounded) for the flusher to drain."""
        hook = self.on_full
        if hook is not None:
            hook(self)

    def log_history(
        self, key: str, steps: Sequence[int], values: Sequence[Any], *, times_ns: Sequence[int],
    ) -> None:
        """Append points of series ``key`` with their own steps and times (importing history).

        Validated like a log call; auto-increment continues after the highest step given.
        """
        name = check_key(key)
        if not len(steps) == len(values) == len(times_ns):
            raise ValueError(f"metric {name!r}: steps, values and times_ns must have the same length")
        checked_steps = [check_step(step) for step in steps]
        checked_values = [check_value(name, value) for value in values]
        checked_times = [check_time(t) for t in times_ns]
        if not checked_values:
            return
        with self._lock:
            series = self._series.get(name)
            if series is None:
                series = self._new_series(name)
            self._extend(name, series, checked_steps, checked_times, checked_values)
        if self.buffered_points() > self.point_cap:
            self._full()

    def _extend(self, key: str, series: _Series, steps: list[int], times: list[int], values: list[float]) -> None:
        """Append points with their own steps and times (``log_history``); lock held."""
        series.steps.extend(steps)
        series.times.extend(times)
        series.values.extend(values)
        series.next_step = max(series.next_step, max(steps) + 1)

    def _new_series(self, key: str) -> _Series:
        series = self._series[key] = _Series(len(self._series))
        self._series_cap = max(1024, self.point_cap // len(self._series))
        return series

    def _rollback(self, metrics: dict[str, Any], stop_key: str) -> None:
        """Undo the fast-path appends of one call, up to (not including) ``stop_key``. Lock held."""
        for key in metrics:
            if key == stop_key:
                return
            series = self._series[key]
            series.steps.pop()
            series.times.pop()
            series.values.pop()
            series.next_step = series.prev_step

    def _log_many_slow(self, metrics: Any, step: Any, overwrite: bool) -> None:
        if not isinstance(metrics, dict):
            kind = type(metrics).__name__
            raise ValueError(f"metrics must be a dict of name -> number or list, got {kind}")
        at = None if step is None else check_step(step)
        prepared = [(check_key(k), *prepare(k, v)) for k, v in metrics.items()]
        now = _time_ns()
        with self._lock:
            for key, _, numbers_ in prepared:  # all or nothing: no append before every key has room
                self._check_room(key, 1 if numbers_ is None else len(numbers_), at, overwrite=overwrite)
            for key, number, numbers_ in prepared:
                self._append(key, number, numbers_, at, now, overwrite=overwrite)
        if self.buffered_points() > self.point_cap:
            self._full()

    def _log_slow(
        self, key: Any, value: Any, step: Any, single_value: bool, overwrite: bool, *, time_ns: Any = None,
    ) -> None:
        key = check_key(key)
        at = None if step is None else check_step(step)
        number, many = prepare(key, value)
        if single_value and many is not None:
            raise ValueError(f"metric {key!r}: single_value=True takes one number, not a list")
        now = _time_ns() if time_ns is None else check_time(time_ns)
        with self._lock:
            if single_value:
                if overwrite:
                    self._overwrite(key, now)
                self._put_single(key, (0 if at is None else at, now, number))
            else:
                self._check_room(key, 1 if many is None else len(many), at, overwrite=overwrite)
                self._append(key, number, many, at, now, overwrite=overwrite)

    def _check_room(self, key: str, count: int, at: int | None, *, overwrite: bool) -> None:
        """Raise ValueError when ``count`` points of ``key`` from step ``at`` (else the next one) pass int64."""
        series = None if overwrite else self._series.get(key)
        first = at if at is not None else (series.next_step if series is not None else 0)
        if first + max(count, 1) - 1 > _INT64_MAX:
            raise ValueError(f"metric {key!r}: step {first + max(count, 1) - 1} would pass the int64 range")

    def _append(
        self, key: str, number: float, many: list[float] | None, at: int | None, now: int, *, overwrite: bool,
    ) -> None:
        """Append to ``key``'s series (room checked by :meth:`_check_room`); lock held."""
        if overwrite:
            self._overwrite(key, now)
        series = self._series.get(key)
        if series is None:
            series = self._new_series(key)
        first = series.next_step if at is None else at
        if many is None:
            series.steps.append(first)
            series.times.append(now)
            series.values.append(number)
            series.next_step = first + 1
            return
        count = len(many)
        series.steps.extend(range(first, first + count))
        series.times.extend([now] * count)
        series.values.extend(many)
        series.next_step = first + count if count else series.next_step

    def _put_single(self, key: str, item: tuple[int, int, float]) -> None:
        """Set the single value of ``key`` (step, time, value); lock held."""
        self._singles[key] = item

    def _overwrite(self, key: str, now: int) -> None:
        """Drop what is buffered for ``key``, queue the overwrite marker, restart its steps at 0."""
        series = self._series.get(key)
        if series is not None:
            series.steps, series.times, series.values = [], [], []
            series.next_step = 0
        self._singles.pop(key, None)
        self._events.append(Event("overwrite", now, {"metric": key}))

    def add_event(self, event: Event) -> None:
        """Queue a lifecycle event for the next flush; raises HandleClosedError once the buffer is closed."""
        with self._lock:
            self._push_event(event)

    def _push_event(self, event: Event) -> None:
        self._events.append(event)

    def buffered_points(self) -> int:
        """Approximate number of buffered points (read without the lock; the flusher's trigger)."""
        return sum([len(s.values) for s in list(self._series.values())]) + len(self._singles)

    def drain(self) -> Drained:
        """Swap everything buffered out (called by the flusher, or by fork/exit handling)."""
        out = Drained()
        with self._mutex:
            self._take(out)
        self.drained_event.set()
        return out

    def _take(self, out: Drained) -> None:
        out.events, self._events = self._events, []
        out.singles, self._singles = self._singles, {}
        for key, series in self._series.items():
            if series.values:
                out.series[key] = (series.steps, series.times, series.values)
                series.steps, series.times, series.values = [], [], []

    @property
    def closed(self) -> bool:
        """True once :meth:`close_buffer` (or a closed state kept across a fork) makes log calls raise."""
        return self._lock is not self._mutex

    def close_buffer(self, last_event: Event | None = None) -> None:
        """Queue ``last_event`` and make every further log call raise :class:`HandleClosedError`.

        What is still buffered stays there for the flusher's last :meth:`drain`.
        """
        with self._mutex:
            if last_event is not None:
                self._push_event(last_event)
            self._lock = _ClosedLock(self._what)

    def reset_after_fork(self) -> None:
        """In a forked child: fresh locks, empty buffers (the parent delivers what it had)."""
        closed = self.closed
        self.drained_event = threading.Event()
        self._mutex = threading.Lock()
        self._lock = _ClosedLock(self._what) if closed else self._mutex
        self._events = []
        self._singles = {}
        for series in self._series.values():
            series.steps, series.times, series.values = [], [], []


# The fast paths and the attachment of JournaledBuffer (producers/journaled.py), the spool-mode buffer. They repeat
# MetricBuffer's with the journal write added, so that memory mode pays nothing; they are defined in this module
# because the SIGTERM handler (runtime.py) recognises a log call holding a handle's lock by this file.


def journaled_log_metric(
    self: JournaledBuffer, key: str, value: Any, *, step: int | None = None, single_value: bool = False,
    overwrite: bool = False, time_ns: int | None = None,
) -> None:
    """``JournaledBuffer.log_metric``: :meth:`MetricBuffer.log_metric`, with the point journaled."""
    plain = not single_value and not overwrite and time_ns is None
    if type(value) is float and plain and (step is None or type(step) is int):
        now = _time_ns()
        with self._lock:
            series = self._series.get(key)
            if series is not None:
                at = series.next_step if step is None else step
                if _INT64_MIN <= at <= _INT64_MAX:
                    journal = self._jw
                    off, mm = journal.off, journal.mm
                    try:
                        _pack_point(mm, off, series.key_id, at, now, value)
                    except StructError:  # the file is full: grow it (pack_into checks the bounds)
                        off, mm = journal.make_room(32), journal.mm
                        _pack_point(mm, off, series.key_id, at, now, value)
                    mm[off] = POINT
                    journal.off = off + 32
                    series.steps.append(at)
                    series.times.append(now)
                    series.values.append(value)
                    series.next_step = at + 1
                else:
                    series = None
        if series is not None:
            if len(series.values) > self._series_cap:
                self._full()
            return
    self._log_slow(key, value, step, single_value, overwrite, time_ns=time_ns)


def journaled_log_metrics(
    self: JournaledBuffer, metrics: dict[str, Any], *, step: int | None = None, overwrite: bool = False,
) -> None:
    """``JournaledBuffer.log_metrics``: :meth:`MetricBuffer.log_metrics`, with one row record per call."""
    if overwrite or type(metrics) is not dict or (
            step is not None and (type(step) is not int or not _INT64_MIN <= step <= _INT64_MAX)):
        self._log_many_slow(metrics, step, overwrite)
        return
    now = _time_ns()
    complete = True
    series: _Series | None = None
    with self._lock:
        table = self._series
        for key, value in metrics.items():
            series = table.get(key)
            if series is None or type(value) is not float:
                if series is None or type(value) is not int or not -_EXACT < value < _EXACT:
                    self._rollback(metrics, key)
                    complete = False
                    break
                value = float(value)  # noqa: PLW2901 - an exact int, converted in place
            at = series.next_step
            if at > _INT64_MAX:
                self._rollback(metrics, key)
                complete = False
                break
            series.prev_step = at
            if step is not None:
                at = step
            series.steps.append(at)
            series.times.append(now)
            series.values.append(value)
            series.next_step = at + 1
        if complete and series is not None:
            journal = self._jw
            keys = tuple(metrics)
            shape = journal.last
            if shape[0] != keys:
                shape = self.find_shape(journal, keys, now)
            if shape is not _NO_ROW:
                off, mm = journal.off, journal.mm
                try:
                    shape[2](mm, off, shape[1], step or 0, now, *metrics.values())
                except StructError:  # the file is full: grow it (pack_into checks the bounds)
                    off, mm = self.room_for_row(journal, shape[3], metrics), journal.mm
                    shape[2](mm, off, shape[1], step or 0, now, *metrics.values())
                mm[off] = ROW_AUTO if step is None else ROW_STEP
                journal.off = off + shape[3]
    if complete:
        if series is not None and len(series.values) > self._series_cap:
            self._full()
        return
    self._log_many_slow(metrics, step, overwrite)


def journaled_attach(self: JournaledBuffer, journal: Journal) -> None:
    """``JournaledBuffer.attach_journal``: journal into ``journal`` (new) from now on, first what is buffered now."""
    with self._mutex:
        journal.write_state(self._series, self._singles, self._events)
        self._journal = self._jw = journal


_pack_point: Final = POINT_RECORD.pack_into
