"""faust's Kafka transport with the one consumer setting faust fixes and trackstream cannot: the fetch wait.

faust's aiokafka driver builds its consumer with ``fetch_max_wait_ms=1500``. aiokafka keeps one fetch request in
flight per broker, covering every assigned partition that has no buffered records, and the broker holds that request
until ``fetch_max_wait_ms`` passes unless data arrives for a partition in it. While the metrics topic's partitions
wait on records the stream has not consumed yet, the request covers only quiet partitions (faust's own leader
topic), so fresh envelopes waited up to 1.5 s before the stream saw them: ~1 s of the Kafka path's latency below
saturation (measured with ``trackstream demo``). The shared
:data:`~trackstream.schemas.kafka_clients.FETCH_MAX_WAIT_MS` bounds that wait, as for the sink worker.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as driver

from trackstream.schemas.kafka_clients import FETCH_MAX_WAIT_MS


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by AIOKafkaConsumer.start() when it makes its Fetcher
        return consumer


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> Any:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(driver.Transport):
    Consumer = _Consumer


class App(faust.App):
    """A faust app whose consumer waits at most :data:`FETCH_MAX_WAIT_MS` on a fetch (see the module)."""

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)
