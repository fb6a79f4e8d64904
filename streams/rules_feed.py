"""The alert rules of a Kafka deployment: ``<prefix>.alert_rules`` followed by every stream worker, and the webhooks
of the alerts they fire.

Every worker evaluates every rule (a rule watches entities of any partition), so the topic is not consumed in the
worker's consumer group: :class:`RulesFeed` reads all of its partitions with a consumer of its own (no group, no
commits), from the earliest offset, for as long as the worker runs. The topic is keyed by rule id and compacted;
each record is one version of a rule (:func:`~trackstream.schemas.alerts.encode_rule`): per id the highest
``version`` wins (a later record breaks a tie, :class:`RuleVersions`), a winner marked ``deleted`` removes the
rule, and so does a Kafka tombstone (a record without a value) for its key. Whenever the rules in force change,
the feed hands them to the processor (``apply``). A record that is not a rule is logged at WARNING once per offset
and skipped; no record and no broker failure stops the worker (the feed reconnects with capped backoff).

At start the feed notes the topic's end offsets; :meth:`RulesFeed.wait_ready` returns once it has read up to
them (the worker calls it before its first envelope, so rules added before it started apply from the first
point) or after a timeout, with a WARNING (rules still apply as soon as they are read).

Webhooks: :meth:`RulesFeed.notify` queues each alert for its rule's webhook (rules by id from the current set) on
a :class:`~trackstream.streams.webhooks.WebhookNotifier`, made once some rule has a webhook. The worker calls it
once the outputs carrying the alerts are acknowledged by Kafka. Logs name a webhook by :func:`redact_url` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any, Final

from trackstream.schemas.alerts import Alert, AlertRule, decode_rule
from trackstream.schemas.settings import KafkaSettings
from trackstream.streams.webhooks import redact_url

__all__ = ["RULES_WAIT_S", "RuleVersions", "RulesFeed", "warn_unless_compacted"]

log = logging.getLogger(__name__)

RULES_WAIT_S: Final = 30.0  # the longest a worker's first envelope waits for the rules topic to be read
POLL_MS: Final = 500
BACKOFF_MIN_S: Final = 0.2
BACKOFF_MAX_S: Final = 10.0
STOP_TIMEOUT_S: Final = 5.0
WEBHOOK_CLOSE_S: Final = 10.0
_WARNED_MAX: Final = 100_000  # damaged offsets remembered (so each is logged once)
_URL: Final = re.compile(r"(?i)\bhttps?://[^\s\"'<>]*")


def _redacted(text: str) -> str:
    """``text`` with every URL in it as :func:`redact_url` shows it (a rule that does not decode may hold one)."""
    return _URL.sub(lambda match: redact_url(match[0]), text)


class _ArgsAsTuple(logging.Filter):
    """Gives a record whose ``args`` are None (the webhook notifier's redacted httpx records) empty args: faust's
    log formatter (mode's ``ExtensionFormatter``) turns None into ``(None,)`` and then fails to format the
    message, printing a "Logging error" traceback for every webhook request."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args is None:
            record.args = ()
        return True


_ARGS_TUPLE: Final = _ArgsAsTuple()


class RuleVersions:
    """The newest version of every rule id seen (tombstones included); pure.

    ``add`` a decoded rule: it replaces the one of its id unless that one has a higher ``version`` (equal versions:
    the later wins, as in the embedded rules file). ``forget`` an id (a Kafka tombstone for its key).
    :meth:`in_force` is what the processor evaluates.
    """

    def __init__(self, rules: Iterable[AlertRule] = ()) -> None:
        self._newest: dict[str, AlertRule] = {}
        for rule in rules:
            self.add(rule)

    def add(self, rule: AlertRule) -> None:
        """Take ``rule`` as its id's version if it is at least as new as the one held."""
        held = self._newest.get(rule.id)
        if held is None or rule.version >= held.version:
            self._newest[rule.id] = rule

    def forget(self, rule_id: str) -> None:
        """Drop every version of ``rule_id``."""
        self._newest.pop(rule_id, None)

    def in_force(self) -> dict[str, AlertRule]:
        """Rule id -> the newest version, for the ids whose newest version is not ``deleted``; sorted by id."""
        return {rule_id: rule for rule_id, rule in sorted(self._newest.items()) if not rule.deleted}


class RulesFeed:
    """Follows the rules topic (see the module); run :meth:`run` as a task of the worker's event loop.

    ``apply(rules)`` is called (on the loop) with the rules in force, sorted by id, each time they change.
    ``notifier_factory`` makes the webhook notifier (default :class:`~trackstream.streams.webhooks.WebhookNotifier`).
    """

    def __init__(self, kafka: KafkaSettings, topic: str, apply: Callable[[list[AlertRule]], object], *,
                 poll_ms: int = POLL_MS, max_backoff_s: float = BACKOFF_MAX_S,
                 notifier_factory: Callable[[], Any] | None = None) -> None:
        self.kafka = kafka
        self.topic = topic
        self.apply = apply
        self.poll_ms = poll_ms
        self.max_backoff_s = max_backoff_s
        self.rules: dict[str, AlertRule] = {}  # in force, by id, as last applied
        self.skipped = 0  # records that are not rules
        self._versions = RuleVersions()
        self._applied = False
        self._ready = asyncio.Event()
        self._waited = False
        self._warned: set[tuple[int, int]] = set()
        self._notifier_factory = notifier_factory
        self._notifier: Any = None
        self._no_notifier = False

    @property
    def waited(self) -> bool:
        """True once :meth:`wait_ready` returned (the worker then stops asking)."""
        return self._waited

    async def wait_ready(self, timeout_s: float = RULES_WAIT_S) -> bool:
        """Return once the topic was read up to its end offsets at start (True), or after ``timeout_s`` (False,
        with a WARNING; the rules apply whenever they are read). Immediate after the first call."""
        if self._waited or self._ready.is_set():
            self._waited = True
            return self._ready.is_set()
        try:
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        except TimeoutError:
            log.warning("alert rules: %s was not read to its end within %.0f s; processing starts without them, "
                        "they apply from the point they are read on", self.topic, timeout_s)
        self._waited = True
        return self._ready.is_set()

    async def run(self) -> None:
        """Follow the topic until cancelled; a failure (broker away, topic missing) restarts the consumer after a
        backoff, the rules read so far staying in force. Never raises but :class:`asyncio.CancelledError`."""
        delay, failures = BACKOFF_MIN_S, 0
        while True:
            consumer: Any = None
            try:
                consumer = self._consumer()
                await consumer.start()
                end = await consumer.end_offsets(list(consumer.assignment()))
                if failures:
                    log.info("alert rules: reading %s again after %d failed attempt(s)", self.topic, failures)
                delay, failures = BACKOFF_MIN_S, 0
                await self._follow(consumer, end)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.log(logging.WARNING if failures == 1 else logging.DEBUG, "alert rules: reading %s failed "
                        "(%s: %s); retrying in %.1f s", self.topic, type(exc).__name__, _redacted(str(exc)), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
            finally:
                if consumer is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(consumer.stop(), STOP_TIMEOUT_S)

    def _consumer(self) -> Any:
        from aiokafka import AIOKafkaConsumer

        return AIOKafkaConsumer(self.topic, **self.kafka.client_options(), group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")

    async def _follow(self, consumer: Any, end: dict[Any, int]) -> None:
        """Read forever: apply the rules after every batch that changed them; ready once ``end`` is reached."""
        while True:
            batches = await consumer.getmany(timeout_ms=self.poll_ms)
            for tp, records in batches.items():
                for record in records:
                    self.take(tp.partition, record.offset, record.key, record.value)
            if batches or not self._applied:
                self._publish()
            if not self._ready.is_set() and await _reached(consumer, end):
                self._ready.set()
                log.info("alert rules: read %s to its end: %d rule(s) in force", self.topic, len(self.rules))

    def take(self, partition: int, offset: int, key: bytes | None, value: bytes | None) -> None:
        """One record of the topic: a rule version, a tombstone, or (logged once per offset, skipped) neither."""
        if value is None and key:
            self._versions.forget(key.decode(errors="replace"))
            return
        try:
            rule = decode_rule(value if value is not None else b"")
        except Exception as exc:
            self.skipped += 1
            if (partition, offset) not in self._warned:
                if len(self._warned) < _WARNED_MAX:
                    self._warned.add((partition, offset))
                log.warning("alert rules: skipped the record at %s[%d]@%d, not a rule: %s", self.topic, partition,
                            offset, _redacted(str(exc))[:500])
            return
        self._versions.add(rule)

    def _publish(self) -> None:
        """Hand the rules in force to ``apply`` if they changed (or were never handed over)."""
        rules = self._versions.in_force()
        if self._applied and rules == self.rules:
            return
        self.apply(list(rules.values()))
        self.rules, self._applied = rules, True
        hooked = sum(1 for rule in rules.values() if rule.webhook)
        log.info("alert rules: %d in force (%d with a webhook)", len(rules), hooked)
        if hooked and self._notifier is None and not self._no_notifier:
            try:
                self._notifier = self._make_notifier()
            except Exception as exc:  # e.g. httpx missing: alerts are still stored, webhooks are not called
                self._no_notifier = True
                log.warning("alert webhooks disabled: %s: %s", type(exc).__name__, exc)

    def _make_notifier(self) -> Any:
        if self._notifier_factory is not None:
            return self._notifier_factory()
        from trackstream.streams.webhooks import _HTTP_LOGGERS, WebhookNotifier

        notifier = WebhookNotifier()  # installs its redacting filter on the HTTP loggers: ours goes after it
        for name in _HTTP_LOGGERS:
            logger = logging.getLogger(name)
            if _ARGS_TUPLE not in logger.filters:
                logger.addFilter(_ARGS_TUPLE)
        return notifier

    def notify(self, alerts: Iterable[Alert]) -> int:
        """Queue each (durable) alert for its rule's webhook, the rule as now in force; returns how many were
        queued. Never blocks, never raises."""
        queued = 0
        for alert in alerts:
            rule = self.rules.get(alert.rule_id)
            if rule is not None and rule.webhook and self._notifier is not None:
                queued += bool(self._notifier.notify(rule, alert))
        return queued

    def close(self, timeout_s: float = WEBHOOK_CLOSE_S) -> None:
        """Deliver the webhooks still queued (up to ``timeout_s``) and stop the notifier; blocking."""
        notifier, self._notifier, self._no_notifier = self._notifier, None, True  # none is made after this
        if notifier is not None:
            notifier.close(timeout_s=timeout_s)


async def _reached(consumer: Any, end: dict[Any, int]) -> bool:
    """Whether the consumer's position in each partition of ``end`` is at or past its offset there."""
    assigned = consumer.assignment()
    for tp, offset in end.items():
        if tp in assigned and await consumer.position(tp) < offset:
            return False
    return True


async def warn_unless_compacted(admin: Any, topic: str) -> None:
    """Log a WARNING when ``topic`` (existing) is not compacted: its oldest rules would expire with retention.
    Best effort, from a started aiokafka admin client: a failure to look is logged at DEBUG."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                                                 configs={"cleanup.policy": None})])
        policy = next(str(entry[1]) for response in responses for resource in response.resources
                      for entry in resource[4] if entry[0] == "cleanup.policy")
    except Exception as exc:
        log.debug("could not read the cleanup.policy of %s: %r", topic, exc)
        return
    if "compact" not in policy:
        log.warning("%s has cleanup.policy=%s: rules older than its retention will be lost; make it compacted "
                    "(kafka-configs.sh --alter --entity-type topics --entity-name %s --add-config "
                    "cleanup.policy=compact)", topic, policy, topic)
