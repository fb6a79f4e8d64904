"""The small interface both stores implement (chDB embedded, ClickHouse server); :mod:`.connect` opens one.

Everything above this layer (sink, query service) speaks SQL with ``{name:Type}`` query parameters and hands
over pyarrow tables for inserts, so a third implementation (an HTTP client to the process that owns a chDB store)
only has to provide these four methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pyarrow as pa

Row = tuple[Any, ...]


class Backend(Protocol):
    """A ClickHouse to write batches into and read from."""

    kind: str

    def command(self, sql: str) -> None:
        """Run a statement without result (DDL)."""

    def create_database(self) -> None:
        """Create the backend's database when it does not exist (writers only: readers never run DDL)."""

    def insert(self, table: str, data: pa.Table, *, dedup_token: str | None = None) -> None:
        """Insert a columnar batch; a repeated ``dedup_token`` on the same table lands once."""

    def query(
        self, sql: str, params: Mapping[str, Any] | None = None, *, readonly: bool = False
    ) -> tuple[list[str], list[Row]]:
        """Run a query with bound ``{name:Type}`` parameters; returns column names and rows."""

    def close(self) -> None:
        """Release the connection (and, for chDB, the store's lock)."""
