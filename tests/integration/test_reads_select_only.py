"""A ClickHouse server reader granted only SELECT can use every read, and a read runs no DDL (docs/storage.md grants).

Needs a server (``TRACKSTREAM_CLICKHOUSE_URL`` or Docker): the admin account of the fixture creates the tables
as the writer would, then a user with only ``GRANT SELECT ON <db>.*`` reads through QueryService.
"""

from __future__ import annotations

import secrets

import pytest
from conftest import ClickHouseTarget, unique_name

from trackstream.schemas.envelope import EntityRef
from trackstream.schemas.settings import StoreSettings
from trackstream.sinks.errors import QueryError
from trackstream.sinks.query import QueryService
from trackstream.sinks.schema import migrate
from trackstream.sinks.server_backend import ServerBackend


@pytest.fixture
def server(clickhouse_backend: ClickHouseTarget) -> ClickHouseTarget:
    if clickhouse_backend.kind != "server":
        pytest.skip("grants exist on a ClickHouse server only; chDB is covered by test_reads_embedded.py")
    return clickhouse_backend


def test_a_select_only_user_reads_everything_and_writes_nothing(server: ClickHouseTarget) -> None:
    admin = ServerBackend(StoreSettings.resolve(url=server.url, database=server.database))
    migrate(admin)  # the writer's job
    admin.command("INSERT INTO entities (project, entity_type, entity_id, name, status, version) "
                  "VALUES ('p', 'run', 'r1', 'one', 'running', 1)")
    user, password = unique_name("reader"), secrets.token_urlsafe(16)
    admin.command(f"CREATE USER {user} IDENTIFIED WITH sha256_password BY '{password}'")
    try:
        admin.command(f"GRANT SELECT ON {server.database}.* TO {user}")
        reader = QueryService(StoreSettings.resolve(url=server.url, user=user, password=password,
                                                    database=server.database))
        try:
            assert [run["id"] for run in reader.runs("p")] == ["r1"]
            assert reader.compare("p", "loss") == []  # no points logged
            assert not any(reader.curves("p", ["r1"], "loss").values())
            assert reader.entity_metrics(EntityRef("p", "run", "r1")) == {}
            assert reader.sql("SELECT count() FROM entities")[0][0] == 1
            assert reader.sql("EXPLAIN SELECT count() FROM points")
            with pytest.raises(QueryError):
                reader.backend.command(f"CREATE TABLE {server.database}.x (a UInt8) ENGINE = Memory")
        finally:
            reader.close()
    finally:
        admin.command(f"DROP USER IF EXISTS {user}")
        admin.close()
