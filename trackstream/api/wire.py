"""The JSON form of the query API's arguments and results: floats exact, entity references tagged.

A non-finite float travels as its bit pattern (``{"$f64": bits}``, :mod:`trackstream.schemas.floats`), so NaN and
±Inf come back bit for bit; an :class:`~trackstream.schemas.EntityRef` travels as ``{"$entity": [project, type,
id]}``. Light: the standard library and trackstream.schemas only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

from trackstream.schemas import EntityRef
from trackstream.schemas.floats import F64_MARKER, exact_float, inexact_float

ENTITY_MARKER: Final = "$entity"
_PLAIN: Final = frozenset({str, int, bool, type(None)})


def to_wire(value: Any) -> Any:
    """JSON-ready form of ``value`` with exact floats and entity references.

    Shares what needs no change: a container with no non-finite float or entity reference inside is returned
    as it is (not copied), so a large result of plain values costs one walk. A tuple stays a tuple (orjson and
    ``json`` write it as an array).
    """
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is float:
        return value if value - value == 0.0 else exact_float(value)  # x - x is NaN for NaN and ±inf
    if kind is dict:
        return _wire_items(value, value.items(), dict)
    if kind is list or kind is tuple:
        return _wire_items(value, enumerate(value), list)
    if isinstance(value, EntityRef):
        return {ENTITY_MARKER: [value.project, value.type, value.id]}
    if isinstance(value, float):
        return exact_float(float(value))
    if isinstance(value, dict):
        return to_wire(dict(value))
    if isinstance(value, list | tuple):
        return to_wire(list(value))
    return value


def _wire_items(value: Any, items: Iterable[tuple[Any, Any]], copy: Callable[[Any], Any]) -> Any:
    """``value`` (a dict or a sequence, whose ``items`` are its (key or index, item) pairs) with its items in wire
    form: itself when none changes, else a ``copy`` with the changed ones replaced."""
    changed = None
    for key, item in items:
        if type(item) in _PLAIN:
            continue
        wired = to_wire(item)
        if wired is not item:
            if changed is None:
                changed = copy(value)
            changed[key] = wired
    return value if changed is None else changed


def from_wire(value: Any) -> Any:
    """Inverse of :func:`to_wire` (tuples come back as lists)."""
    if isinstance(value, dict):
        if len(value) == 1 and F64_MARKER in value:
            return inexact_float(value)
        if len(value) == 1 and ENTITY_MARKER in value:
            project, entity_type, entity_id = value[ENTITY_MARKER]
            return EntityRef(project=project, type=entity_type, id=entity_id)
        return {key: from_wire(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_wire(item) for item in value]
    return value
