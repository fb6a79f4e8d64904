"""The small interface both stores implement (chDB embedded, ClickHouse server), and how one is chosen.

Everything above this layer (sink, query service) speaks SQL with ``{name:Type}`` query parameters and hands
over pyarrow tables for inserts, so a third implementation (an HTTP client to the process that owns a chDB store)
only has to provide these four methods.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from schemas.topics import setting

if TYPE_CHECKING:
    import pyarrow as pa

DEFAULT_DATA_DIR: Final = "~/.trackstream/data"
URL_ENV: Final = "TRACKSTREAM_CLICKHOUSE_URL"
DATA_DIR_ENV: Final = "TRACKSTREAM_DATA_DIR"
DATABASE_ENV: Final = "TRACKSTREAM_CLICKHOUSE_DATABASE"

Row = tuple[Any, ...]


class Backend(Protocol):
    """A ClickHouse to write batches into and read from."""

    kind: str

    def command(self, sql: str) -> None:
        """Run a statement without result (DDL)."""

    def insert(self, table: str, data: pa.Table, *, dedup_token: str | None = None) -> None:
        """Insert a columnar batch; a repeated ``dedup_token`` on the same table lands once."""

    def query(
        self, sql: str, params: Mapping[str, Any] | None = None, *, readonly: bool = False
    ) -> tuple[list[str], list[Row]]:
        """Run a query with bound ``{name:Type}`` parameters; returns column names and rows."""

    def close(self) -> None:
        """Release the connection (and, for chDB, the store's lock)."""


def resolve_store(clickhouse_url: str | None = None, data_dir: str | os.PathLike[str] | None = None) -> tuple[
        str | None, Path]:
    """DESIGN §7: keyword > environment > default. A URL selects the server; otherwise the chDB directory."""
    url = setting(clickhouse_url, URL_ENV)
    directory = setting(None if data_dir is None else str(data_dir), DATA_DIR_ENV, DEFAULT_DATA_DIR)
    return url, Path(directory or DEFAULT_DATA_DIR).expanduser()


def open_backend(
    clickhouse_url: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    database: str | None = None,
) -> Backend:
    """Open the configured store (server when a URL is configured, else the chDB directory).

    ``database`` (else TRACKSTREAM_CLICKHOUSE_DATABASE, else the URL's database or ``default``) is created if
    missing; tests use one database per test inside a shared store.
    """
    url, directory = resolve_store(clickhouse_url, data_dir)
    database = setting(database, DATABASE_ENV)
    if url:
        from sinks.server_backend import ServerBackend

        return ServerBackend(url, database=database)
    from sinks.chdb_backend import ChdbBackend

    return ChdbBackend(directory, database=database or "default")
