"""The sinks package's error root (one per package, with ``retriable``) and the optional-dependency check."""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = "pip install 'trackstream[sinks]'"


class SinkError(Exception):
    """Root of every error the sinks and the query side raise; ``retriable`` says whether a retry can help."""

    retriable: bool = False

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable


class StoreUnavailable(SinkError):
    """ClickHouse (server or chDB store) cannot be reached or refused the operation for a transient reason."""

    retriable = True


class QueryError(SinkError):
    """A query was rejected (not read-only, bad arguments) or failed in ClickHouse."""


class IngestTimeout(SinkError, TimeoutError):
    """What a producer logged did not become queryable in time (raised by ``wait_ingested``)."""

    retriable = True


def require(module: str) -> ModuleType:
    """Import an optional dependency of the sinks extra, or fail with the command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SinkError(f"{module} is not installed; {INSTALL_HINT}") from exc
