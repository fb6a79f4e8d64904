"""Sinks: processed topics -> ClickHouse (server or chDB), and the query side (docs/storage.md, docs/queries.md).

Importing this package is cheap; chDB, clickhouse-connect, numpy and pyarrow load when a backend, a sink or a
query service is constructed.
"""

from trackstream.sinks.errors import IngestTimeout, QueryError, SinkError, StoreUnavailable

__all__ = ["IngestTimeout", "QueryError", "SinkError", "StoreUnavailable"]
