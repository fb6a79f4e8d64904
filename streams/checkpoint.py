"""Entity-state checkpoints in a compacted Kafka topic, one partition per source partition.

Why not a faust ``Table``: its changelog recovery hung on about one rebalance in four here (faust-streaming
0.15.3: "No event received for active tp ... since recovery start", the worker never becomes ready again),
and a table refuses writes from outside the current event. This topic is written with an explicit partition
(the source partition of the entity, so no partitioner has to agree), keyed by entity key, and read back
with a plain consumer when a partition is assigned: the newest value per key is the entity's state.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition

from trackstream.schemas.settings import KafkaSettings
from trackstream.streams.records import StreamsError

log = logging.getLogger(__name__)

LOAD_TIMEOUT_S: Final = 120.0


def state_topic(app_id: str) -> str:
    """Name of the compacted entity-state topic of stream app ``app_id``: ``<app_id>-entity-state``."""
    return f"{app_id}-entity-state"


async def load_partition(kafka: KafkaSettings, topic: str, partition: int) -> dict[bytes, bytes]:
    """The newest state bytes per entity key in one partition of the state topic (reached with ``kafka``)."""
    consumer = AIOKafkaConsumer(**kafka.client_options(), enable_auto_commit=False, group_id=None,
                                fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=64 * 1024 * 1024)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        states: dict[bytes, bytes] = {}
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while await consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise StreamsError(f"loading {topic}[{partition}] took over {LOAD_TIMEOUT_S}s")
            batches = await consumer.getmany(tp, timeout_ms=500)
            for record in batches.get(tp, ()):
                if record.key is None:
                    continue
                if record.value is None:
                    states.pop(record.key, None)
                else:
                    states[record.key] = record.value
        log.info("state of partition %d loaded: %d entities", partition, len(states))
        return states
    finally:
        await consumer.stop()
