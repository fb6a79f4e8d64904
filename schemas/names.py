"""Names and identifiers shared by the SDK (checked at the log call) and the stream validator."""

from __future__ import annotations

import re
from typing import Final

METRIC_NAME_MAX: Final = 250
_METRIC_NAME: Final = re.compile(r"[A-Za-z0-9_\-./ ]{1,250}")


def is_valid_metric_name(name: object) -> bool:
    """1-250 characters of letters, digits, ``_ - . /`` and space (docs/metrics.md)."""
    return isinstance(name, str) and _METRIC_NAME.fullmatch(name) is not None


def metric_name_problem(name: object) -> str | None:
    """Why ``name`` is not a metric name, or None when it is one."""
    if not isinstance(name, str):
        return f"metric name must be a str, got {type(name).__name__}"
    if not name:
        return "metric name is empty"
    if len(name) > METRIC_NAME_MAX:
        return f"metric name is {len(name)} characters long, at most {METRIC_NAME_MAX} are allowed"
    if _METRIC_NAME.fullmatch(name) is None:
        return f"metric name {name!r} may only hold letters, digits, '_', '-', '.', '/' and spaces"
    return None


def model_entity_id(name: str, version: str | int | None) -> str:
    """A model's entity id: ``name`` or ``name:version``."""
    return name if version is None else f"{name}:{version}"
