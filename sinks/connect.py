"""Open the configured store: a ClickHouse server when a URL is set, else the embedded chDB directory."""

from __future__ import annotations

from typing import Any

from trackstream.schemas.settings import StoreSettings
from trackstream.sinks.backend import Backend


def open_backend(store: StoreSettings | None = None, **keywords: Any) -> Backend:
    """Open ``store`` (resolved with ``keywords``: keyword > ``store`` > environment > default).

    ``keywords`` are :class:`StoreSettings` fields (``url``, ``user``, ``password``, ``database``,
    ``data_dir``). A database that does not exist is created. Raises
    :class:`~trackstream.sinks.errors.StoreUnavailable` (retriable) when the server cannot be reached,
    :class:`~trackstream.schemas.errors.MissingDependencyError` when the driver is not installed.
    """
    settings = StoreSettings.resolve(store, **keywords)
    if settings.url:
        from trackstream.sinks.server_backend import ServerBackend

        return ServerBackend(settings)
    from trackstream.sinks.chdb_backend import ChdbBackend

    return ChdbBackend(settings.data_path, database=settings.database or "default")
