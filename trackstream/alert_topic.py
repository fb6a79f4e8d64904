"""Alert rules of a Kafka deployment: the ``<prefix>.alert_rules`` topic, which the stream workers follow.

Each message is one version of one rule: key the rule id (UTF-8), value :func:`trackstream.schemas.alerts.
encode_rule`'s JSON. As in an embedded store's rules file (:mod:`trackstream.alert_rules`), per rule id the highest
``version`` wins (later offsets break ties), and a ``deleted`` version or a Kafka tombstone (a record without a
value) for its key removes the rule, as the workers read it (:mod:`trackstream.streams.rules_feed`). The topic is
compacted, so it keeps the newest message of each id; this module creates it as the workers do (one partition,
compacted) when it is missing.

Reading takes the whole topic, from the beginning up to the end offsets seen at the start, with a consumer of no
group (nothing is committed). Security settings come from
:class:`~trackstream.schemas.settings.KafkaSettings` (``TRACKSTREAM_KAFKA_*``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from typing import Any, Final

from trackstream.schemas.alerts import AlertRule, decode_rule, encode_rule
from trackstream.schemas.errors import TrackstreamError
from trackstream.schemas.settings import KafkaSettings, diagnose_connect_failure
from trackstream.schemas.topics import Topics

log = logging.getLogger(__name__)

TIMEOUT_S: Final = 30.0


class KafkaUnavailable(TrackstreamError):
    """Kafka could not be reached, or did not answer in time (retriable)."""

    retriable = True


async def _connected(client: Any, kafka: KafkaSettings) -> None:
    """Start an aiokafka client (producer, consumer or admin); raises :class:`ConfigError` for settings Kafka
    rejects, else :class:`KafkaUnavailable`."""
    try:
        await asyncio.wait_for(client.start(), TIMEOUT_S)
    except Exception as exc:
        with contextlib.suppress(Exception):
            await (client.close() if hasattr(client, "close") else client.stop())
        problem = await diagnose_connect_failure(kafka, exc, "trackstream alerts")
        if problem is not None:
            raise problem from exc
        raise KafkaUnavailable(f"cannot reach Kafka at {kafka.bootstrap}: {exc or type(exc).__name__}") from exc


async def _partitions(kafka: KafkaSettings, topic: str, *, create: bool) -> int:
    """How many partitions ``topic`` has (0: it does not exist); with ``create``, a missing topic is created as the
    stream workers create it (one partition, compacted) first."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    from trackstream.schemas.kafka_clients import topic_durability

    admin = AIOKafkaAdminClient(**kafka.client_options(), request_timeout_ms=int(TIMEOUT_S * 1000))
    await _connected(admin, kafka)
    try:
        if topic in set(await admin.list_topics()):
            return len((await admin.describe_topics([topic]))[0]["partitions"])
        if not create:
            return 0
        replicas, durable = await topic_durability(admin)
        with contextlib.suppress(TopicAlreadyExistsError):  # another `alerts add`, or a worker, was faster
            await admin.create_topics([NewTopic(topic, 1, replicas,
                                                topic_configs={**durable, "cleanup.policy": "compact"})])
            log.info("created the alert rules topic %s", topic)
        return len((await admin.describe_topics([topic]))[0]["partitions"])
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def _read(kafka: KafkaSettings, topic: str, partitions: int) -> dict[str, AlertRule]:
    """The newest version of every rule id on the topic's ``partitions`` (removed ones included, Kafka tombstones
    applied), read from the beginning up to the end offsets seen at the start."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    newest: dict[str, AlertRule] = {}
    if not partitions:
        return newest  # no topic: no rule was ever added
    consumer = AIOKafkaConsumer(**kafka.client_options(), group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", request_timeout_ms=int(TIMEOUT_S * 1000))
    await _connected(consumer, kafka)
    try:
        assigned = [TopicPartition(topic, number) for number in range(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        end = await consumer.end_offsets(assigned)
        deadline = time.monotonic() + TIMEOUT_S
        while [tp for tp in assigned if await consumer.position(tp) < end[tp]]:
            if time.monotonic() > deadline:
                raise KafkaUnavailable(f"reading {topic} from Kafka at {kafka.bootstrap} took over {TIMEOUT_S:g} s")
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    _take(newest, record.key, record.value, f"{topic} offset {record.offset}")
    finally:
        await consumer.stop()
    return newest


def _take(newest: dict[str, AlertRule], key: bytes | None, value: bytes | None, where: str) -> None:
    """Take one record: a rule version (kept when at least as new as the one held), or a Kafka tombstone (no
    value), which removes every version of its key's rule id."""
    if value is None:
        if key is not None:
            newest.pop(key.decode(errors="replace"), None)
        return
    try:
        rule = decode_rule(value)
    except ValueError as exc:
        log.warning("%s skipped: %s", where, exc)
        return
    if rule.id not in newest or rule.version >= newest[rule.id].version:
        newest[rule.id] = rule


async def _publish(kafka: KafkaSettings, topic: str, rule: AlertRule) -> None:
    from aiokafka import AIOKafkaProducer

    from trackstream.schemas.kafka_clients import stop_producer_quietly

    producer = AIOKafkaProducer(**kafka.client_options(), acks="all", request_timeout_ms=int(TIMEOUT_S * 1000))
    await _connected(producer, kafka)
    try:
        await asyncio.wait_for(producer.send_and_wait(topic, encode_rule(rule), key=rule.id.encode()), TIMEOUT_S)
    except TimeoutError as exc:
        raise KafkaUnavailable(f"Kafka at {kafka.bootstrap} did not acknowledge the rule in {TIMEOUT_S:g} s") from exc
    finally:
        await stop_producer_quietly(producer)


def topic_rules(kafka: KafkaSettings, *, project: str | None = None) -> list[AlertRule]:
    """The rules in force on the topic (newest versions, removed ones left out), of ``project`` or all, sorted by
    project and id. Raises :class:`~trackstream.schemas.errors.ConfigError` (no bootstrap, or settings Kafka
    rejects) or :class:`KafkaUnavailable`."""
    kafka.require_bootstrap("reading the alert rules of a Kafka deployment")
    newest = asyncio.run(_rules(kafka, Topics(kafka.topic_prefix).alert_rules))
    rules = [rule for rule in newest.values() if not rule.deleted and (project is None or rule.project == project)]
    return sorted(rules, key=lambda rule: (rule.project, rule.id))


async def _rules(kafka: KafkaSettings, topic: str) -> dict[str, AlertRule]:
    return await _read(kafka, topic, await _partitions(kafka, topic, create=False))


async def _add(kafka: KafkaSettings, topic: str, rule: AlertRule) -> AlertRule:
    previous = (await _read(kafka, topic, await _partitions(kafka, topic, create=True))).get(rule.id)
    saved = dataclasses.replace(rule, version=0 if previous is None else previous.version + 1)
    await _publish(kafka, topic, saved)
    return saved


def publish_rule(kafka: KafkaSettings, rule: AlertRule) -> AlertRule:
    """Produce ``rule`` as the next version of its id (a rule added again replaces its webhook), creating the topic
    when missing; returns what was produced. Raises as :func:`topic_rules`."""
    kafka.require_bootstrap("adding an alert rule to a Kafka deployment")
    return asyncio.run(_add(kafka, Topics(kafka.topic_prefix).alert_rules, rule))


async def _remove(kafka: KafkaSettings, topic: str, rule_id: str) -> AlertRule | None:
    previous = (await _rules(kafka, topic)).get(rule_id)
    if previous is None or previous.deleted:
        return None
    await _publish(kafka, topic, dataclasses.replace(previous, version=previous.version + 1, deleted=True))
    return previous


def retract_rule(kafka: KafkaSettings, rule_id: str) -> AlertRule | None:
    """Produce the removal (a ``deleted`` version) of ``rule_id``; returns the removed rule, or None when no such
    rule is in force. Raises as :func:`topic_rules`."""
    kafka.require_bootstrap("removing an alert rule of a Kafka deployment")
    return asyncio.run(_remove(kafka, Topics(kafka.topic_prefix).alert_rules, rule_id))
