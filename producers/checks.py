"""Validation of log-call arguments: each check returns the value as stored or raises ValueError naming the key.

Used by the slow paths of :class:`~trackstream.producers.buffer.MetricBuffer` (docs/metrics.md has the rules).
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any, Final

from trackstream.schemas import metric_name_problem
from trackstream.schemas.limits import INT64_MAX as _INT64_MAX
from trackstream.schemas.limits import INT64_MIN as _INT64_MIN

_EXACT: Final = 2**53


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
    """``step`` as an int. A whole-number float (``4096.0``, ``numpy.float64(50.0)``: what Lightning and other
    frameworks hand their loggers) is that int; a fractional or non-finite float, a bool, a non-number or a value
    outside int64 raises ValueError."""
    if isinstance(step, numbers.Real) and not isinstance(step, numbers.Integral):
        value = float(step)
        if not value.is_integer():
            raise ValueError(f"step must be a whole number, got {step!r}: steps count training iterations")
        step = int(value)
    return _check_int("step", step, _INT64_MIN, "the int64 range")


def check_time(time_ns: Any) -> int:
    """``time_ns`` (ns since the epoch) as an int; a bool, non-integer or value outside 0..2**63-1 raises ValueError."""
    return _check_int("time_ns", time_ns, 0, "0..2**63-1")


def _check_int(name: str, raw: Any, low: int, bounds: str) -> int:
    """``raw`` as an int in ``low..2**63-1``; ValueError naming ``name`` and ``bounds`` otherwise."""
    if isinstance(raw, bool):
        raise ValueError(f"{name} must be an integer, got bool")
    try:
        value = operator.index(raw)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {type(raw).__name__}") from None
    if not low <= value <= _INT64_MAX:
        raise ValueError(f"{name} {value} is outside {bounds}")
    return value


def check_key(key: Any) -> str:
    """``key`` as a metric name; one that breaks the name rule (docs/metrics.md) raises ValueError naming it."""
    problem = metric_name_problem(key)
    if problem is not None:
        raise ValueError(f"metric {key!r}: {problem}")
    return str(key)


def prepare(key: str, value: Any) -> tuple[float, list[float] | None]:
    many = check_values(key, value)
    if many is not None:
        return math.nan, many
    return check_value(key, value), None
