"""The test harness talks to real services: a Kafka broker and the chDB engine."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from conftest import ClickHouseTarget


async def _produce_and_consume(bootstrap: str, topic: str, count: int) -> dict[int, list[bytes]]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for index in range(count):
            await producer.send(topic, str(index).encode(), key=f"key-{index % 7}".encode())
        await producer.flush()
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=f"{topic}-reader")
    await consumer.start()
    by_partition: dict[int, list[bytes]] = {}
    try:
        received = 0
        while received < count:
            batches = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 30)
            for partition, records in batches.items():
                by_partition.setdefault(partition.partition, []).extend(r.value for r in records)
                received += len(records)
    finally:
        await consumer.stop()
    return by_partition


@pytest.mark.kafka
def test_kafka_round_trip_over_three_partitions(topic_factory: Callable[..., str], kafka_bootstrap: str) -> None:
    topic = topic_factory(partitions=3)
    by_partition = asyncio.run(_produce_and_consume(kafka_bootstrap, topic, 300))
    values = sorted(int(v) for records in by_partition.values() for v in records)
    assert values == list(range(300))
    assert set(by_partition) == {0, 1, 2}


def test_topic_prefix_factory_gives_unique_families(topic_prefix_factory: Callable[..., str]) -> None:
    assert topic_prefix_factory() != topic_prefix_factory()


def test_chdb_create_insert_read_back(clickhouse_backend: ClickHouseTarget) -> None:
    if clickhouse_backend.kind != "chdb":
        pytest.skip("the server round trip is covered by the sinks tests")
    import chdb

    connection = chdb.connect(str(clickhouse_backend.data_dir))
    db = clickhouse_backend.database
    connection.query(f"CREATE DATABASE IF NOT EXISTS {db}")
    connection.query(f"CREATE TABLE {db}.t (step Int64, value Float64) ENGINE = MergeTree ORDER BY step")
    connection.query(f"INSERT INTO {db}.t VALUES (1, 0.5), (2, nan), (3, -inf)")
    rows = connection.query(f"SELECT step, toString(value) FROM {db}.t ORDER BY step", "CSV").data()
    assert rows.split() == ['1,"0.5"', '2,"nan"', '3,"-inf"']
    count = connection.query("SELECT count() FROM {db:Identifier}.t WHERE value > {v:Float64}", "CSV",
                             params={"db": db, "v": 0.1})
    assert count.data().strip() == "1"
