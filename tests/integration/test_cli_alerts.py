"""`trackstream alerts` through the real CLI, one subprocess per command (chDB binds one store per process): rules
in an embedded store's file and on a real Kafka broker's ``<prefix>.alert_rules`` topic, bad rules refused with
exit code 2, and fired alerts listed from a store holding alert rows."""

from __future__ import annotations

import asyncio
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import unique_name

from trackstream.alert_rules import load_rules
from trackstream.api.wire import from_wire
from trackstream.schemas.alerts import WHENS, decode_rule

CLI = [sys.executable, "-m", "trackstream.cli"]
SECRET_HOOK = "https://user:hunter2@hooks.example.com/services/T0/B0/s3cret?token=abc123"
SECRETS = ("hunter2", "s3cret", "abc123", "/services")


def _run(tmp_path: Path, *args: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKSTREAM_")}
    env["TRACKSTREAM_SPOOL_DIR"] = str(tmp_path / "spool")  # empty: no read catches up with anything
    env.update(env_extra)
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=300, check=False)


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr[-3000:]
    return from_wire(orjson.loads(result.stdout))


def test_add_list_and_remove_rules_of_an_embedded_store(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    added = _json(_run(tmp_path, "alerts", "add", "vision", "--metric", "loss", "--when", "nan", "--webhook",
                       SECRET_HOOK, "--slack", "--json", "--data-dir", data))
    [rule] = added
    assert rule["webhook"] == "https://hooks.example.com/…"
    assert (rule["project"], rule["metric"], rule["when"], rule["value"], rule["slack"], rule["version"]) == (
        "vision", "loss", "nan", None, True, 0)
    again = _run(tmp_path, "alerts", "add", "vision", "--metric", "loss", "--when", "nan", "--data-dir", data,
                 COLUMNS="200")
    assert again.returncode == 0, again.stderr[-3000:]
    assert rule["id"] in again.stdout  # the same rule: the same id (a table this time)
    assert "version 1" in again.stderr
    diverge = _json(_run(tmp_path, "alerts", "add", "vision", "--metric", "loss", "--when", "diverge", "--value",
                         "3", "--after-steps", "5", "--json", "--data-dir", data))[0]
    assert (diverge["value"], diverge["after_steps"]) == (3.0, 5)
    _json(_run(tmp_path, "alerts", "add", "other", "--metric", "*", "--when", "stalled", "--json",
               "--data-dir", data))
    on_file = {r.id: r for r in load_rules(Path(data), project="vision")}
    assert set(on_file) == {rule["id"], diverge["id"]}
    assert on_file[rule["id"]].webhook is None  # added again without one
    assert on_file[rule["id"]].version == 1

    listed = _json(_run(tmp_path, "alerts", "rules", "vision", "--json", "--data-dir", data))
    assert [(r["id"], r["when"], r["version"]) for r in listed] == sorted(
        [(rule["id"], "nan", 1), (diverge["id"], "diverge", 0)])
    table = _run(tmp_path, "alerts", "rules", "vision", "--data-dir", data, COLUMNS="200")
    assert table.returncode == 0
    assert diverge["id"] in table.stdout
    assert "diverge" in table.stdout
    narrow = _run(tmp_path, "alerts", "rules", "vision", "--data-dir", data, COLUMNS="80")
    assert diverge["id"] in narrow.stdout  # the id is never split across lines

    removed = _run(tmp_path, "alerts", "remove", "vision", diverge["id"][:6], "--data-dir", data)  # a unique start
    assert removed.returncode == 0, removed.stderr[-3000:]
    assert f"removed alert rule {diverge['id']}" in removed.stdout
    assert [r["id"] for r in _json(_run(tmp_path, "alerts", "rules", "vision", "--json", "--data-dir", data))] == [
        rule["id"]]
    gone = _run(tmp_path, "alerts", "remove", "vision", diverge["id"], "--data-dir", data)
    assert gone.returncode == 2
    assert "no alert rule" in gone.stderr
    foreign = _run(tmp_path, "alerts", "remove", "other", rule["id"], "--data-dir", data)  # not that project's
    assert foreign.returncode == 2
    assert [r.id for r in load_rules(Path(data), project="vision")] == [rule["id"]]
    assert _json(_run(tmp_path, "alerts", "rules", "nobody", "--json", "--data-dir", data)) == []
    for result in (again, table, removed):
        assert not any(secret in result.stdout + result.stderr for secret in SECRETS)


@pytest.mark.parametrize(("args", "message"), [
    (["--metric", "loss", "--when", "bogus"], "|".join(WHENS)),
    (["--metric", "loss", "--when", "above"], "above needs --value"),
    (["--metric", "*", "--when", "above", "--value", "1"], "needs one metric name"),
    (["--metric", "loss", "--when", "below", "--value", "nan"], "must be a finite number"),
    (["--metric", "loss", "--when", "nan", "--value", "1"], "nan takes no --value"),
    (["--metric", "loss", "--when", "above", "--value", "1", "--after-steps", "3"], "applies to diverge only"),
    (["--metric", "loss", "--when", "nan", "--webhook", "ftp://x"], "http:// or https://"),
    (["--metric", "loss", "--when", "nan", "--slack"], "slack needs a webhook"),
])
def test_a_bad_rule_exits_2_with_what_is_allowed(tmp_path: Path, args: list[str], message: str) -> None:
    result = _run(tmp_path, "alerts", "add", "vision", *args, "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 2, result.stderr[-3000:]
    if "|" in message:
        assert all(when in result.stderr for when in WHENS), result.stderr
    else:
        assert message in result.stderr, result.stderr
    assert load_rules(tmp_path / "data") == []


def test_a_clickhouse_server_store_needs_the_kafka_deployment(tmp_path: Path) -> None:
    result = _run(tmp_path, "alerts", "add", "vision", "--metric", "loss", "--when", "nan", "--clickhouse-url",
                  "http://127.0.0.1:9")
    assert result.returncode == 2
    assert "--bootstrap" in result.stderr
    assert "alert_rules" in result.stderr


# --- fired alerts ------------------------------------------------------------------------------------------------

WRITE_ALERTS = """
import math, sys, time
from trackstream.schemas.alerts import Alert
from trackstream.sinks.chdb_backend import ChdbBackend
from trackstream.sinks.schema import migrate
from trackstream.sinks.sink import Sink

backend = ChdbBackend(sys.argv[1])
migrate(backend)
t0 = int(sys.argv[2])
def alert(rule, run, state, dt, step, value, when="nan"):
    return Alert(rule, when, "vision", "run", run, "loss", state, step, value, 0, t0 + dt * 10**9,
                 f"loss {state} at step {step} in run {run}", 5.0 if when == "above" else None)
Sink(backend).write(alerts=[
    alert("r1", "a", "firing", 1, 3, math.nan), alert("r1", "a", "resolved", 2, 4, 0.5),
    alert("r2", "b", "firing", 3, 7, 9.5, when="above"), alert("r1", "c", "firing", 4, 9, math.nan),
])
backend.close()
"""


def test_list_shows_the_stored_alerts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    t0 = time.time_ns() - 60 * 10**9
    subprocess.run([sys.executable, "-c", WRITE_ALERTS, str(data), str(t0)], check=True, timeout=300)
    rows = _json(_run(tmp_path, "alerts", "list", "vision", "--json", "--data-dir", str(data)))
    assert [(r["rule_id"], r["run"], r["state"], r["active"]) for r in rows] == [
        ("r1", "c", "firing", True), ("r2", "b", "firing", True), ("r1", "a", "resolved", False),
        ("r1", "a", "firing", False)]
    assert math.isnan(rows[0]["value"])
    assert rows[1]["threshold"] == 5.0
    firing = _json(_run(tmp_path, "alerts", "list", "vision", "--firing", "--run", "a", "--run", "b", "--json",
                        "--data-dir", str(data)))
    assert [(r["rule_id"], r["run"]) for r in firing] == [("r2", "b")]
    assert len(_json(_run(tmp_path, "alerts", "list", "vision", "--limit", "1", "--json",
                          "--data-dir", str(data)))) == 1
    assert _json(_run(tmp_path, "alerts", "list", "nobody", "--json", "--data-dir", str(data))) == []
    table = _run(tmp_path, "alerts", "list", "vision", "--data-dir", str(data), COLUMNS="250", FORCE_COLOR="1")
    assert table.returncode == 0, table.stderr[-3000:]
    lines = {(run, state): line for line in table.stdout.splitlines() for run in ("a", "b", "c")
             for state in ("firing", "resolved") if f"{state} at step" in line and f"in run {run}" in line}
    assert len(lines) == 4, table.stdout
    assert "\x1b[1;31m" in lines["b", "firing"]  # firing now: bold red
    assert "\x1b[31m" in lines["a", "firing"]  # fired, resolved since: red (its NaN value bold red, as always)
    assert "31m" not in lines["a", "resolved"]
    plain = re.sub(r"\x1b\[[0-9;]*m", "", table.stdout)
    assert "above loss" in plain
    assert "loss firing at step 7 in run b" in plain
    assert "nan" in plain


# --- on Kafka ----------------------------------------------------------------------------------------------------


async def _topic_records(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, 0)]  # created as the stream workers create it: one partition
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        records: list[tuple[bytes | None, bytes | None]] = []
        while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend((record.key, record.value) for record in batch)
        return records
    finally:
        await consumer.stop()


async def _topic_layout(bootstrap: str, topic: str) -> tuple[int, str]:
    """(partitions, cleanup.policy) of ``topic``."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        partitions = len((await admin.describe_topics([topic]))[0]["partitions"])
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                                                 configs={"cleanup.policy": None})])
        policy = next(str(entry[1]) for response in responses for resource in response.resources
                      for entry in resource[4] if entry[0] == "cleanup.policy")
        return partitions, policy
    finally:
        await admin.close()


async def _tombstone(bootstrap: str, topic: str, key: bytes) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, None, key=key)
    finally:
        await producer.stop()


def test_rules_of_a_kafka_deployment_round_trip_through_the_topic(tmp_path: Path, kafka_bootstrap: str) -> None:
    prefix = unique_name("ts")
    kafka = ["--bootstrap", kafka_bootstrap, "--topic-prefix", prefix]
    assert _json(_run(tmp_path, "alerts", "rules", "vision", "--json", *kafka)) == []  # no topic yet: no rules
    first = _json(_run(tmp_path, "alerts", "add", "vision", "--metric", "loss", "--when", "nan", "--webhook",
                       SECRET_HOOK, "--json", *kafka))[0]
    again = _json(_run(tmp_path, "alerts", "add", "vision", "--metric", "loss", "--when", "nan", "--json", *kafka))[0]
    assert (again["id"], again["version"]) == (first["id"], 1)
    above = _json(_run(tmp_path, "alerts", "add", "vision", "--metric", "acc", "--when", "below", "--value", "0.5",
                       "--json", "--clickhouse-url", "http://127.0.0.1:9", *kafka))[0]  # a server store: Kafka
    listed = _json(_run(tmp_path, "alerts", "rules", "vision", "--json", *kafka))
    assert sorted((r["id"], r["version"], r["webhook"]) for r in listed) == sorted(
        [(first["id"], 1, None), (above["id"], 0, None)])
    # from the environment too, as every trackstream Kafka client
    env_listed = _json(_run(tmp_path, "alerts", "rules", "vision", "--json",
                            TRACKSTREAM_KAFKA_BOOTSTRAP=kafka_bootstrap, TRACKSTREAM_TOPIC_PREFIX=prefix))
    assert env_listed == listed

    topic = f"{prefix}.alert_rules"
    assert asyncio.run(_topic_layout(kafka_bootstrap, topic)) == (1, "compact")
    records = asyncio.run(_topic_records(kafka_bootstrap, topic))
    assert [key for key, _ in records] == [first["id"].encode(), first["id"].encode(), above["id"].encode()]
    decoded = [decode_rule(value) for _, value in records if value is not None]
    assert decoded[0].webhook == SECRET_HOOK  # the worker needs the whole URL; only the CLI output redacts it
    assert [rule.version for rule in decoded] == [0, 1, 0]

    removed = _run(tmp_path, "alerts", "remove", "vision", above["id"], *kafka)
    assert removed.returncode == 0, removed.stderr[-3000:]
    assert [r["id"] for r in _json(_run(tmp_path, "alerts", "rules", "vision", "--json", *kafka))] == [first["id"]]
    tombstone = decode_rule(asyncio.run(_topic_records(kafka_bootstrap, topic))[-1][1] or b"")
    assert (tombstone.id, tombstone.deleted, tombstone.version) == (above["id"], True, 1)
    asyncio.run(_tombstone(kafka_bootstrap, topic, first["id"].encode()))  # a Kafka tombstone removes it too
    assert _json(_run(tmp_path, "alerts", "rules", "vision", "--json", *kafka)) == []
    missing = _run(tmp_path, "alerts", "remove", "vision", first["id"], *kafka)
    assert missing.returncode == 2
