"""The caller-side buffer of one handle: validate, stamp time, append to per-metric columns. No I/O.

This is the hot path of a training loop. A log call takes the handle's lock for a few appends and never
waits for the network: the background flusher swaps the columns out (:meth:`MetricBuffer.drain`) and does
all encoding and delivery in its own thread. Validation happens at the call (docs/metrics.md): a bad metric name
or a value that is not a number raises :class:`ValueError` naming the key, and a call that raises leaves
the buffer exactly as it was.
"""

from __future__ import annotations

import math
import numbers
import operator
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from trackstream.producers.errors import HandleClosedError
from trackstream.schemas import Event, metric_name_problem
from trackstream.schemas.limits import INT64_MAX as _INT64_MAX
from trackstream.schemas.limits import INT64_MIN as _INT64_MIN

_time_ns: Final = time.time_ns
_EXACT: Final = 2**53
POINT_BYTES: Final = 100  # what one buffered point costs in Python lists (float, two ints, three slots)
POINT_CAP: Final = 32 * 1024 * 1024 // POINT_BYTES


class _Series:
    """Buffered points of one series metric, plus the step counter of (entity, key) in this producer."""

    __slots__ = ("next_step", "prev_step", "steps", "times", "values")

    def __init__(self) -> None:
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


def check_value(key: str, value: Any) -> float:
    """A single number as float; bool, str, None and containers raise ValueError naming ``key``."""
    if type(value) is float:
        return value
    if isinstance(value, (bool, str, bytes)) or value is None:
        raise ValueError(f"metric {key!r}: value must be a number, got {type(value).__name__}")
    if isinstance(value, numbers.Real):
        try:
            return float(value)
        except OverflowError:
            raise ValueError(f"metric {key!r}: {value!r} is out of float64 range") from None
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 0) == 0 and getattr(value, "dtype", None) is not None:
        return check_value(key, item())
    raise ValueError(f"metric {key!r}: value must be a number, got {type(value).__name__}")


def check_values(key: str, value: Any) -> list[float] | None:
    """``value`` as a list of floats when it is a list-like of numbers, None when it is a single number."""
    if isinstance(value, (list, tuple)):
        items: Any = value
    elif hasattr(value, "tolist") and getattr(value, "ndim", 0) >= 1:
        items = value.tolist()
    else:
        return None
    out: list[float] = []
    for element in items:
        if isinstance(element, (list, tuple)) or getattr(element, "ndim", 0) >= 1:
            raise ValueError(f"metric {key!r}: a list value must hold numbers, not nested lists")
        out.append(check_value(key, element))
    return out


def check_step(step: Any) -> int:
    """``step`` as an int; a bool, a non-integer (floats included) or a value outside int64 raises ValueError."""
    if isinstance(step, bool):
        raise ValueError("step must be an integer, got bool")
    try:
        value = operator.index(step)
    except TypeError:
        raise ValueError(f"step must be an integer, got {type(step).__name__}") from None
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"step {value} is outside the int64 range")
    return value


def check_time(time_ns: Any) -> int:
    """``time_ns`` (ns since the epoch) as an int; a bool, non-integer or value outside 0..2**63-1 raises ValueError."""
    if isinstance(time_ns, bool):
        raise ValueError("time_ns must be an integer, got bool")
    try:
        value = operator.index(time_ns)
    except TypeError:
        raise ValueError(f"time_ns must be an integer, got {type(time_ns).__name__}") from None
    if not 0 <= value <= _INT64_MAX:
        raise ValueError(f"time_ns {value} is outside 0..2**63-1")
    return value


def check_key(key: Any) -> str:
    """``key`` as a metric name; one that breaks the name rule (docs/metrics.md) raises ValueError naming it."""
    problem = metric_name_problem(key)
    if problem is not None:
        raise ValueError(f"metric {key!r}: {problem}")
    return str(key)


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
            series.steps.extend(checked_steps)
            series.times.extend(checked_times)
            series.values.extend(checked_values)
            series.next_step = max(series.next_step, max(checked_steps) + 1)
        if self.buffered_points() > self.point_cap:
            self._full()

    def _new_series(self, key: str) -> _Series:
        series = self._series[key] = _Series()
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
        prepared = [(check_key(k), *_prepare(k, v)) for k, v in metrics.items()]
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
        number, many = _prepare(key, value)
        if single_value and many is not None:
            raise ValueError(f"metric {key!r}: single_value=True takes one number, not a list")
        now = _time_ns() if time_ns is None else check_time(time_ns)
        with self._lock:
            if single_value:
                if overwrite:
                    self._overwrite(key, now)
                self._singles[key] = (0 if at is None else at, now, number)
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
                self._events.append(last_event)
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


def _prepare(key: str, value: Any) -> tuple[float, list[float] | None]:
    many = check_values(key, value)
    if many is not None:
        return math.nan, many
    return check_value(key, value), None
