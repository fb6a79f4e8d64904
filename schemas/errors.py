"""The one error root of trackstream, and the optional-dependency gate every package shares.

Every error trackstream raises on purpose is a :class:`TrackstreamError`. Each area has its own sub-root
(:class:`ConfigError` here; ``ProducerError``, ``StreamsError``, ``SinkError``, ``IntegrationError`` in their
packages), and every error carries ``retriable``: ``True`` when trying the same call again later may succeed
(a broker or store that is down, a timeout), ``False`` when only a change of input or configuration helps.

Bad arguments to a log call are not delivery problems: they raise :class:`ValueError` at the call (see
``docs/metrics.md``). Errors that cross the HTTP query API keep their class and ``retriable`` (see
:func:`error_payload` and :func:`error_from_payload`).

Light: imports nothing outside the standard library.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Final

INSTALL_HINTS: Final = {
    extra: f"pip install 'trackstream[{extra}]'"
    for extra in ("streams", "sinks", "server", "embedded", "cli", "query", "workers", "integrations")
}


class TrackstreamError(Exception):
    """Root of every error trackstream raises on purpose.

    ``retriable`` (class default, overridable per instance with ``retriable=``) says whether trying again later
    may succeed. ``code`` is the ClickHouse server's error code when the error came from ClickHouse, else ``None``.
    """

    retriable: bool = False
    code: int | None = None

    def __init__(self, message: str, *, retriable: bool | None = None, code: int | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable
        if code is not None:
            self.code = code


class ConfigError(TrackstreamError):
    """A configuration value (keyword argument, CLI option or environment variable) is missing or invalid.

    The message names the setting and the environment variable that sets it.
    """


class NotFoundError(TrackstreamError, LookupError):
    """A read named a project, run, model, metric or param the store does not hold.

    The message names what is missing and the closest names that exist ("metric 'losss' not found in project
    'p'; did you mean 'loss'?"). The CLI prints it and exits with code 2.
    """


class MissingDependencyError(TrackstreamError, ImportError):
    """An optional package is not installed; the message names the extra that installs it (``extra``)."""

    def __init__(self, message: str, *, extra: str) -> None:
        super().__init__(message)
        self.extra = extra


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` (e.g. ``"chdb"``), or raise :class:`MissingDependencyError` naming ``extra`` to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = INSTALL_HINTS.get(extra, f"pip install 'trackstream[{extra}]'")
        raise MissingDependencyError(
            f"{module.partition('.')[0]!r} is not installed; it comes with the {extra!r} extra: {hint}", extra=extra
        ) from exc


def _subclasses(root: type[TrackstreamError]) -> dict[str, type[TrackstreamError]]:
    found: dict[str, type[TrackstreamError]] = {}
    pending = [root]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.__name__, cls)
        pending.extend(cls.__subclasses__())
    return found


# Argument errors a caller may catch by their builtin class; they cross the API as themselves.
_BUILTIN_ERRORS: Final[dict[str, type[Exception]]] = {
    cls.__name__: cls for cls in (TypeError, ValueError, KeyError, LookupError)
}


def error_payload(exc: BaseException) -> dict[str, Any]:
    """The JSON body an API returns for ``exc``: ``{"type", "message", "retriable", "code"}``.

    A :class:`TrackstreamError` keeps its class name, and so do bad-argument errors (TypeError, ValueError,
    KeyError, LookupError); anything else is reported as a non-retriable ``TrackstreamError`` (its text stays
    in the message).
    """
    if isinstance(exc, TrackstreamError):
        return {"type": type(exc).__name__, "message": str(exc), "retriable": exc.retriable, "code": exc.code}
    if type(exc).__name__ in _BUILTIN_ERRORS:
        message = str(exc.args[0]) if len(exc.args) == 1 else str(exc)  # KeyError's str() quotes its key
        return {"type": type(exc).__name__, "message": message, "retriable": False, "code": None}
    return {"type": "TrackstreamError", "message": f"{type(exc).__name__}: {exc}", "retriable": False, "code": None}


def error_from_payload(payload: dict[str, Any]) -> Exception:
    """Rebuild the error :func:`error_payload` described, as the same class when this process knows it.

    Classes are looked up by name among the loaded subclasses of :class:`TrackstreamError` and the builtin
    argument errors; an unknown name becomes a plain :class:`TrackstreamError` with the same message and
    ``retriable``.
    """
    builtin = _BUILTIN_ERRORS.get(str(payload.get("type")))
    if builtin is not None:
        return builtin(str(payload.get("message", "")))
    cls = _subclasses(TrackstreamError).get(str(payload.get("type")), TrackstreamError)
    message = str(payload.get("message", ""))
    retriable = bool(payload.get("retriable", False))
    code = payload.get("code") if isinstance(payload.get("code"), int) else None
    error = cls.__new__(cls)
    TrackstreamError.__init__(error, message, retriable=retriable, code=code)
    if isinstance(error, MissingDependencyError):
        error.extra = ""
    return error
