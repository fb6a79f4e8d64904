"""trackstream: streaming metrics ingestion for ML training.

The public facade. Logging (``start_run``, ``model``, ``flush``) comes from the light :mod:`trackstream.producers`
package; the query side (``compare``, ``curves``, ``runs``, ``sql``, ``get_run``, ``get_model``) is loaded on first
use, so that ``import trackstream`` inside a training job costs next to nothing (orjson and the standard library).

Every error raised on purpose is a :class:`TrackstreamError` with ``retriable``; the settings shared by every
component are :class:`KafkaSettings` and :class:`StoreSettings` (docs/configuration.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trackstream.producers import Model, Run, flush, model, start_run
from trackstream.producers.readback import set_read_backend
from trackstream.schemas.errors import ConfigError, MissingDependencyError, NotFoundError, TrackstreamError
from trackstream.schemas.settings import KafkaSettings, Secret, StoreSettings

if TYPE_CHECKING:
    from trackstream._query import compare, curves, get_model, get_run, runs, sql

__version__ = "0.1.0"

_QUERY_FUNCTIONS = frozenset({"compare", "curves", "get_model", "get_run", "runs", "sql"})

__all__ = [
    "ConfigError",
    "KafkaSettings",
    "MissingDependencyError",
    "Model",
    "NotFoundError",
    "Run",
    "Secret",
    "StoreSettings",
    "TrackstreamError",
    "compare",
    "curves",
    "flush",
    "get_model",
    "get_run",
    "model",
    "runs",
    "sql",
    "start_run",
]


def _read_back() -> Any:
    from trackstream._query import _ReadBack

    return _ReadBack()


set_read_backend(_read_back)


def __getattr__(name: str) -> Any:
    if name in _QUERY_FUNCTIONS:
        from trackstream import _query

        return getattr(_query, name)
    raise AttributeError(f"module 'trackstream' has no attribute {name!r}")
