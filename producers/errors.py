"""The producers' error root: every failure the SDK raises on purpose is a :class:`TrackstreamError`.

Bad arguments to a log call are the exception: they raise :class:`ValueError` in the caller's thread
(DESIGN §2), because they are programming errors, not delivery problems.
"""

from __future__ import annotations


class TrackstreamError(Exception):
    """Root of the SDK's errors; ``retriable`` says whether trying again later may succeed."""

    retriable: bool = False

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable


class ConfigError(TrackstreamError):
    """A configuration value (keyword or environment variable) is invalid."""


class HandleClosedError(TrackstreamError):
    """Logging to a run that was finished or a model handle that was closed."""


class FlushTimeoutError(TrackstreamError):
    """A flush did not complete in time; the data stays queued and is still delivered later."""

    retriable = True


class SpoolError(TrackstreamError):
    """The local spool could not be read or written."""

    retriable = True
