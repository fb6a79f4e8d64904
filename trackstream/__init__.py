"""trackstream: streaming metrics ingestion for ML training.

The public facade. Logging (``start_run``, ``model``, ``flush``) comes from the light :mod:`producers`
package; the query side (``compare``, ``curves``, ``runs``, ``sql``) is loaded on first use, so that
``import trackstream`` inside a training job costs next to nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from producers import Model, Run, TrackstreamError, flush, model, start_run

if TYPE_CHECKING:
    from sinks.query import compare, curves, runs, sql

__version__ = "0.1.0"

_QUERY_FUNCTIONS = frozenset({"compare", "curves", "runs", "sql"})

__all__ = [
    "Model",
    "Run",
    "TrackstreamError",
    "compare",
    "curves",
    "flush",
    "model",
    "runs",
    "sql",
    "start_run",
]


def __getattr__(name: str) -> Any:
    if name in _QUERY_FUNCTIONS:
        from trackstream import _query

        return getattr(_query, name)
    raise AttributeError(f"module 'trackstream' has no attribute {name!r}")
