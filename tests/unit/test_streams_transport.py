"""The stream worker's faust transport bounds the consumer's fetch wait (faust fixes 1.5 s; see streams/transport.py).
No broker: the consumer is built, not started."""

from __future__ import annotations

import asyncio
from typing import Any

import aiokafka
import pytest
from faust.transport.drivers import aiokafka as driver

from trackstream.streams import transport


def test_the_worker_consumer_waits_at_most_fetch_max_wait_ms(monkeypatch: pytest.MonkeyPatch) -> None:
    async def build() -> Any:  # what faust's driver builds: an AIOKafkaConsumer with fetch_max_wait_ms=1500
        return aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", fetch_max_wait_ms=1500)

    consumer = asyncio.run(build())
    assert consumer._fetch_max_wait_ms == 1500  # the attribute AIOKafkaConsumer.start() hands its Fetcher
    monkeypatch.setattr(driver.AIOKafkaConsumerThread, "_create_worker_consumer", lambda self, t: consumer)
    thread = object.__new__(transport._ConsumerThread)
    assert thread._create_worker_consumer(None) is consumer
    assert consumer._fetch_max_wait_ms == transport.FETCH_MAX_WAIT_MS == 50


def test_the_app_builds_its_transport_with_that_consumer() -> None:
    app = transport.App("t-transport", broker="kafka://127.0.0.1:1", autodiscover=False, web_enabled=False,
                        store="memory://")
    made = app._new_transport()
    assert made.Consumer is transport._Consumer
    assert transport._Consumer._new_consumer_thread is not driver.Consumer._new_consumer_thread
