"""The faust-streaming worker: wires ``<prefix>.metrics`` through a :class:`~trackstream.streams.processor.Processor`.

faust moves bytes and runs the consumer group: one agent takes envelopes (manual acks), one timer flushes,
one emits timed-out step aggregates. Entity state is checkpointed in ``<app_id>-entity-state`` (compacted,
one partition per source partition, see :mod:`trackstream.streams.checkpoint`). The ordering that makes at-least-once
safe with dedup, per flush (every ``batch_max_events`` events or ``batch_within_ms``):

1. process envelopes as they come (pure Python, no awaits, under a lock);
2. on flush, enqueue every output message; every ``state_interval_ms`` (and on a rebalance or stop) also
   snapshot the entities changed since the last snapshot (under the lock);
3. a committer task, flush after flush: **waits until the broker has the outputs**; on a snapshot flush it then
   sends the snapshot to the state topic and acks the events of this flush and of the flushes since the last
   snapshot; faust commits their offsets later, after flushing the producer. Processing continues meanwhile.

Outputs leave every flush (``batch_within_ms``, for latency); state is snapshotted at a slower cadence because
each snapshot rewrites whole entity states (the pending cross-rank step columns included): at 20 ms that was
as many bytes as the outputs themselves.

So a committed offset never runs ahead of state, and state never runs ahead of outputs. After a crash the
worker replays from the committed offset against state that is at least as new: envelopes the state already
holds are dropped as duplicates, the others are processed again and yield the same records as before (the
processing is deterministic), which sinks store idempotently.

Nothing a worker writes can stop it: every message is at most ``RECORD_BYTES_MAX`` (outputs split, dead letters
cut, :mod:`trackstream.streams.records`), and the committer (:class:`~trackstream.streams.delivery.Delivery`) sends a
failed message again, alone, with capped backoff, until the broker has it; the other messages of its flush are not
lost, and the flush's events are acked only after all of them. A broker outage is reported by two WARNINGs
(:mod:`trackstream.streams.outage`), the Kafka clients' own errors meanwhile logged at DEBUG.

On a rebalance, revoked partitions are flushed and their entities dropped from memory; an assigned partition
is loaded from the state topic before its first envelope is processed.

Alerts: every worker follows ``<prefix>.alert_rules`` whole (:class:`~trackstream.streams.rules_feed.RulesFeed`, a
task of its own, no consumer group), read to its end before the first envelope is processed. Alert transitions
leave with the other outputs (``<prefix>.alerts``); the committer hands a flush's alerts to the rules' webhooks
once the broker has its outputs, and delivers the webhooks still queued when the worker stops.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Final

import faust
import faust.transport.drivers.aiokafka  # its aiokafka loggers exist before the log filter is installed

from trackstream.schemas.alerts import Alert
from trackstream.schemas.envelope import MAX_ENVELOPE_BYTES
from trackstream.schemas.kafka_clients import pick_compression, topic_durability
from trackstream.schemas.settings import KafkaSettings, diagnose_connect_failure
from trackstream.schemas.topics import Topics
from trackstream.streams.checkpoint import load_partition, state_topic
from trackstream.streams.delivery import Delivery, Pending, oversize_rescue
from trackstream.streams.liveness import DEFAULT_HEARTBEAT_TIMEOUT_MS
from trackstream.streams.outage import BrokerHealth, KafkaLogFilter, install
from trackstream.streams.processor import DEFAULT_STEP_TIMEOUT_MS, Processor, tune_gc
from trackstream.streams.records import OutMessage, Output, SourcePosition, StreamsError, output_messages
from trackstream.streams.rules_feed import RULES_WAIT_S, RulesFeed, warn_unless_compacted
from trackstream.streams.transport import App

log = logging.getLogger(__name__)

DEFAULT_APP_ID: Final = "trackstream-streams"
MAX_REQUEST_BYTES: Final = 16 * 1024 * 1024
PRODUCER_BATCH_BYTES: Final = 1024 * 1024
PROBE_TIMEOUT_MS: Final = 5_000
_Flushed = tuple[list[Pending], list[OutMessage], list[Any], list[Alert]]


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Everything a worker needs; ``app_id`` is the consumer group and the changelog topic's prefix."""

    kafka: KafkaSettings
    partitions: int
    app_id: str
    data_dir: str
    step_timeout_ms: int = DEFAULT_STEP_TIMEOUT_MS
    heartbeat_timeout_ms: int = DEFAULT_HEARTBEAT_TIMEOUT_MS
    tick_interval_ms: int = 1_000
    batch_max_events: int = 256
    batch_within_ms: int = 20
    state_interval_ms: int = 500
    commit_interval_ms: int = 1_000
    max_envelope_bytes: int = MAX_ENVELOPE_BYTES
    session_timeout_ms: int = 10_000
    rules_wait_s: float = RULES_WAIT_S


class StreamsWorker:
    """Holds the processor and the faust objects of one worker process."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.topics = Topics(config.kafka.topic_prefix)
        self.app = _make_app(config)
        self.source = self.app.topic(self.topics.metrics, key_type=bytes, value_type=bytes,
                                     key_serializer="raw", value_serializer="raw",
                                     partitions=config.partitions)
        self.state_topic = state_topic(config.app_id)
        self.processor = Processor(step_timeout_ms=config.step_timeout_ms,
                                   max_envelope_bytes=config.max_envelope_bytes,
                                   heartbeat_timeout_ms=config.heartbeat_timeout_ms)
        self._loaded: dict[int, asyncio.Task[None]] = {}
        self.lock = asyncio.Lock()
        self._events: list[Any] = []
        self._unsnapshotted: list[Any] = []  # events flushed since the last state snapshot (acked with it)
        self._snapshot_at = 0.0
        self._out = Output()
        self._stream: Any = None
        self.health = BrokerHealth(config.kafka.bootstrap or "?")
        self.log_filter = KafkaLogFilter(self.health)
        install(self.log_filter)
        self.delivery = Delivery(self._send, health=self.health, rescue=oversize_rescue(self.topics))
        self._commits: asyncio.Queue[_Flushed] = asyncio.Queue()
        self.rules = RulesFeed(config.kafka, self.topics.alert_rules, self.processor.set_alert_rules)
        self.app.task(self.rules.run)
        self.app.task(self._committer)
        self.app.task(self._watch_broker)
        self.app.agent(self.source, name="process-envelopes")(self._agent)
        self.app.timer(config.batch_within_ms / 1000, name="flush")(self._flush_timer)
        self.app.timer(config.tick_interval_ms / 1000, name="step-timeouts")(self._tick)
        self.app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        self.app.on_partitions_assigned.connect(self._on_assigned)  # type: ignore[arg-type]

    def _ensure_loaded(self, partition: int) -> asyncio.Task[None]:
        task = self._loaded.get(partition)
        if task is None:
            task = self._loaded[partition] = asyncio.ensure_future(self._load(partition))
        return task

    async def _load(self, partition: int) -> None:
        states = await load_partition(self.config.kafka, self.state_topic, partition)
        self.processor.restore(states)
        for key in states:
            log.info("entity %s: state restored from the checkpoint topic", key.decode(errors="replace"))

    async def _agent(self, stream: Any) -> None:
        manual = stream.noack()
        self._stream = manual
        async for event in manual.events():
            if not self.rules.waited:  # rules added before the worker started apply from the first envelope
                await self.rules.wait_ready(self.config.rules_wait_s)
            loading = self._ensure_loaded(event.message.partition)
            if not loading.done():
                await loading
            loading.result()  # a failed load crashes the agent rather than process without state
            async with self.lock:
                self._take(event)
            if len(self._events) >= self.config.batch_max_events:
                async with self.lock:
                    await self._flush()

    def _take(self, event: Any) -> None:
        # Never skip an event, even one of a partition being revoked: its ack may be committed once the
        # partition is assigned back. Processing it twice is harmless (identical outputs, dedup).
        message = event.message
        self._events.append(event)
        source = SourcePosition(message.topic, message.partition, message.offset)
        self._out.extend(self.processor.process(message.value, source=source, key=message.key))

    async def _flush_timer(self) -> None:
        async with self.lock:
            await self._flush()

    async def _tick(self) -> None:
        async with self.lock:
            self._out.extend(self.processor.tick())
            await self._flush()

    async def _flush(self, *, snapshot: bool = False) -> None:
        """Hand the outputs to the committer; with ``snapshot`` (or ``state_interval_ms`` after the last one) also
        the state they came from and the events it covers, in order.

        Runs under the lock and only enqueues: the state snapshot is taken now, so processing goes on while
        the committer waits for the broker. Events of a flush without a snapshot wait for the next one.
        """
        loop = asyncio.get_running_loop()
        snapshot = snapshot or loop.time() - self._snapshot_at >= self.config.state_interval_ms / 1000
        if not (self._events or not self._out.is_empty() or (snapshot and self._unsnapshotted)):
            return
        self._unsnapshotted.extend(self._events)
        self._events = []
        out, self._out = self._out, Output()
        pending = [await self.delivery.submit(msg) for msg in output_messages(out, self.topics)]
        states: list[OutMessage] = []
        events: list[Any] = []
        if snapshot:
            self._snapshot_at = loop.time()
            states = [OutMessage(self.state_topic, key, blob, self.processor.partition_of(key))
                      for key, blob in self.processor.take_dirty().items()]
            events, self._unsnapshotted = self._unsnapshotted, []
        self._commits.put_nowait((pending, states, events, out.alerts))

    async def _send(self, message: OutMessage) -> Any:
        """Hand one message to faust's producer; returns its delivery future."""
        return await self.app.producer.send(message.topic, message.key, message.value, message.partition, None, None)

    async def _committer(self) -> None:
        """Per flush, in order: outputs delivered (then its alerts handed to the webhooks), then state delivered,
        then events acked (offsets committable). Delivers the queued webhooks when cancelled (the worker stops).

        A message that fails is sent again until the broker has it (:class:`Delivery`): a flush's events are acked
        only once all of its outputs, dead letters and state are durable.
        """
        try:
            while True:
                pending, states, events, alerts = await self._commits.get()
                try:
                    await self.delivery.settle(pending)
                    self.rules.notify(alerts)
                    await self.delivery.deliver(states)
                    for event in events:
                        await self._stream.ack(event)
                finally:
                    self._commits.task_done()
        finally:
            await asyncio.to_thread(self.rules.close)

    async def _watch_broker(self) -> None:
        """Probe Kafka when a client reports trouble (and every second while it is away); see :mod:`.outage`."""

        async def nap(seconds: float) -> None:
            install(self.log_filter)  # loggers the clients created since
            await asyncio.sleep(seconds)

        await self.health.watch(self._probe, nap)

    async def _probe(self) -> str | None:
        """None when a fresh client can fetch the cluster's metadata, else why not."""
        from aiokafka import AIOKafkaClient

        client = AIOKafkaClient(**self.config.kafka.client_options(), request_timeout_ms=PROBE_TIMEOUT_MS)
        try:
            await asyncio.wait_for(client.bootstrap(), timeout=2 * PROBE_TIMEOUT_MS / 1000)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            await client.close()
        return None

    async def _on_assigned(self, sender: Any, assigned: set[Any], **_: Any) -> None:
        """Start loading every assigned partition's state at once (the agent waits for its partition's)."""
        for tp in assigned:
            if tp.topic == self.topics.metrics:
                self._ensure_loaded(tp.partition)

    async def _on_revoked(self, sender: Any, revoked: set[Any], **_: Any) -> None:
        async with self.lock:
            await self._flush(snapshot=True)
            await self._commits.join()
            await self.app.producer.flush()  # the state a new owner (maybe this worker) will load
            partitions = {tp.partition for tp in revoked if tp.topic == self.topics.metrics}
            for partition in partitions:
                task = self._loaded.pop(partition, None)
                if task is not None and not task.done():
                    task.cancel()
            dropped = self.processor.drop_partitions(partitions)
            log.info("partitions %s revoked: %d entities dropped from memory", sorted(partitions), dropped)


def faust_credentials(kafka: KafkaSettings) -> faust.types.auth.CredentialsT | None:
    """faust's form of the shared Kafka security settings (``None`` for PLAINTEXT)."""
    if kafka.security_protocol == "PLAINTEXT":
        return None
    context = kafka.ssl_context() if kafka.security_protocol in ("SSL", "SASL_SSL") else None
    if kafka.security_protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=kafka.sasl_username, password=kafka.sasl_password.reveal() if kafka.sasl_password else None,
        ssl_context=context, mechanism=kafka.sasl_mechanism,
    )


def _make_app(config: WorkerConfig) -> faust.App:
    bootstrap = config.kafka.require_bootstrap("the stream worker")
    brokers = [f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip()]
    return App(
        config.app_id,
        broker=brokers,
        broker_credentials=faust_credentials(config.kafka),
        broker_client_id=config.kafka.client_id,
        store="memory://",
        datadir=config.data_dir,
        web_enabled=False,
        key_serializer="raw",
        value_serializer="raw",
        autodiscover=False,
        processing_guarantee="at_least_once",
        topic_partitions=config.partitions,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=config.commit_interval_ms / 1000,
        broker_session_timeout=config.session_timeout_ms / 1000,
        broker_heartbeat_interval=max(config.session_timeout_ms / 10_000, 0.5),
        producer_acks=-1,
        producer_compression_type=pick_compression("auto"),
        producer_max_request_size=MAX_REQUEST_BYTES,
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        consumer_max_fetch_size=16 * 1024 * 1024,
        stream_wait_empty=False,
    )


async def _prepare_topics(kafka: KafkaSettings, topics: Topics, partitions: int | None, state: str) -> int:
    """The source topic's partition count (created with ``partitions`` when missing), outputs created too.

    Raises :class:`ConfigError` when Kafka rejects the credentials or certificate, :class:`StreamsError`
    (retriable) when it cannot be reached, or when partition counts disagree.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(**kafka.client_options())
    try:
        await admin.start()
    except Exception as exc:
        await admin.close()
        problem = await diagnose_connect_failure(kafka, exc, "the stream worker")
        if problem is not None:
            raise problem from exc
        raise StreamsError(f"the stream worker cannot reach Kafka at {kafka.bootstrap}: {exc}", retriable=True) from exc
    try:
        existing = set(await admin.list_topics())
        if topics.metrics in existing:
            described = await admin.describe_topics([topics.metrics])
            found = len(described[0]["partitions"])
            if partitions is not None and partitions != found:
                raise StreamsError(f"{topics.metrics} has {found} partitions, the worker was told {partitions}")
            partitions = found
        partitions = partitions or 3
        replicas, durable = await topic_durability(admin)
        wanted = [topics.metrics, topics.dlq, topics.sink_dlq, *topics.sink_inputs()]
        missing = [NewTopic(name, partitions, replicas, topic_configs=dict(durable))
                   for name in wanted if name not in existing]
        if topics.alert_rules not in existing:  # tiny, read whole by every worker: one partition, newest per id
            missing.append(NewTopic(topics.alert_rules, 1, replicas,
                                    topic_configs={**durable, "cleanup.policy": "compact"}))
        else:
            await warn_unless_compacted(admin, topics.alert_rules)
        if state not in existing:  # an entity's state is one message: let it be larger than the broker's default
            missing.append(NewTopic(state, partitions, replicas, topic_configs={
                **durable, "cleanup.policy": "compact", "max.message.bytes": str(MAX_REQUEST_BYTES)}))
        elif (found_state := len((await admin.describe_topics([state]))[0]["partitions"])) != partitions:
            raise StreamsError(f"{state} has {found_state} partitions, {topics.metrics} has {partitions}")
        if missing:
            await admin.create_topics(missing)
        return partitions
    finally:
        await admin.close()


def run_worker(*, kafka: KafkaSettings | None = None, bootstrap: str | None = None, topic_prefix: str | None = None,
               partitions: int | None = None,
               app_id: str | None = None, data_dir: str | None = None,
               step_timeout_ms: int = DEFAULT_STEP_TIMEOUT_MS, tick_interval_ms: int = 1_000,
               batch_max_events: int = 256, batch_within_ms: int = 20,
               max_envelope_bytes: int = MAX_ENVELOPE_BYTES, loglevel: str = "info",
               heartbeat_timeout_ms: int = DEFAULT_HEARTBEAT_TIMEOUT_MS) -> None:
    """Run one streams worker until SIGTERM/SIGINT (blocks; exits the process like ``faust worker``).

    ``kafka`` (else ``bootstrap``/``topic_prefix`` and the ``TRACKSTREAM_KAFKA_*`` environment) says how every
    client of the worker (faust's consumer and producer, the admin client, the state loader) reaches Kafka.
    ``partitions``: partition count of ``<prefix>.metrics`` (discovered when the topic exists; it must
    match). ``app_id`` is the consumer group: workers sharing it split the partitions.
    Raises :class:`ConfigError` when no bootstrap is configured or Kafka rejects the credentials.
    """
    settings = KafkaSettings.resolve(kafka, bootstrap=bootstrap, topic_prefix=topic_prefix)
    settings.require_bootstrap("the stream worker")
    topics = Topics(settings.topic_prefix)
    app_id = app_id or f"{DEFAULT_APP_ID}-{topics.prefix}"
    found = asyncio.run(_prepare_topics(settings, topics, partitions, state_topic(app_id)))
    config = WorkerConfig(
        kafka=settings, partitions=found, app_id=app_id,
        data_dir=data_dir or ".trackstream-streams",
        step_timeout_ms=step_timeout_ms, tick_interval_ms=tick_interval_ms, batch_max_events=batch_max_events,
        batch_within_ms=batch_within_ms, max_envelope_bytes=max_envelope_bytes,
        heartbeat_timeout_ms=heartbeat_timeout_ms,
    )
    worker = StreamsWorker(config)
    tune_gc()
    faust.Worker(worker.app, loglevel=loglevel, quiet=True).execute_from_commandline()
