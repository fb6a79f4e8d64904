"""Process-wide producer state: the lazily started flusher, exit handling and fork safety.

- Exit: an ``atexit`` hook finishes the runs this process started (``completed`` after a clean exit,
  ``failed`` after an uncaught exception, ``killed`` after an uncaught KeyboardInterrupt; seen through a
  chained ``sys.excepthook``), closes model handles, then waits up to ``exit_timeout_s`` for Kafka to
  acknowledge everything (including a spool backlog); what is not acknowledged by then stays in, or is
  written to, the spool for ``trackstream sync``.
- Fork: in the child, ``os.register_at_fork`` drops the parent's flusher, files and connections (without
  closing what the parent still uses), gives every open handle a fresh lock and empty buffers, and starts
  a new flusher whose pipelines get new producer ids, so parent and child both deliver and nothing waits on
  a lock inherited in a locked state. Runs stay owned by the parent: the child flushes, never finishes them.
  A child that ends through ``os._exit`` (multiprocessing workers) is flushed by a multiprocessing
  finalizer when multiprocessing is in use; otherwise call ``trackstream.flush()`` before ``os._exit``.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from types import TracebackType
from typing import Any

from producers.flusher import Flusher

_lock = threading.Lock()
_flusher: Flusher | None = None
_exit_status = "completed"
_hooks_installed = False
_orphans: list[Any] = []


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
    return _flusher


def exit_status() -> str:
    return _exit_status


def status_after(kind: type[BaseException] | None) -> str:
    """The run status after a block ended with exception type ``kind`` (None: no exception)."""
    if kind is None:
        return "completed"
    return "killed" if issubclass(kind, KeyboardInterrupt) else "failed"


def _excepthook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    global _exit_status
    _exit_status = status_after(kind)
    _previous_excepthook(kind, value, tb)


_previous_excepthook = sys.excepthook


def _install_hooks() -> None:
    global _hooks_installed, _previous_excepthook
    if _hooks_installed:
        return
    _hooks_installed = True
    _previous_excepthook = sys.excepthook
    sys.excepthook = _excepthook
    atexit.register(_at_exit)
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _at_exit() -> None:
    current = _flusher
    if current is None:
        return
    configs = {handle.config for handle in current.handles()} | set(current.pipelines)
    for handle in current.handles():
        close = getattr(handle, "_close_at_exit", None)
        if close is not None:
            close(_exit_status)
    current.shutdown(min((c.exit_timeout_s for c in configs), default=10.0))


def _after_fork_in_child() -> None:
    global _flusher, _lock, _exit_status
    _lock = threading.Lock()
    _exit_status = "completed"
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
