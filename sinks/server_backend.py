"""ClickHouse server through clickhouse-connect: Arrow inserts with deduplication tokens, server-side binding."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from trackstream.schemas.settings import StoreSettings
from trackstream.sinks.backend import Row
from trackstream.sinks.chdb_backend import check_identifier
from trackstream.sinks.errors import QueryError, StoreUnavailable, require
from trackstream.sinks.sql_guard import LIMITS, is_explain_ast

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

_CODE = re.compile(r"Code: (\d+)")


def _server_code(message: str) -> int | None:
    """The ClickHouse error code in a server message (``Code: 60. DB::Exception: ...``), if any."""
    found = _CODE.search(message)
    return int(found.group(1)) if found else None


_TSV_ESCAPES = {"b": "\b", "f": "\f", "r": "\r", "n": "\n", "t": "\t", "0": "\0"}


def _unescape_tsv(field: str) -> str:
    """A TabSeparated field as text: ``\\n``, ``\\t``, ``\\\\``... decoded (``\\x`` is ``x`` for any other x)."""
    return re.sub(r"\\(.)", lambda m: _TSV_ESCAPES.get(m[1], m[1]), field, flags=re.DOTALL)


def _scrub(exc: BaseException, store: StoreSettings) -> str:
    """``exc``'s text without the password, whatever the driver put into it."""
    text = str(exc)
    return text.replace(store.password.reveal(), "***") if store.password and store.password.reveal() else text


class ServerBackend:
    """One clickhouse-connect client for ``store`` (a resolved :class:`StoreSettings` with a URL).

    Credentials come from ``store.user`` / ``store.password`` and are never logged. Raises
    :class:`StoreUnavailable` (retriable) when the server cannot be reached.
    """

    kind = "server"

    def __init__(self, store: StoreSettings) -> None:
        require("pyarrow")
        driver = require("clickhouse_connect")
        self._url = str(store.url)
        self._store = store
        self.database = check_identifier(store.database) if store.database else None
        self._credentials: dict[str, Any] = {"username": store.user} if store.user else {}
        if store.password is not None:
            self._credentials["password"] = store.password.reveal()
        try:
            # Connect to the server's default database: the configured one may not exist yet (creating it is
            # the writers' job, create_database); every request then names it, so a reader's first query fails
            # with the server's UNKNOWN_DATABASE instead of this constructor running DDL.
            self._client = self._connect(driver, None)
            if self.database:
                self._client.database = self.database
        except Exception as exc:
            raise StoreUnavailable(f"cannot reach ClickHouse at {self._url}: {_scrub(exc, store)}") from exc

    def _connect(self, driver: Any, database: str | None) -> Any:
        options: dict[str, Any] = {"database": database} if database else {}
        return driver.get_client(dsn=self._url, autogenerate_session_id=False, **options, **self._credentials)

    def create_database(self) -> None:
        """Create the configured database if missing (needs CREATE DATABASE: writers and ``trackstream migrate``)."""
        if not self.database:
            return
        driver = require("clickhouse_connect")
        try:
            admin = self._connect(driver, None)
            try:
                admin.command(f"CREATE DATABASE IF NOT EXISTS {self.database}")
            finally:
                admin.close()
        except Exception as exc:
            raise self._wrap(exc) from exc

    def __repr__(self) -> str:
        return f"ServerBackend({self._url!r})"

    def _wrap(self, exc: Exception) -> Exception:
        errors = require("clickhouse_connect.driver.exceptions")
        code = getattr(exc, "code", None)
        code = code if isinstance(code, int) else _server_code(str(exc))
        if isinstance(exc, errors.OperationalError):
            return StoreUnavailable(f"ClickHouse at {self._url}: {exc}", code=code)
        return QueryError(f"ClickHouse: {exc}", code=code)

    def command(self, sql: str) -> None:
        """Run a statement without result (DDL).

        Raises StoreUnavailable for a driver OperationalError (connection), QueryError for any other failure.
        """
        try:
            self._client.command(sql)
        except Exception as exc:
            raise self._wrap(exc) from exc

    def insert(self, table: str, data: pa.Table, *, dedup_token: str | None = None) -> None:
        """Insert an Arrow table (a no-op for 0 rows) with ``optimize_on_insert = 0``.

        ``dedup_token`` becomes ``insert_deduplication_token``. Raises as :meth:`command` does.
        """
        if data.num_rows == 0:
            return
        # as in chdb_backend: readers collapse duplicates; imported history may span more than 100 monthly partitions
        settings: dict[str, Any] = {"optimize_on_insert": 0, "max_partitions_per_insert_block": 0}
        if dedup_token:
            settings["insert_deduplication_token"] = dedup_token
        try:
            self._client.insert_arrow(table, data, settings=settings)
        except Exception as exc:
            raise self._wrap(exc) from exc

    def query(
        self, sql: str, params: Mapping[str, Any] | None = None, *, readonly: bool = False
    ) -> tuple[list[str], list[Row]]:
        """Run ``sql`` with server-side bound ``{name:Type}`` ``params``; returns ``(column names, rows as tuples)``.

        ``readonly=True``: ``sql`` is one statement the caller has checked (``sql_guard.check_statement``) and runs
        with the ``readonly = 1`` setting of the request, whatever its kind. An ``EXPLAIN AST`` statement (the guard's
        parse) always runs with it, and is sent as it is: clickhouse-connect appends ``FORMAT Native`` to queries,
        which EXPLAIN AST would parse as part of the explained query; its TabSeparated lines come back as rows of
        one column. Raises StoreUnavailable or QueryError.
        """
        settings = {**LIMITS, "readonly": 1} if readonly else {}
        try:
            if is_explain_ast(sql):
                raw = self._client.raw_query(sql, parameters=dict(params or {}), settings={"readonly": 1})
                lines = raw.decode().split("\n")
                return ["explain"], [(_unescape_tsv(line),) for line in (lines[:-1] if lines[-1] == "" else lines)]
            result = self._client.query(sql, parameters=dict(params or {}), settings=settings)
        except Exception as exc:
            raise self._wrap(exc) from exc
        return list(result.column_names), [tuple(row) for row in result.result_rows]

    def close(self) -> None:
        """Close the clickhouse-connect client."""
        self._client.close()
