"""Sinks: processed topics -> ClickHouse (server or embedded chDB), and the query side (DESIGN §5, §6).

Importing this package is cheap; chDB, clickhouse-connect, numpy and pyarrow load when a backend, a sink or a
query service is constructed.
"""

from sinks.errors import IngestTimeout, QueryError, SinkError, StoreUnavailable

__all__ = ["IngestTimeout", "QueryError", "SinkError", "StoreUnavailable"]
