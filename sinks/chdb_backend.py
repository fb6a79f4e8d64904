"""Embedded store: chDB on a directory (one process holds it; docs/architecture.md).

Inserts hand a pyarrow table to chDB's ``Python()`` table function, which reads the Arrow buffers directly
(dictionary-encoded strings included): ~2M rows/s on this machine against ~0.8M for plain string columns and
~0.5M for ArrowStream bytes through ``send_insert``. Inserts skip ``optimize_on_insert`` (collapsing rows that
share a sorting key inside one insert): it doubled the cost of a ``points`` insert, and every reader already
collapses them (``FINAL``, aggregation, or a series proven free of repeated steps). Query parameters are
formatted in ClickHouse's text format here, because chDB passes every parameter value through as text.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trackstream.sinks.backend import Row
from trackstream.sinks.errors import QueryError, StoreUnavailable, require
from trackstream.sinks.sql_guard import readonly_statement

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

_CONNECTIONS: dict[Path, _Shared] = {}
_LOCK = threading.Lock()
_IDLE_HOLDERS: list[Callable[[], None]] = []


def on_other_store(release: Callable[[], None]) -> None:
    """Register ``release``, called when this process needs another store directory than the one it holds open.

    chDB opens one store directory per process; a holder that merely keeps a store open between uses (the
    facade's reader) registers its release here so that opening another directory does not fail.
    """
    _IDLE_HOLDERS.append(release)


class _Shared:
    """The one chDB connection of a store directory in this process, its lock and its current database."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.database = "default"
        self.users = 0


def _escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def _quoted(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return format_param(value)


def format_param(value: Any) -> str:
    """A Python value as the text ClickHouse parses for a ``{name:Type}`` parameter."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _escaped(value)
    if isinstance(value, list | tuple | set | frozenset):
        return "[" + ",".join(_quoted(v) for v in value) + "]"
    raise QueryError(f"unsupported query parameter type {type(value).__name__}")


def _connection(directory: Path) -> _Shared:
    state = require("chdb.state.sqlitelike")
    with _LOCK:
        shared = _CONNECTIONS.get(directory)
        if shared is None:
            directory.mkdir(parents=True, exist_ok=True)
            if _CONNECTIONS and _IDLE_HOLDERS:
                _LOCK.release()  # the holders close their handles, which takes this lock
                try:
                    for release in list(_IDLE_HOLDERS):
                        release()
                finally:
                    _LOCK.acquire()
                shared = _CONNECTIONS.get(directory)
        if shared is None:
            try:
                shared = _Shared(state.connect(str(directory)))
            except Exception as exc:
                raise StoreUnavailable(f"cannot open chDB store {directory}: {exc}") from exc
            _CONNECTIONS[directory] = shared
        shared.users += 1
        return shared


def check_identifier(name: str) -> str:
    """``name`` if it is a valid database name (letters, digits, ``_``; no leading digit), else raises QueryError."""
    if not name or not all(ch.isalnum() or ch == "_" for ch in name) or name[0].isdigit():
        raise QueryError(f"invalid database name {name!r}")
    return name


class ChdbBackend:
    """chDB on a store directory and database; one connection per directory is shared inside a process."""

    kind = "chdb"

    def __init__(self, directory: str | Path, *, database: str = "default") -> None:
        require("pyarrow")
        self.directory = Path(directory).expanduser().resolve()
        self.database = check_identifier(database)
        self._shared: _Shared | None = _connection(self.directory)

    def __repr__(self) -> str:
        return f"ChdbBackend({str(self.directory)!r}, database={self.database!r})"

    def _run(self, sql: str, fmt: str, params: Mapping[str, Any] | None = None, *, in_database: bool = True) -> Any:
        shared = self._shared
        if shared is None:
            raise StoreUnavailable(f"{self!r} is closed")
        text_params = {name: format_param(value) for name, value in (params or {}).items()}
        with shared.lock:
            try:
                if in_database and shared.database != self.database:
                    shared.conn.query(f"USE {self.database}", "CSV")
                    shared.database = self.database
                return shared.conn.query(sql, fmt, params=text_params)
            except Exception as exc:
                if fmt == "Arrowtable":
                    _drain(shared.conn)
                raise QueryError(f"chDB: {exc}") from exc

    def command(self, sql: str) -> None:
        """Run a statement without result (DDL) in this database; raises QueryError, or StoreUnavailable once closed."""
        self._run(sql, "CSV")

    def create_database(self) -> None:
        """Create this backend's database if missing (``default`` always exists); raises as :meth:`command`."""
        if self.database != "default":
            self._run(f"CREATE DATABASE IF NOT EXISTS {self.database}", "CSV", in_database=False)

    def insert(self, table: str, data: pa.Table, *, dedup_token: str | None = None) -> None:
        """Insert an Arrow table through chDB's ``Python()`` table function (a no-op for 0 rows).

        Uses ``optimize_on_insert = 0`` and ``dedup_token`` as ``insert_deduplication_token``. Raises QueryError for a
        token with characters other than letters, digits and ``-_:.,`` or a failed insert; StoreUnavailable once closed.
        """
        if data.num_rows == 0:
            return
        settings = " SETTINGS optimize_on_insert = 0, max_partitions_per_insert_block = 0" + (
            f", insert_deduplication_token = '{_token(dedup_token)}'" if dedup_token else "")
        columns = ", ".join(f"`{name}`" for name in data.column_names)
        trackstream_batch = data  # noqa: F841 - chDB's Python() table function finds it by this name
        sql = f"INSERT INTO {table} ({columns}){settings} SELECT {columns} FROM Python(trackstream_batch)"
        self._run(sql, "CSV")

    def query(
        self, sql: str, params: Mapping[str, Any] | None = None, *, readonly: bool = False
    ) -> tuple[list[str], list[Row]]:
        """Run ``sql`` with ``params`` (formatted by :func:`format_param`); returns ``(column names, rows as tuples)``.

        ``readonly=True``: ``sql`` is one statement the caller has checked (``sql_guard.check_statement``: no
        SETTINGS, FORMAT or INTO OUTFILE of its own) and runs with ``readonly = 1`` whatever its kind; chDB takes no
        per-query settings, so the clause goes into the text (``sql_guard.readonly_statement``). Raises QueryError
        (StoreUnavailable once closed).
        """
        if readonly:
            sql = readonly_statement(sql)
        table = self._run(sql, "Arrowtable", params)
        columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
        return list(table.column_names), list(zip(*columns, strict=True))

    def close(self) -> None:
        """Release this handle; the store's lock is released when the last handle in the process closes."""
        with _LOCK:
            shared, self._shared = self._shared, None
            if shared is None:
                return
            shared.users -= 1
            if shared.users == 0 and _CONNECTIONS.get(self.directory) is shared:
                del _CONNECTIONS[self.directory]
                shared.conn.close()


def _drain(conn: Any) -> None:
    """After a failed Arrow query chDB hands the next Arrow query a broken stream ("Invalid flatbuffers message"):
    run a throwaway one so that the next caller, maybe another user's request, gets its own answer."""
    try:
        conn.query("SELECT 1", "Arrowtable")
    except Exception:
        log.debug("chDB: the throwaway query after a failure failed too", exc_info=True)


def _token(token: str) -> str:
    if not all(ch.isalnum() or ch in "-_:.," for ch in token):
        raise QueryError(f"invalid deduplication token {token!r}")
    return token
