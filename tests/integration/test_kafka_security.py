"""Smoke tests of the broker's secured listener (SASL_SSL, SCRAM-SHA-512): plain aiokafka clients configured by
``KafkaSettings.client_options()``, as every trackstream component configures its own."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed

from trackstream.schemas.settings import KafkaSettings, Secret

pytestmark = pytest.mark.kafka

TIMEOUT_S = 30.0


async def _produce_and_consume(settings: KafkaSettings, topic: str, payload: bytes) -> list[bytes]:
    producer = AIOKafkaProducer(**settings.client_options(), request_timeout_ms=int(TIMEOUT_S * 1000))
    await asyncio.wait_for(producer.start(), TIMEOUT_S)
    try:
        await asyncio.wait_for(producer.send_and_wait(topic, payload, key=b"k"), TIMEOUT_S)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, **settings.client_options(), group_id=f"{topic}-reader",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await asyncio.wait_for(consumer.start(), TIMEOUT_S)
    received: list[bytes] = []
    try:
        async with asyncio.timeout(TIMEOUT_S):
            while not received:
                batches = await consumer.getmany(timeout_ms=1000)
                received.extend(record.value for records in batches.values() for record in records)
    finally:
        await consumer.stop()
    return received


def test_produce_and_consume_over_sasl_ssl(
    secured_kafka: KafkaSettings, secured_topic_factory: Callable[..., str]
) -> None:
    assert secured_kafka.security_protocol == "SASL_SSL"
    topic = secured_topic_factory(partitions=1, prefix="secured")
    payload = uuid.uuid4().bytes
    assert asyncio.run(_produce_and_consume(secured_kafka, topic, payload)) == [payload]


async def _connect(settings: KafkaSettings) -> None:
    """One connection (TLS handshake, then SASL) to the first bootstrap server, as every aiokafka client opens."""
    options = settings.client_options()
    host, port = options.pop("bootstrap_servers").split(",")[0].rsplit(":", 1)
    connection = await create_conn(host, int(port), request_timeout_ms=int(TIMEOUT_S * 1000), **options)
    connection.close()


async def _start_producer(settings: KafkaSettings) -> None:
    producer = AIOKafkaProducer(**settings.client_options(), request_timeout_ms=int(TIMEOUT_S * 1000))
    try:
        await producer.start()
    finally:
        await producer.stop()


def test_wrong_password_is_refused(secured_kafka: KafkaSettings, caplog: pytest.LogCaptureFixture) -> None:
    asyncio.run(asyncio.wait_for(_connect(secured_kafka), TIMEOUT_S))  # the right password connects
    wrong = dataclasses.replace(secured_kafka, sasl_password=Secret("wrong"))

    with pytest.raises(SaslAuthenticationFailed):
        asyncio.run(asyncio.wait_for(_connect(wrong), TIMEOUT_S))

    # A client gives up bootstrapping (no retry loop) and logs why.
    caplog.set_level(logging.ERROR, logger="aiokafka")
    with pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
        asyncio.run(asyncio.wait_for(_start_producer(wrong), TIMEOUT_S))
    reasons = [arg for record in caplog.records if record.name.startswith("aiokafka") for arg in record.args or ()]
    assert any(isinstance(reason, SaslAuthenticationFailed) for reason in reasons), caplog.text
