"""Who serves a chDB store: ``<data_dir>/owner.json``, and the store's API token in ``<data_dir>/api.token``.

A chDB store is opened by one process at a time. The owner (``trackstream local``, a chDB sink worker) serves
the query API and records ``{"url", "pid", "host", "port"}`` in ``owner.json``; every request to it must carry
the token kept in ``api.token``. Both files are mode 0600, so processes of the owner's account find the API
and authenticate with no configuration, and other accounts can do neither.

The token is made once per store (``secrets.token_urlsafe(32)``: 256 bits) and reused by every later owner of
the store, so clients holding it keep working across restarts. A token file that other accounts could read, or
that another account owns, is refused (with the command that fixes it) rather than used. Light: the standard
library and orjson.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import orjson

from trackstream.schemas.errors import ConfigError

OWNER_FILE: Final = "owner.json"
TOKEN_FILE: Final = "api.token"
TOKEN_BYTES: Final = 32
MIN_TOKEN_CHARS: Final = 22  # 128 bits of base64url: a shorter token is not one this module made
_TOKEN_ALPHABET: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_PRIVATE: Final = 0o600
_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class Owner:
    """A live process serving a store: its API ``url`` and ``pid``, the bound ``host`` and ``port``, and the token.

    ``token`` is None when this account cannot read the token file (the store belongs to another account);
    it never appears in ``repr``.
    """

    url: str
    pid: int
    host: str | None
    port: int | None
    token_file: Path
    token: str | None = field(default=None, repr=False)


def token_path(data_dir: Path) -> Path:
    """``<data_dir>/api.token``."""
    return Path(data_dir) / TOKEN_FILE


def owner_path(data_dir: Path) -> Path:
    """``<data_dir>/owner.json``."""
    return Path(data_dir) / OWNER_FILE


def _valid(token: str) -> bool:
    return len(token) >= MIN_TOKEN_CHARS and set(token) <= _TOKEN_ALPHABET


def _read_own_token(path: Path) -> str:
    """The token in ``path``, after checking that only this account can read it (ConfigError otherwise)."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(f"cannot open the query API token file {path} ({exc.strerror}); it must be a regular "
                          f"file of this account: remove it (rm {path}) and a new token is made at the next "
                          "start") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"the query API token file {path} is not a regular file: remove it (rm {path}) and "
                              "a new token is made at the next start")
        if info.st_uid != os.geteuid():
            raise ConfigError(f"the query API token file {path} belongs to uid {info.st_uid}, not to this account "
                              f"(uid {os.geteuid()}): serve the store as its owner, or remove the file "
                              f"(rm {path}) so that a new token is made at the next start")
        if info.st_mode & 0o077:
            raise ConfigError(f"the query API token file {path} is open to other accounts (mode "
                              f"{stat.S_IMODE(info.st_mode):04o}); anyone who read it can query the store. Make it "
                              f"private (chmod 600 {path}), or remove it (rm {path}) for a new token at the next start")
        raw = os.read(fd, 4096)
    finally:
        os.close(fd)
    token = raw.decode("ascii", errors="replace").strip()
    if not _valid(token):
        raise ConfigError(f"the query API token file {path} holds no valid token (damaged?): remove it (rm {path}) "
                          "and a new token is made at the next start")
    return token


def ensure_token(data_dir: Path) -> str:
    """The store's API token: the one in ``<data_dir>/api.token``, made there (mode 0600) when there is none.

    Raises :class:`ConfigError` for a token file this account does not own, that others can read, or that
    holds no valid token; the message says how to fix it. The file is written whole before it appears (a
    private temporary file, created with ``O_EXCL``, then hard-linked into place, which fails if a token exists).
    """
    data_dir = Path(data_dir)
    path = token_path(data_dir)
    with contextlib.suppress(FileNotFoundError):
        return _read_own_token(path)
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    temporary = data_dir / f".{TOKEN_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    _write_private(temporary, token.encode() + b"\n")
    try:
        os.link(temporary, path)
    except FileExistsError:
        return _read_own_token(path)  # made meanwhile by another process: use that one
    finally:
        temporary.unlink(missing_ok=True)
    return token


def _write_private(path: Path, content: bytes) -> None:
    """Create ``path`` (which must not exist) readable and writable by this account only, with ``content``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, _PRIVATE)
    try:
        os.fchmod(fd, _PRIVATE)  # whatever the umask
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_owner(data_dir: Path, *, url: str, host: str, port: int) -> None:
    """Record this process as the store's owner serving ``url``: ``owner.json``, mode 0600, replaced atomically."""
    path = owner_path(data_dir)
    temporary = path.with_name(f".{OWNER_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    _write_private(temporary, orjson.dumps({"url": url, "pid": os.getpid(), "host": host, "port": port}))
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def withdraw_owner(data_dir: Path) -> None:
    """Remove ``owner.json`` if this process wrote it (a later owner's record stays)."""
    path = owner_path(data_dir)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        if int(orjson.loads(path.read_bytes())["pid"]) == os.getpid():
            path.unlink(missing_ok=True)


def _read_token(path: Path, owner_uid: int) -> str | None:
    """The token in ``path`` when this account can read it and it belongs to the owner file's account, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_uid != owner_uid:
            return None  # never hand the store's token to an address another account wrote down
        token = os.read(fd, 4096).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)
    return token if _valid(token) else None


def read_owner(data_dir: Path) -> Owner | None:
    """The live process serving the store in ``data_dir``, or None (no owner file, a dead owner, unreadable).

    Alive means ``os.kill(pid, 0)`` succeeds or is refused (another account's process) and the store's owner lock
    is held: a record left by a killed owner names a pid and a port that may since belong to anyone, and the
    token must not go there. The token is read
    from ``api.token`` when this account can read it; otherwise ``token`` is None.
    """
    data_dir = Path(data_dir)
    try:
        fd = os.open(owner_path(data_dir), os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
        try:
            owner_uid = os.fstat(fd).st_uid
            record = orjson.loads(os.read(fd, 65536))
        finally:
            os.close(fd)
        pid, url = int(record["pid"]), str(record["url"])
        if pid <= 0:
            return None  # os.kill would signal a process group
        host = record.get("host")
        port = record.get("port")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, orjson.JSONDecodeError):
        return None  # no owner file, one another account keeps private, or a data dir that is not a directory
    try:
        os.kill(pid, 0)
    except PermissionError:
        pass  # alive, and another account's: its API still answers (and asks for the token)
    except (OSError, ValueError, OverflowError):
        return None
    from trackstream.store import store_held

    if not store_held(data_dir):
        return None  # a stale record (the owner was killed): its pid and port may now be anyone's
    path = token_path(data_dir)
    return Owner(url=url, pid=pid, host=str(host) if host is not None else None,
                 port=port if isinstance(port, int) else None, token_file=path, token=_read_token(path, owner_uid))
