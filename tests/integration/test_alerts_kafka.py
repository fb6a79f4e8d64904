"""Alerts on the Kafka deployment, end to end: rules on ``<prefix>.alert_rules``, training processes logging through
the SDK to Kafka, a stream worker evaluating the rules (and POSTing to a real webhook server once the alerts are
durable), a sink worker storing the transitions in ``alerts``; a rule added while the workers run takes effect."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from test_alerts_local import LOG, Hook, hook
from test_local import _cli_json, _owner_url, _wait_for

from trackstream.schemas.alerts import AlertRule, encode_rule, make_rule
from trackstream.schemas.topics import Topics
from trackstream.sinks.dlq import decode_dead_letter

__all__ = ["hook"]  # the webhook receiver fixture, shared with the embedded test

pytestmark = pytest.mark.kafka
CLI = [sys.executable, "-m", "trackstream.cli"]
TIMEOUT_S = 120.0
ACCURACY = """
import trackstream as ts
with ts.start_run("watched", name="overfits", run_id="r3") as run:
    run.log_metric("acc", [0.5, 0.95, 0.97, 0.8])
"""
ROWS = "SELECT entity_id, rule_id, condition, metric, state, step FROM alerts FINAL ORDER BY time, state"


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


def _add_rules(bootstrap: str, topics: Topics, *rules: AlertRule) -> None:
    """What ``trackstream alerts add ... --bootstrap`` does: each rule's encoding, keyed by its id."""
    asyncio.run(_produce(bootstrap, topics.alert_rules, [(rule.id.encode(), encode_rule(rule)) for rule in rules]))


async def _first_record(bootstrap: str, topic: str, timeout_s: float) -> bytes | None:
    """The value of the first record of ``topic`` within ``timeout_s``, else None."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        found = await consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=1)
        return next((record.value for records in found.values() for record in records), None)
    finally:
        await consumer.stop()


def _topic_configs(bootstrap: str, topic: str) -> dict[str, str] | None:
    """The configs of ``topic``, or None while it does not exist."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    async def read() -> dict[str, str] | None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            if topic not in set(await admin.list_topics()):
                return None
            responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
            return {str(entry[0]): str(entry[1]) for response in responses for resource in response.resources
                    for entry in resource[4]}
        finally:
            await admin.close()

    return asyncio.run(read())


class Workers:
    """The stream worker and the sink worker of one topic prefix, as subprocesses logging into ``logs``."""

    def __init__(self, env: dict[str, str], data: Path, logs: Path) -> None:
        self.env, self.data, self.logs = env, data, logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> None:
        args = {"streams": ["streams", "worker", "--data-dir", str(self.data.parent / "streams"),
                            "--step-timeout-ms", "2000"],
                "sink": ["sink", "worker", "--data-dir", str(self.data)]}[name]
        with open(self.logs / f"{name}.log", "ab") as out:
            self.procs[name] = subprocess.Popen([*CLI, *args], stdout=out, stderr=subprocess.STDOUT, env=self.env)

    def stop(self, name: str) -> None:
        process = self.procs.pop(name)
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def alive(self) -> bool:
        exited = {name: p.returncode for name, p in self.procs.items() if p.poll() is not None}
        assert not exited, f"worker(s) exited: {exited}; see {self.logs}"
        return True


def _rows(env: dict[str, str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = _cli_json(env, "sql", ROWS)
    return rows


def test_rules_on_kafka_fire_alerts_that_are_stored_and_posted(kafka_bootstrap: str, tmp_path: Path,
                                                               hook: Hook) -> None:
    prefix = f"ts_alerts_{uuid.uuid4().hex[:10]}"
    topics = Topics(prefix)
    data, logs = tmp_path / "data", tmp_path / "logs"
    logs.mkdir()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("TRACKSTREAM_KAFKA_", "TRACKSTREAM_CLICK"))},
           "TRACKSTREAM_KAFKA_BOOTSTRAP": kafka_bootstrap, "TRACKSTREAM_TOPIC_PREFIX": prefix,
           "TRACKSTREAM_DATA_DIR": str(data), "TRACKSTREAM_SPOOL_DIR": str(tmp_path / "spool"),
           "PYTHONUNBUFFERED": "1"}
    workers = Workers(env, data, logs)
    nan_rule = make_rule("watched", "loss", "nan", webhook=hook.url)
    acc_rule = make_rule("watched", "acc", "above", value=0.9, webhook=hook.url)
    try:
        # First run: the stream worker creates the topics (the rules topic compacted), the sink owns the store.
        workers.start("streams")
        workers.start("sink")
        _wait_for(lambda: workers.alive() and _owner_url(data) is not None
                  and _topic_configs(kafka_bootstrap, topics.alert_rules) is not None, timeout_s=TIMEOUT_S,
                  what="the workers")
        configs = _topic_configs(kafka_bootstrap, topics.alert_rules)
        assert configs is not None
        assert configs["cleanup.policy"] == "compact"
        # With the stream worker down: a rule (after a damaged record), then a run that logs a NaN.
        workers.stop("streams")
        asyncio.run(_produce(kafka_bootstrap, topics.alert_rules, [(b"junk", b"not a rule")]))
        _add_rules(kafka_bootstrap, topics, nan_rule)
        subprocess.run([sys.executable, "-c", LOG], env=env, check=True, timeout=TIMEOUT_S)
        # Started again, the worker reads the rules before the backlog: the NaN fires, the next value resolves.
        workers.start("streams")
        _wait_for(lambda: workers.alive() and len(hook.bodies) >= 2, timeout_s=TIMEOUT_S,
                  what="the webhook's two POSTs")
        _wait_for(lambda: len(_rows(env)) >= 2, timeout_s=TIMEOUT_S, what="two rows in alerts")
        assert _rows(env) == [
            {"entity_id": "r1", "rule_id": nan_rule.id, "condition": "nan", "metric": "loss", "state": "firing",
             "step": 3},
            {"entity_id": "r1", "rule_id": nan_rule.id, "condition": "nan", "metric": "loss", "state": "resolved",
             "step": 5}]
        assert [(body["state"], body["step"], body["entity_id"]) for body in hook.bodies] == [
            ("firing", 3, "r1"), ("resolved", 5, "r1")]
        assert hook.bodies[0]["value"] == "NaN"
        # A message on the alerts topic that is not an alert goes to the sink's dead letters, the rest is written.
        asyncio.run(_produce(kafka_bootstrap, topics.alerts, [(b'["watched","run","r9"]', b"not an alert")]))
        # A rule added while the workers run takes effect.
        _add_rules(kafka_bootstrap, topics, acc_rule)
        _wait_for(lambda: workers.alive() and "alert rules: 2 in force" in workers.log("streams"),
                  timeout_s=TIMEOUT_S, what="the second rule in force")
        subprocess.run([sys.executable, "-c", ACCURACY], env=env, check=True, timeout=TIMEOUT_S)
        _wait_for(lambda: workers.alive() and len(hook.bodies) >= 4, timeout_s=TIMEOUT_S,
                  what="the webhook's POSTs of the second rule")
        _wait_for(lambda: len(_rows(env)) >= 4, timeout_s=TIMEOUT_S, what="four rows in alerts")
        rows = _rows(env)
    finally:
        for name in list(workers.procs):
            workers.stop(name)
    assert [(body["state"], body["step"], body["entity_id"], body["rule_id"]) for body in hook.bodies[2:]] == [
        ("firing", 1, "r3", acc_rule.id), ("resolved", 3, "r3", acc_rule.id)]
    assert [(row["entity_id"], row["rule_id"], row["state"], row["step"]) for row in rows[2:]] == [
        ("r3", acc_rule.id, "firing", 1), ("r3", acc_rule.id, "resolved", 3)]
    assert len(hook.bodies) == 4  # each transition POSTed once
    letter = asyncio.run(_first_record(kafka_bootstrap, topics.sink_dlq, TIMEOUT_S))
    assert letter is not None
    dead = decode_dead_letter(letter)
    assert (dead["reason"], dead["source"]["topic"], dead["raw"]) == ("malformed", topics.alerts, b"not an alert")
    streams_log = workers.log("streams")
    assert streams_log.count("skipped the record at") == 1  # the damaged record, read once since the restart
    assert "s3cret" not in streams_log
    assert "s3cret" not in workers.log("sink")
