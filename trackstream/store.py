"""Where the embedded store and the spool are, and the lock that makes one process the store's owner.

A chDB store directory is opened by one process at a time: the owner holds an ``flock`` on
``<data_dir>/store.lock`` (``trackstream local``, a chDB sink worker, or a reader while it catches up).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from trackstream.producers.config import default_spool_dir
from trackstream.schemas.errors import TrackstreamError

STORE_LOCK: Final = "store.lock"
SPOOL_DIR_ENV: Final = "TRACKSTREAM_SPOOL_DIR"


class StoreBusyError(TrackstreamError):
    """Another process holds the chDB store's lock (and serves no query API): stop it, wait, or use another store."""

    retriable = True


def spool_dir_from(value: str | os.PathLike[str] | None = None) -> Path:
    """The spool directory: ``value``, else ``$TRACKSTREAM_SPOOL_DIR``, else ``~/.trackstream/spool``."""
    chosen = os.fspath(value) if value is not None else (os.environ.get(SPOOL_DIR_ENV) or default_spool_dir())
    return Path(chosen).expanduser()


@contextlib.contextmanager
def store_lock(data_dir: Path, *, blocking: bool) -> Iterator[bool]:
    """Hold the store's owner lock (an flock on ``<data_dir>/store.lock``); yields whether it was acquired."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / STORE_LOCK, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
