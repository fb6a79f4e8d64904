"""The read-back hook: how ``Run.metrics`` and ``wait_ingested`` reach the query side.

Producers never import ``sinks`` or ``streams`` (they must stay light); the package that can read
registers a factory with :func:`set_read_backend` (the ``trackstream`` facade does it when the sinks extra
is installed).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from trackstream.producers.errors import TrackstreamError
from trackstream.schemas import EntityRef


class ReadBackend(Protocol):
    """What the SDK needs from the read side."""

    def entity_metrics(self, entity: EntityRef) -> dict[str, float | list[float]]:
        """``{key: number | list}`` for one entity (docs/metrics.md)."""
        ...

    def wait_ingested(self, entity: EntityRef, producer_id: str, seq: int, *, timeout_s: float) -> None:
        """Return once envelope ``seq`` of ``producer_id`` for ``entity`` (and all before it) is queryable."""
        ...


_factory: Callable[[], ReadBackend] | None = None
_backend: ReadBackend | None = None
_lock = threading.Lock()


def set_read_backend(factory: Callable[[], ReadBackend] | None) -> None:
    """Register (or with None, remove) the factory of the read backend; it is called once, on first use."""
    global _factory, _backend
    with _lock:
        _factory = factory
        _backend = None


def read_backend() -> ReadBackend:
    """The registered read backend; raises :class:`TrackstreamError` when none is installed."""
    global _backend
    with _lock:
        if _backend is None:
            if _factory is None:
                raise TrackstreamError(
                    "reading metrics back needs the query side: pip install 'trackstream[query]'",
                )
            _backend = _factory()
        return _backend
