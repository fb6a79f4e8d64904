"""ClickHouse server through clickhouse-connect: Arrow inserts with deduplication tokens, server-side binding."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from sinks.backend import Row
from sinks.chdb_backend import check_identifier
from sinks.errors import QueryError, StoreUnavailable, require

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class ServerBackend:
    """One clickhouse-connect client; the URL may carry user, password and database (never logged)."""

    kind = "server"

    def __init__(self, url: str, *, database: str | None = None) -> None:
        require("pyarrow")
        driver = require("clickhouse_connect")
        self._url = _redacted(url)
        try:
            if database:
                check_identifier(database)
                admin = driver.get_client(dsn=url, autogenerate_session_id=False)
                admin.command(f"CREATE DATABASE IF NOT EXISTS {database}")
                admin.close()
            self._client = driver.get_client(dsn=url, database=database, autogenerate_session_id=False)
        except Exception as exc:
            raise StoreUnavailable(f"cannot reach ClickHouse at {self._url}: {exc}") from exc

    def __repr__(self) -> str:
        return f"ServerBackend({self._url!r})"

    def _wrap(self, exc: Exception) -> Exception:
        errors = require("clickhouse_connect.driver.exceptions")
        if isinstance(exc, errors.OperationalError):
            return StoreUnavailable(f"ClickHouse at {self._url}: {exc}")
        return QueryError(f"ClickHouse: {exc}")

    def command(self, sql: str) -> None:
        try:
            self._client.command(sql)
        except Exception as exc:
            raise self._wrap(exc) from exc

    def insert(self, table: str, data: pa.Table, *, dedup_token: str | None = None) -> None:
        if data.num_rows == 0:
            return
        settings: dict[str, Any] = {"optimize_on_insert": 0}  # as in chdb_backend: readers collapse duplicates
        if dedup_token:
            settings["insert_deduplication_token"] = dedup_token
        try:
            self._client.insert_arrow(table, data, settings=settings)
        except Exception as exc:
            raise self._wrap(exc) from exc

    def query(
        self, sql: str, params: Mapping[str, Any] | None = None, *, readonly: bool = False
    ) -> tuple[list[str], list[Row]]:
        settings = {"readonly": 2} if readonly else {}
        try:
            result = self._client.query(sql, parameters=dict(params or {}), settings=settings)
        except Exception as exc:
            raise self._wrap(exc) from exc
        return list(result.column_names), [tuple(row) for row in result.result_rows]

    def close(self) -> None:
        self._client.close()
