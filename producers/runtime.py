"""Process-wide producer state: the lazily started flusher, exit handling and fork safety.

- Exit: an ``atexit`` hook finishes the runs this process started, closes model handles, then waits up to
  ``exit_timeout_s`` for Kafka to acknowledge everything (including a spool backlog); what is not
  acknowledged by then stays in, or is written to, the spool for ``trackstream sync``. The status of the
  runs it finishes: ``completed`` after a clean exit or ``sys.exit(0)``, ``failed`` after an uncaught
  exception (seen through a chained ``sys.excepthook``) or ``sys.exit(n)`` with n != 0 (seen through a
  wrapper of ``sys.exit``; a bare ``raise SystemExit(n)`` is not seen), ``killed`` after an uncaught
  KeyboardInterrupt or a SIGTERM.
- SIGTERM (a scheduler stopping the job): a handler is installed from the main thread when the process
  has no handler of its own (``SIG_DFL``), or chains to the Python handler it finds; it leaves ``SIG_IGN``
  and handlers set outside Python alone. Without a previous handler it finishes the open runs as
  ``killed``, delivers what was buffered (bounded by ``exit_timeout_s``), then dies of SIGTERM as it would
  have. With one, it flushes (bounded) and calls it; runs still open at exit are finished as ``killed``.
  A SIGTERM that lands while the main thread holds a handle's lock (inside a log call) is delivered again
  a few milliseconds later, so the handler never waits for a lock its own thread holds.
- Fork: in the child, ``os.register_at_fork`` drops the parent's flusher, files and connections (without
  closing what the parent still uses), gives every open handle a fresh lock and empty buffers, and starts
  a new flusher whose pipelines get new producer ids, so parent and child both deliver and nothing waits on
  a lock inherited in a locked state. Runs stay owned by the parent: the child flushes, never finishes them.
  A child that ends through ``os._exit`` (multiprocessing workers) is flushed by a multiprocessing
  finalizer when multiprocessing is in use; otherwise call ``trackstream.flush()`` before ``os._exit``.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any, Final, NoReturn

from trackstream.producers import buffer
from trackstream.producers.flusher import Flusher

log = logging.getLogger(__name__)

_lock = threading.Lock()
_flusher: Flusher | None = None
_exit_status = "completed"
_hooks_installed = False
_sigterm_installed = False
_exiting = False
_orphans: list[Any] = []
_REDELIVER_S: Final = 0.005
_MAX_REDELIVERIES: Final = 200


def flusher() -> Flusher:
    """This process's flusher, started on first use."""
    global _flusher
    current = _flusher
    if current is None:
        with _lock:
            if _flusher is None:
                _install_hooks()
                _flusher = Flusher()
            current = _flusher
    return current


def current_flusher() -> Flusher | None:
    """This process's flusher if one was started, else None; unlike :func:`flusher` it never starts one."""
    return _flusher


def exit_status() -> str:
    """How the process is ending so far: ``completed`` (default), ``failed`` or ``killed``, as set by the exit hooks."""
    return _exit_status


def status_after(kind: type[BaseException] | None, value: BaseException | None = None) -> str:
    """The run status after a block ended with exception ``kind`` / ``value`` (None: no exception)."""
    if _exit_status == "killed":
        return "killed"
    if kind is None:
        return "completed"
    if issubclass(kind, SystemExit):
        return "completed" if _clean_exit_code(getattr(value, "code", None)) else "failed"
    return "killed" if issubclass(kind, KeyboardInterrupt) else "failed"


def _clean_exit_code(code: object) -> bool:
    return code is None or (isinstance(code, int) and code == 0)


def _set_exit_status(status: str) -> None:
    """Record how the process is ending; ``killed`` (a signal) is never downgraded."""
    global _exit_status
    if _exit_status != "killed":
        _exit_status = status


def _excepthook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    _set_exit_status(status_after(kind, value))
    _previous_excepthook(kind, value, tb)


def _exit(status: object = None) -> NoReturn:
    """``sys.exit`` wrapper: remember a non-zero exit of the main thread, then exit as before."""
    if threading.current_thread() is threading.main_thread():
        _set_exit_status("completed" if _clean_exit_code(status) else "failed")
    _previous_exit(status)
    raise SystemExit(status)  # only reached if the wrapped exit returned


_previous_excepthook = sys.excepthook
_previous_exit: Callable[..., Any] = sys.exit
_previous_sigterm: Any = signal.SIG_DFL
_redeliveries = 0


def _install_hooks() -> None:
    global _hooks_installed, _previous_excepthook, _previous_exit
    if _hooks_installed:
        return
    _hooks_installed = True
    _previous_excepthook = sys.excepthook
    sys.excepthook = _excepthook
    _previous_exit = sys.exit
    sys.exit = _exit
    atexit.register(_at_exit)
    os.register_at_fork(after_in_child=_after_fork_in_child)


def install_sigterm_handler() -> bool:
    """Install the SIGTERM handler if possible (main thread, no foreign handler); True once installed."""
    global _sigterm_installed, _previous_sigterm
    if _sigterm_installed:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(signal.SIGTERM)
    if current is not signal.SIG_DFL and not callable(current):
        return False  # SIG_IGN, or a handler installed outside Python: the process decided, leave it
    _previous_sigterm = current
    signal.signal(signal.SIGTERM, _on_sigterm)
    _sigterm_installed = True
    return True


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    global _redeliveries
    if _holds_sdk_lock(frame) and _redeliveries < _MAX_REDELIVERIES:
        _redeliveries += 1
        timer = threading.Timer(_REDELIVER_S, os.kill, (os.getpid(), signum))
        timer.daemon = True
        timer.start()
        return
    _redeliveries = 0
    _set_exit_status("killed")
    previous = _previous_sigterm
    if callable(previous):
        _flush_before_handler()
        previous(signum, frame)
        return
    if _exiting:
        return  # the exit already delivering (bounded by exit_timeout_s) ends the process
    _at_exit()
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)
    os._exit(128 + signum)


def _holds_sdk_lock(frame: FrameType | None) -> bool:
    """True when the interrupted main thread may hold a producer lock (a handle's, or the registry's)."""
    registry_code = (Flusher.register.__code__, Flusher.handles.__code__, Flusher.pipeline.__code__)
    while frame is not None:
        code = frame.f_code
        if code.co_filename == buffer.__file__ or code in registry_code:
            owner = frame.f_locals.get("self")
            lock = getattr(owner, "_mutex", None) or getattr(owner, "_registry", None)
            if lock is None or lock.locked():
                return True
        elif code is flusher.__code__ and _lock.locked():
            return True
        frame = frame.f_back
    return False


def _flush_before_handler() -> None:
    current = _flusher
    if current is None:
        return
    timeout_s = min((h.config.exit_timeout_s for h in current.handles()), default=10.0)
    try:
        current.flush(timeout_s)
    except Exception as exc:
        log.warning("trackstream: flush on SIGTERM did not complete: %r", exc)


def _at_exit() -> None:
    global _exiting
    current = _flusher
    if current is None or _exiting:
        return
    _exiting = True
    try:
        configs = {handle.config for handle in current.handles()} | set(current.pipelines)
        for handle in current.handles():
            close = getattr(handle, "_close_at_exit", None)
            if close is not None:
                close(_exit_status)
        current.shutdown(min((c.exit_timeout_s for c in configs), default=10.0))
    finally:
        _exiting = False


def _after_fork_in_child() -> None:
    global _flusher, _lock, _exit_status, _exiting, _redeliveries
    _lock = threading.Lock()
    _exit_status = "completed"
    _exiting = False
    _redeliveries = 0
    parent = _flusher
    if parent is None:
        return
    _orphans.append(parent)
    parent.abandon()
    handles = parent.handles_unlocked()
    for handle in handles:
        reset = getattr(handle, "reset_after_fork", None)
        if reset is not None:
            reset()
    _flusher = None
    live = [h for h in handles if not h.closed]
    if live:
        child = flusher()
        for handle in live:
            child.register(handle)
        _register_multiprocessing_finalizer()


def _register_multiprocessing_finalizer() -> None:
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        util.Finalize(None, _at_exit, exitpriority=100)
