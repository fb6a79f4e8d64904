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


def prepare(key: str, value: Any) -> tuple[float, list[float] | None]:
    many = check_values(key, value)
    if many is not None:
        return math.nan, many
    return check_value(key, value), None
