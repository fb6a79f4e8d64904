"""The project's three-broker KRaft cluster: acks=all writes to a topic of replication factor 3 survive the SIGKILL of
a broker mid-stream, and every message is read back exactly once."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import service_unavailable
from services.kafka_broker import BrokerError, KafkaCluster, missing_tools

pytestmark = pytest.mark.kafka

log = logging.getLogger("trackstream.tests")

MESSAGES = 3000
PARTITIONS = 3


@pytest.fixture
def kafka_cluster(tmp_path: Path) -> Iterator[KafkaCluster]:
    """Three combined controller + broker nodes on loopback, started by tests/services/kafka_broker.py."""
    missing = missing_tools()
    if missing:
        service_unavailable(f"no Kafka cluster: {', '.join(missing)} not installed")
    cluster = KafkaCluster(tmp_path / "cluster", size=3)
    started = time.monotonic()
    try:
        cluster.start(timeout_s=180)
    except BrokerError as exc:
        service_unavailable(f"the project's Kafka cluster did not start: {exc}")
    log.info("three-broker cluster ready in %.1f s at %s", time.monotonic() - started, cluster.bootstrap)
    try:
        yield cluster
    finally:
        cluster.stop(timeout_s=10)


async def _create_topic(bootstrap: str, topic: str) -> dict[str, str]:
    """Create ``topic`` (3 partitions, replication factor 3); return its min.insync.replicas as the broker sees it."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 3)])
        described = await admin.describe_topics([topic])
        assert all(len(p["replicas"]) == 3 for p in described[0]["partitions"]), described
        deadline = time.monotonic() + 30
        while True:  # the broker that answers may not know the new topic yet: its entries come back empty
            configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
            entries = configs[0].to_object()["resources"][0]["config_entries"]
            if entries or time.monotonic() > deadline:
                return {entry["config_names"]: entry["config_value"] for entry in entries}
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def _produce_through_kill(cluster: KafkaCluster, topic: str, victim: int) -> None:
    """Send MESSAGES with acks=all: a third acknowledged, then a burst queued, then broker ``victim`` SIGKILLed while
    that burst is in flight, then the rest."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all", enable_idempotence=True,
                                request_timeout_ms=60_000, retry_backoff_ms=200, linger_ms=5)
    await producer.start()

    async def send(indexes: range) -> list[asyncio.Future[object]]:
        return [await producer.send(topic, str(i).encode(), key=str(i % 31).encode()) for i in indexes]

    try:
        first, burst = MESSAGES // 3, MESSAGES // 3 + 300
        await asyncio.wait_for(asyncio.gather(*await send(range(first))), timeout=60)
        in_flight = await send(range(first, burst))
        cluster.stop_broker(victim)
        log.info("broker %d SIGKILLed with %d sends in flight", victim + 1, sum(not f.done() for f in in_flight))
        rest = await send(range(burst, MESSAGES))
        await asyncio.wait_for(asyncio.gather(*in_flight, *rest), timeout=120)
    finally:
        await producer.stop()


async def _consume_all(bootstrap: str, topic: str, *, timeout_s: float) -> list[bytes]:
    """Every message of ``topic`` from the beginning up to the end offsets seen at start."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        values: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
            assert time.monotonic() < deadline, f"read {len(values)} of {sum(end.values())} messages in time"
            batches = await consumer.getmany(timeout_ms=500)
            values.extend(record.value for records in batches.values() for record in records)
        return values
    finally:
        await consumer.stop()


def test_acks_all_survives_a_broker_sigkill(kafka_cluster: KafkaCluster) -> None:
    topic = f"cluster_{uuid.uuid4().hex[:10]}"
    configs = asyncio.run(_create_topic(kafka_cluster.bootstrap, topic))
    assert configs["min.insync.replicas"] == "2"
    victim = kafka_cluster.leader(topic, 0)

    asyncio.run(_produce_through_kill(kafka_cluster, topic, victim))
    assert not kafka_cluster.nodes[victim].alive()

    live = ",".join(node.bootstrap for i, node in enumerate(kafka_cluster.nodes) if i != victim)
    values = asyncio.run(_consume_all(live, topic, timeout_s=60))
    counts = collections.Counter(values)
    assert len(values) == MESSAGES, f"{len(values)} messages read back, {MESSAGES} sent"
    assert set(counts) == {str(i).encode() for i in range(MESSAGES)}
    assert max(counts.values()) == 1
