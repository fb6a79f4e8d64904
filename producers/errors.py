"""The SDK's errors: :class:`ProducerError` under the one root :class:`~trackstream.schemas.errors.TrackstreamError`.

Bad arguments to a log call are the exception: they raise :class:`ValueError` in the caller's thread
(docs/metrics.md), because they are programming errors, not delivery problems.
"""

from __future__ import annotations

from trackstream.schemas.errors import ConfigError, TrackstreamError

__all__ = [
    "ConfigError",
    "FlushTimeoutError",
    "HandleClosedError",
    "ProducerError",
    "SpoolError",
    "TrackstreamError",
]


class ProducerError(TrackstreamError):
    """Root of the errors the SDK raises while delivering what a training job logged."""


class HandleClosedError(ProducerError):
    """Logging to a run that was finished or a model handle that was closed."""


class FlushTimeoutError(ProducerError):
    """A flush did not complete in time; the data stays queued and is still delivered later."""

    retriable = True


class SpoolError(ProducerError):
    """The local spool could not be read or written."""

    retriable = True
