"""Alert rules on Kafka without a broker: the newest version per rule id, what the stream worker's rules feed does
with each record of ``<prefix>.alert_rules`` (damaged ones skipped and logged once per offset), webhooks routed by
rule id, and the sink side's decoding of ``<prefix>.alerts`` messages."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math

import orjson
import pytest

from trackstream.schemas.alerts import Alert, AlertRule, encode_alert, encode_rule, make_rule
from trackstream.schemas.settings import KafkaSettings
from trackstream.schemas.topics import Topics
from trackstream.sinks.checks import Malformed, Unstorable, decode_records
from trackstream.streams.delivery import oversize_rescue
from trackstream.streams.dlq import decode_dlq
from trackstream.streams.records import OutMessage
from trackstream.streams.rules_feed import RulesFeed, RuleVersions

NAN_RULE = make_rule("p", "loss", "nan", webhook="https://user:pw@hooks.example.com/T0/secret?token=abc")
ABOVE = make_rule("p", "acc", "above", value=0.9)


def _alert(rule: AlertRule, state: str = "firing") -> Alert:
    return Alert(rule_id=rule.id, when=rule.when, project="p", entity_type="run", entity_id="r1", metric="loss",
                 state=state, step=3, value=math.nan, rank=0, time_ns=1_000, message="loss is NaN", threshold=None)


class Notifier:
    def __init__(self) -> None:
        self.sent: list[tuple[AlertRule, Alert]] = []
        self.closed = False

    def notify(self, rule: AlertRule, alert: Alert) -> bool:
        self.sent.append((rule, alert))
        return True

    def close(self, timeout_s: float) -> bool:
        self.closed = True
        return True


def _feed() -> tuple[RulesFeed, list[list[AlertRule]], Notifier]:
    applied: list[list[AlertRule]] = []
    notifier = Notifier()
    feed = RulesFeed(KafkaSettings(bootstrap="127.0.0.1:9"), "ts.alert_rules", applied.append,
                     notifier_factory=lambda: notifier)
    return feed, applied, notifier


def test_the_newest_version_of_each_id_is_in_force_and_a_deleted_one_removes_it() -> None:
    v0 = NAN_RULE
    v1 = dataclasses.replace(v0, webhook="https://other.example.com/hook", version=1)
    gone = dataclasses.replace(v0, version=2, deleted=True)
    assert RuleVersions([v1, v0]).in_force() == {v0.id: v1}  # an older version read later does not win
    assert RuleVersions([v0, v1, ABOVE]).in_force() == {v0.id: v1, ABOVE.id: ABOVE}
    assert RuleVersions([v0, gone, v1]).in_force() == {}  # the tombstone is newer than v1
    again = dataclasses.replace(v0, version=3)
    assert RuleVersions([v0, gone, again]).in_force() == {v0.id: again}  # added back after its removal
    tie = dataclasses.replace(v0, webhook="https://tie.example.com/")
    assert RuleVersions([v0, tie]).in_force() == {v0.id: tie}  # equal versions: the later record wins
    versions = RuleVersions([v0, ABOVE])
    versions.forget(v0.id)
    assert list(versions.in_force()) == [ABOVE.id]


def test_the_feed_applies_the_rules_when_they_change_and_skips_damaged_records_once(
        caplog: pytest.LogCaptureFixture) -> None:
    feed, applied, _ = _feed()
    feed.take(0, 0, NAN_RULE.id.encode(), encode_rule(NAN_RULE))
    damaged = orjson.dumps({**orjson.loads(encode_rule(ABOVE)),
                            "webhook": ["https://u:hunter2@hooks.example.com/p?k=s3cret"]})
    with caplog.at_level(logging.WARNING, logger="trackstream.streams.rules_feed"):
        for _ in range(2):  # read twice (a consumer restarted from the beginning): logged once
            feed.take(0, 1, b"x", damaged)
            feed.take(0, 2, b"y", b"\xff not json")
            feed.take(0, 3, None, None)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert feed.skipped == 6
    assert "ts.alert_rules[0]@1" in warnings[0]
    assert "https://hooks.example.com/…" in warnings[0]
    assert not any(secret in text for text in warnings for secret in ("hunter2", "s3cret", "/p?"))
    feed._publish()
    feed._publish()  # unchanged: not applied again
    assert applied == [[NAN_RULE]]
    feed.take(0, 4, ABOVE.id.encode(), encode_rule(ABOVE))
    feed._publish()
    assert applied[-1] == sorted([NAN_RULE, ABOVE], key=lambda rule: rule.id)
    feed.take(0, 5, NAN_RULE.id.encode(), None)  # a Kafka tombstone for the rule's key
    feed._publish()
    assert applied[-1] == [ABOVE]
    assert len(applied) == 3


def test_durable_alerts_go_to_the_webhook_of_their_rule_as_now_in_force() -> None:
    feed, _, notifier = _feed()
    assert feed.notify([_alert(NAN_RULE)]) == 0  # no rule yet: nothing to notify
    feed.take(0, 0, None, encode_rule(NAN_RULE))
    feed.take(0, 1, None, encode_rule(ABOVE))
    feed._publish()
    assert feed.notify([_alert(NAN_RULE), _alert(ABOVE), _alert(NAN_RULE, "resolved")]) == 2  # ABOVE: no webhook
    assert [(rule.id, alert.state) for rule, alert in notifier.sent] == [(NAN_RULE.id, "firing"),
                                                                          (NAN_RULE.id, "resolved")]
    feed.take(0, 2, None, encode_rule(dataclasses.replace(NAN_RULE, version=1, deleted=True)))
    feed._publish()
    assert feed.notify([_alert(NAN_RULE)]) == 0  # removed before its alert was durable
    feed.close()
    assert notifier.closed


def test_the_first_envelope_waits_for_the_rules_at_most_the_timeout(caplog: pytest.LogCaptureFixture) -> None:
    feed, _, _ = _feed()
    with caplog.at_level(logging.WARNING, logger="trackstream.streams.rules_feed"):
        assert asyncio.run(feed.wait_ready(0.01)) is False
    assert feed.waited
    assert "was not read to its end within" in caplog.text
    caplog.clear()
    assert asyncio.run(feed.wait_ready(5)) is False  # once is enough
    assert not caplog.text


def test_topics_the_sink_consumes_add_the_alerts_to_the_three_processed_ones() -> None:
    topics = Topics("ts")
    assert topics.processed() == ("ts.points", "ts.steps", "ts.entities")
    assert topics.sink_inputs() == ("ts.points", "ts.steps", "ts.entities", "ts.alerts")


def test_the_sink_decodes_an_alert_message_or_rejects_it_with_its_reason() -> None:
    alert = _alert(NAN_RULE)
    [decoded] = decode_records("alerts", encode_alert(alert)).records
    assert decoded.rule_id == alert.rule_id
    assert math.isnan(decoded.value)
    with pytest.raises(Malformed) as caught:
        decode_records("alerts", b'{"v": 1, "rule_id": "x"}')
    assert caught.value.reason == "malformed"
    with pytest.raises(Unstorable, match="rank"):
        decode_records("alerts", encode_alert(dataclasses.replace(alert, rank=2**32)))
    with pytest.raises(Malformed):
        decode_records("alerts", None)


def test_an_alert_the_broker_refuses_as_too_large_is_dead_lettered() -> None:
    topics = Topics("ts")
    rescue = oversize_rescue(topics)
    message = OutMessage(topics.alerts, b'["p","run","r1"]', encode_alert(_alert(NAN_RULE)))
    replacement = rescue(message, RuntimeError("MessageSizeTooLargeError"))
    assert replacement is not None
    assert replacement.topic == topics.dlq
    assert decode_dlq(replacement.value, key=replacement.key).reason == "output_too_large"
