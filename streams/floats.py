"""Exact float64 in JSON state: orjson writes NaN and ±Inf as null, so non-finite values travel as bits."""

from __future__ import annotations

import math
from typing import Any

from schemas.envelope import bits_to_float, float_to_bits


def float_to_wire(value: float) -> float | list[int]:
    """A finite float as itself, a non-finite one as ``[bits]``."""
    return value if math.isfinite(value) else [float_to_bits(value)]


def float_from_wire(wire: Any) -> float:
    return bits_to_float(wire[0]) if isinstance(wire, list) else float(wire)


def floats_to_wire(values: list[float]) -> tuple[list[float | None], list[list[int]]]:
    """A column with ``None`` at non-finite positions, and ``[index, bits]`` for each of them."""
    if math.isfinite(sum(values)):
        return list(values), []
    column: list[float | None] = list(values)
    nonfinite = []
    for index, value in enumerate(values):
        if not math.isfinite(value):
            column[index] = None
            nonfinite.append([index, float_to_bits(value)])
    return column, nonfinite


def floats_from_wire(column: list[Any], nonfinite: list[list[int]]) -> list[float]:
    values = [math.nan if v is None else float(v) for v in column]
    for index, bits in nonfinite:
        values[index] = bits_to_float(bits)
    return values
