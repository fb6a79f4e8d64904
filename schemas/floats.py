"""The one exact-float64 codec of every JSON trackstream writes: envelopes, processed records, state, the HTTP API.

JSON (and orjson) cannot carry NaN or ±Inf, and trackstream treats them as data, so every float64 must come back
bit for bit (NaN payloads and -0.0 included). Finite floats travel as JSON numbers, which orjson writes as the
shortest text that round-trips exactly. Non-finite floats travel as their IEEE-754 bit pattern (an unsigned
64-bit integer) in one of two forms:

- a **scalar** becomes ``{"$f64": bits}`` (:func:`exact_float` / :func:`inexact_float`);
- a **column** keeps ``null`` at each non-finite position, plus a ``[[index, bits], ...]`` list
  (:func:`split_nonfinite` / :func:`join_nonfinite`): the envelope's ``values`` / ``nonfinite`` pair.
"""

from __future__ import annotations

import math
import struct
from typing import Any, Final

F64_MARKER: Final = "$f64"
_DOUBLE: Final = struct.Struct("<d")
_BITS: Final = struct.Struct("<Q")


def float_to_bits(value: float) -> int:
    """The IEEE-754 bit pattern of a float64, as an unsigned 64-bit integer."""
    bits: int = _BITS.unpack(_DOUBLE.pack(value))[0]
    return bits


def bits_to_float(bits: int) -> float:
    """Inverse of :func:`float_to_bits`; raises :class:`struct.error` for bits outside 0..2**64-1."""
    value: float = _DOUBLE.unpack(_BITS.pack(bits))[0]
    return value


def exact_float(value: Any) -> Any:
    """JSON-ready ``value``: a non-finite float becomes ``{"$f64": bits}``; anything else passes through."""
    if isinstance(value, float) and not math.isfinite(value):
        return {F64_MARKER: float_to_bits(value)}
    return value


def inexact_float(value: Any) -> Any:
    """Inverse of :func:`exact_float`: ``{"$f64": bits}`` becomes the float; anything else passes through."""
    if isinstance(value, dict) and len(value) == 1 and F64_MARKER in value:
        return bits_to_float(value[F64_MARKER])
    return value


def split_nonfinite(values: list[float]) -> tuple[list[float | None], list[list[int]]]:
    """A JSON-ready column (``None`` at non-finite positions) and ``[index, bits]`` for each of them."""
    # sum() is finite only if every term is: one C-speed pass decides the common case.
    if math.isfinite(sum(values)):
        return list(values), []
    column: list[float | None] = list(values)
    nonfinite: list[list[int]] = []
    for index, value in enumerate(values):
        if not math.isfinite(value):
            column[index] = None
            nonfinite.append([index, float_to_bits(value)])
    return column, nonfinite


def join_nonfinite(column: list[Any], nonfinite: Any) -> list[float]:
    """Inverse of :func:`split_nonfinite` (a ``None`` without an entry reads as NaN)."""
    values = [math.nan if v is None else float(v) for v in column]
    for index, bits in nonfinite:
        values[index] = bits_to_float(bits)
    return values
