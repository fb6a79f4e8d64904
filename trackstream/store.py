"""Where the embedded store and the spool are, and the lock that makes one process the store's owner.

A chDB store directory is opened by one process at a time: the owner holds an ``flock`` on
``<data_dir>/store.lock`` (``trackstream local``, a chDB sink worker, ``trackstream migrate``, or a reader between
reads: see :mod:`trackstream.reader`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from trackstream.producers.config import default_spool_dir
from trackstream.producers.spool import flock_held, try_flock
from trackstream.schemas.errors import TrackstreamError

log = logging.getLogger(__name__)

STORE_LOCK: Final = "store.lock"
SPOOL_DIR_ENV: Final = "TRACKSTREAM_SPOOL_DIR"


class StoreBusyError(TrackstreamError):
    """Another process holds the chDB store's lock (and serves no query API): stop it, wait, or use another store."""

    retriable = True


def spool_dir_from(value: str | os.PathLike[str] | None = None) -> Path:
    """The spool directory: ``value``, else ``$TRACKSTREAM_SPOOL_DIR``, else ``~/.trackstream/spool``."""
    chosen = os.fspath(value) if value is not None else (os.environ.get(SPOOL_DIR_ENV) or default_spool_dir())
    return Path(chosen).expanduser()


OWNER_WANTED: Final = "owner.wanted"


class StoreLock:
    """The owner lock of ``data_dir`` held across calls (a reader keeps it between reads); not reentrant."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._fd = -1

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd >= 0

    def acquire(self) -> bool:
        """Take the lock without waiting; False when another process (or another StoreLock) holds it."""
        if self._fd >= 0:
            return True
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._fd = try_flock(self.data_dir / STORE_LOCK, create_mode=0o600)
        return self._fd >= 0

    def release(self) -> None:
        """Give the lock up (a no-op when not held)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def store_held(data_dir: Path) -> bool:
    """True while some process holds the store's lock (an owner, for as long as it serves; a reader, while open)."""
    return flock_held(Path(data_dir) / STORE_LOCK)


def store_wanted(data_dir: Path) -> bool:
    """True while a live process waits to own the store (see :func:`owning_store`): readers must let it go."""
    try:
        pid = int((data_dir / OWNER_WANTED).read_text())
        os.kill(pid, 0)
    except PermissionError:
        return True
    except (OSError, ValueError):
        return False
    return True


@contextlib.contextmanager
def owning_store(data_dir: Path, *, timeout_s: float = 30.0, poll_s: float = 0.05) -> Iterator[None]:
    """Hold the store's owner lock for a runner (``trackstream local``, a chDB sink worker, ``migrate``).

    A reader holding the store between reads (``trackstream._query``) is asked to let it go through
    ``<data_dir>/owner.wanted`` and does so on its next call or when idle. Raises :class:`StoreBusyError` when the
    lock is still held after ``timeout_s`` (another runner owns the store).
    """
    lock = StoreLock(data_dir)
    wanted = data_dir / OWNER_WANTED
    deadline = time.monotonic() + timeout_s
    announced = False
    try:
        while not lock.acquire():
            if not announced:
                wanted.write_text(str(os.getpid()))
                announced = True
                log.info("waiting up to %.0f s for the process holding the store %s to release it", timeout_s,
                         data_dir)
            if time.monotonic() > deadline:
                raise StoreBusyError(f"another process owns the store {data_dir}; stop it or use another "
                                     "--data-dir")
            time.sleep(poll_s)  # flock offers no wait with a timeout
    finally:
        if announced:
            wanted.unlink(missing_ok=True)
    try:
        yield
    finally:
        lock.release()
