"""Shared test harness: real Kafka and ClickHouse (chDB, or a server where one exists).

Kafka, in order: ``TRACKSTREAM_KAFKA_BOOTSTRAP``; testcontainers when a Docker engine answers; else the project's
own KRaft broker (tests/services/kafka_broker.py). Without Java/Maven the Kafka tests skip with the reason,
except under ``CI=true``, where a service that cannot start fails the run.

ClickHouse: chDB always (one store directory per test session, since chDB binds one store per process, and a
unique database per test); a server when ``TRACKSTREAM_CLICKHOUSE_URL`` is set or Docker answers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from services.kafka_broker import BrokerError, KafkaBroker, missing_tools

log = logging.getLogger("trackstream.tests")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Services given by the environment (as `make test` does) reach tests only through the fixtures below: no test,
# and no subprocess a test starts, talks to Kafka or a ClickHouse server unless it asked for one.
CONFIGURED_KAFKA = os.environ.pop("TRACKSTREAM_KAFKA_BOOTSTRAP", None)
CONFIGURED_CLICKHOUSE = os.environ.pop("TRACKSTREAM_CLICKHOUSE_URL", None)
PROCESSED_SUFFIXES = ("metrics", "metrics.dlq", "points", "steps", "summaries", "entities")


def service_unavailable(reason: str) -> None:
    """Skip outside CI; under CI=true a service that cannot start is a failure."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: services must start)", pytrace=False)
    pytest.skip(reason)


def docker_answers() -> bool:
    """True when a Docker engine responds (not just a client binary on PATH)."""
    if os.environ.get("TRACKSTREAM_NO_DOCKER"):
        return False
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture(autouse=True)
def _isolated_stores(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Spool and chDB store of each test live in its own temporary directory, never in ~/.trackstream."""
    monkeypatch.setenv("TRACKSTREAM_SPOOL_DIR", str(tmp_path / "ts-spool"))
    monkeypatch.setenv("TRACKSTREAM_DATA_DIR", str(tmp_path / "ts-data"))


# --- Kafka -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address (host:port) of a real Kafka broker for the whole session."""
    if CONFIGURED_KAFKA:
        yield CONFIGURED_KAFKA
        return
    if docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:4.1.1").with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    yield from _own_broker(tmp_path_factory.mktemp("kafka"))


def _own_broker(state_dir: Path) -> Iterator[str]:
    missing = missing_tools()
    if missing:
        service_unavailable(f"no Kafka broker: {', '.join(missing)} not installed (or set TRACKSTREAM_KAFKA_BOOTSTRAP)")
    broker = KafkaBroker(state_dir)
    try:
        bootstrap = broker.start()
    except BrokerError as exc:
        broker.stop()
        service_unavailable(f"the project's Kafka broker did not start: {exc}")
        return
    try:
        yield bootstrap
    finally:
        broker.stop()


@pytest.fixture
def kafka_broker_factory(tmp_path: Path) -> Iterator[Callable[[], KafkaBroker]]:
    """Dedicated brokers a test may stop and restart (same port, same data); all stopped at teardown."""
    brokers: list[KafkaBroker] = []

    def start() -> KafkaBroker:
        missing = missing_tools()
        if missing:
            service_unavailable(f"no Kafka broker: {', '.join(missing)} not installed")
        broker = KafkaBroker(tmp_path / f"broker{len(brokers)}")
        brokers.append(broker)
        broker.start()
        return broker

    yield start
    for broker in brokers:
        broker.stop()


async def _create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1) for name in names])
    finally:
        await admin.close()


@pytest.fixture
def topic_factory(kafka_bootstrap: str) -> Callable[..., str]:
    """``topic_factory(partitions=3, prefix="t")`` creates a topic with a unique name and returns it."""

    def create(partitions: int = 3, prefix: str = "t") -> str:
        name = unique_name(prefix)
        asyncio.run(_create_topics(kafka_bootstrap, [name], partitions))
        return name

    return create


@pytest.fixture
def topic_prefix_factory(kafka_bootstrap: str) -> Callable[..., str]:
    """``topic_prefix_factory(partitions=3)``: a unique topic family (<prefix>.metrics, ...); returns the prefix."""

    def create(partitions: int = 3) -> str:
        prefix = unique_name("ts")
        names = [f"{prefix}.{suffix}" for suffix in PROCESSED_SUFFIXES]
        asyncio.run(_create_topics(kafka_bootstrap, names, partitions))
        return prefix

    return create


# --- ClickHouse ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClickHouseTarget:
    """Where a test's tables live: a chDB store directory or a server URL, and a database of its own."""

    kind: str
    database: str
    data_dir: Path | None = None
    url: str | None = None


@pytest.fixture(scope="session")
def chdb_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chDB store of this test session (chDB binds one store directory per process)."""
    return tmp_path_factory.mktemp("chdb-store")


@pytest.fixture(scope="session")
def clickhouse_server_url() -> Iterator[str | None]:
    """URL of a ClickHouse server: TRACKSTREAM_CLICKHOUSE_URL, else testcontainers when Docker answers, else None."""
    if CONFIGURED_CLICKHOUSE:
        yield CONFIGURED_CLICKHOUSE
        return
    if not docker_answers():
        yield None
        return
    from testcontainers.clickhouse import ClickHouseContainer

    with ClickHouseContainer("clickhouse/clickhouse-server:25.8") as container:
        host, port = container.get_container_host_ip(), container.get_exposed_port(8123)
        yield f"http://{container.username}:{container.password}@{host}:{port}"


@pytest.fixture(params=["chdb", "server"])
def clickhouse_backend(request: pytest.FixtureRequest, chdb_store: Path) -> ClickHouseTarget:
    """Each backend present, with a unique database name for this test."""
    database = unique_name("test")
    if request.param == "chdb":
        return ClickHouseTarget(kind="chdb", database=database, data_dir=chdb_store)
    url = request.getfixturevalue("clickhouse_server_url")
    if url is None:
        pytest.skip("no ClickHouse server here: set TRACKSTREAM_CLICKHOUSE_URL or run a Docker engine")
    return ClickHouseTarget(kind="server", database=database, url=url)
