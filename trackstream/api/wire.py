"""The JSON form of the query API's arguments and results: floats exact, entity references tagged.

A non-finite float travels as its bit pattern (``{"$f64": bits}``, :mod:`trackstream.schemas.floats`), so NaN and
±Inf come back bit for bit; an :class:`~trackstream.schemas.EntityRef` travels as ``{"$entity": [project, type,
id]}``. Light: the standard library and trackstream.schemas only.
"""

from __future__ import annotations

from typing import Any, Final

from trackstream.schemas import EntityRef
from trackstream.schemas.floats import F64_MARKER, exact_float, inexact_float

ENTITY_MARKER: Final = "$entity"


def to_wire(value: Any) -> Any:
    """JSON-ready copy of ``value`` with exact floats and entity references."""
    if isinstance(value, float):
        return exact_float(value)
    if isinstance(value, EntityRef):
        return {ENTITY_MARKER: [value.project, value.type, value.id]}
    if isinstance(value, dict):
        return {key: to_wire(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_wire(item) for item in value]
    return value


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
