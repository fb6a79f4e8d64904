"""The errors of the sinks and the query side: :class:`SinkError` under the one root ``TrackstreamError``."""

from __future__ import annotations

from types import ModuleType

from trackstream.schemas import errors
from trackstream.schemas.errors import TrackstreamError


class SinkError(TrackstreamError):
    """Root of every error the sinks and the query side raise; ``code`` carries ClickHouse's error code."""


class StoreUnavailable(SinkError):
    """ClickHouse (server or chDB store) cannot be reached or refused the operation for a transient reason."""

    retriable = True


class QueryError(SinkError):
    """A query was rejected (not read-only, bad arguments) or failed in ClickHouse."""


class IngestTimeout(SinkError, TimeoutError):
    """What a producer logged did not become queryable in time (raised by ``wait_ingested``)."""

    retriable = True


def require(module: str) -> ModuleType:
    """Import an optional dependency of the ``sinks`` extra; raises ``MissingDependencyError`` naming the extra."""
    return errors.require(module, "sinks")
