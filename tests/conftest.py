"""Shared test harness: real Kafka and ClickHouse (chDB, or a server where one exists).

Kafka, in order: ``TRACKSTREAM_KAFKA_BOOTSTRAP``; testcontainers when a Docker engine answers; else the project's
own KRaft broker (tests/services/kafka_broker.py). Without Java/Maven the Kafka tests skip with the reason,
except under ``CI=true``, where a service that cannot start fails the run.

The secured listener (SASL_SSL, fixture ``secured_kafka``): the ``secured.json`` named by
``TRACKSTREAM_TEST_KAFKA_SECURED`` (``make test`` sets it beside ``TRACKSTREAM_KAFKA_BOOTSTRAP``), else the one of
the project's broker the fixtures start; that broker serves the plaintext listener of ``kafka_bootstrap`` too.

ClickHouse: chDB always (one store directory per test session, since chDB binds one store per process, and a
unique database per test); a server when ``TRACKSTREAM_CLICKHOUSE_URL`` is set or Docker answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest
from services.kafka_broker import BrokerError, KafkaBroker, missing_tools

if TYPE_CHECKING:
    from trackstream.schemas.settings import KafkaSettings

log = logging.getLogger("trackstream.tests")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Services given by the environment (as `make test` does) reach tests only through the fixtures below: no test,
# and no subprocess a test starts, talks to Kafka or a ClickHouse server unless it asked for one.
CONFIGURED_KAFKA = os.environ.pop("TRACKSTREAM_KAFKA_BOOTSTRAP", None)
CONFIGURED_CLICKHOUSE = os.environ.pop("TRACKSTREAM_CLICKHOUSE_URL", None)
CONFIGURED_SECURED_KAFKA = os.environ.pop("TRACKSTREAM_TEST_KAFKA_SECURED", None)
# Kafka security settings a shell may export for the CLI would turn every plaintext client of the suite into a
# SASL/TLS one: the secured listener reaches tests only through `secured_kafka`.
for _variable in [v for v in os.environ if v.startswith(("TRACKSTREAM_KAFKA_SECURITY_", "TRACKSTREAM_KAFKA_SASL_",
                                                         "TRACKSTREAM_KAFKA_SSL_"))]:
    del os.environ[_variable]
PROCESSED_SUFFIXES = ("metrics", "metrics.dlq", "points", "steps", "entities")


def service_unavailable(reason: str) -> NoReturn:
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
def kafka_bootstrap(request: pytest.FixtureRequest) -> Iterator[str]:
    """Bootstrap address (host:port) of a real Kafka broker for the whole session."""
    if CONFIGURED_KAFKA:
        yield CONFIGURED_KAFKA
        return
    if docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:4.1.1").with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    broker: KafkaBroker = request.getfixturevalue("own_kafka_broker")
    yield broker.bootstrap


@pytest.fixture(scope="session")
def own_kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """The project's own broker, started once per session for `kafka_bootstrap` and `secured_kafka` alike."""
    missing = missing_tools()
    if missing:
        service_unavailable(f"no Kafka broker: {', '.join(missing)} not installed (or set TRACKSTREAM_KAFKA_BOOTSTRAP)")
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    try:
        broker.start()
    except BrokerError as exc:
        broker.stop()
        service_unavailable(f"the project's Kafka broker did not start: {exc}")
        return
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def secured_kafka(request: pytest.FixtureRequest) -> KafkaSettings:
    """Settings (SASL_SSL, SCRAM, the broker's CA) for the secured listener of the session's Kafka broker.

    ``TRACKSTREAM_TEST_KAFKA_SECURED`` names its ``secured.json``; else the fixtures' own broker provides it, and
    only when that broker is also the one of `kafka_bootstrap`, so a test may use both listeners together.
    """
    if CONFIGURED_SECURED_KAFKA:
        return secured_settings(Path(CONFIGURED_SECURED_KAFKA))
    if CONFIGURED_KAFKA:
        service_unavailable("TRACKSTREAM_KAFKA_BOOTSTRAP is set but TRACKSTREAM_TEST_KAFKA_SECURED is not: set it to "
                            "the secured.json of that broker's SASL_SSL listener (make test does)")
    if docker_answers():
        service_unavailable("the testcontainers Kafka has no SASL_SSL listener: set TRACKSTREAM_KAFKA_BOOTSTRAP and "
                            "TRACKSTREAM_TEST_KAFKA_SECURED to the project's broker (make test does)")
    broker: KafkaBroker = request.getfixturevalue("own_kafka_broker")
    return secured_settings(broker.secured_file)


def secured_settings(path: Path) -> KafkaSettings:
    """`KafkaSettings` from a broker's ``secured.json`` (written by tests/services/kafka_broker.py)."""
    from trackstream.schemas.errors import ConfigError
    from trackstream.schemas.settings import KafkaSettings, Secret

    try:
        spec = json.loads(path.read_text())
        settings = KafkaSettings(
            bootstrap=spec["bootstrap"],
            security_protocol=spec["security_protocol"],
            sasl_mechanism=spec["sasl_mechanism"],
            sasl_username=spec["sasl_username"],
            sasl_password=Secret(spec["sasl_password"]),
            ssl_cafile=spec["ssl_cafile"],
        )
        settings.check()
    except (OSError, ValueError, KeyError, TypeError, ConfigError) as exc:
        # The type and the message only: a JSON error's message could quote the password.
        detail = f"missing key {exc}" if isinstance(exc, KeyError) else type(exc).__name__
        service_unavailable(f"no secured Kafka listener: cannot use {path} ({detail})")
    return settings


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


async def _create_topics(bootstrap: str, names: list[str], partitions: int, **options: Any) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(**{"bootstrap_servers": bootstrap, **options})
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
def secured_topic_factory(secured_kafka: KafkaSettings) -> Callable[..., str]:
    """`topic_factory`, through the secured listener (the admin client authenticates with SCRAM over TLS)."""

    def create(partitions: int = 3, prefix: str = "t") -> str:
        name = unique_name(prefix)
        options: Mapping[str, Any] = secured_kafka.client_options()
        asyncio.run(_create_topics(options["bootstrap_servers"], [name], partitions, **options))
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


CHROMIUM = os.environ.get("TRACKSTREAM_CHROMIUM", "/usr/bin/chromium")


# Module scope: Playwright's sync API runs an event loop in this thread while it is up, which would break the
# asyncio.run() of the tests that follow.
@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """A headless Chromium driven by Playwright: Debian's build (``make test`` installs it), or
    ``$TRACKSTREAM_CHROMIUM``; Playwright's own browser downloads are not used."""
    if not Path(CHROMIUM).exists():
        service_unavailable(f"no Chromium at {CHROMIUM}: apt-get install chromium (make test does), or set "
                            "TRACKSTREAM_CHROMIUM")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: the suite runs as root in CI, where Chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()
