"""The Kafka deployment through the broker's SASL_SSL listener: SDK -> stream worker -> sink worker -> query.

Every client of every component (the SDK's producer, faust's consumer and producer, the admin client, the state
loader, the sink worker's consumer) must use the shared security settings, or this pipeline cannot move a point.
The workers run as the CLI runs them, configured only by the ``TRACKSTREAM_KAFKA_*`` environment.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import trackstream as ts
from trackstream import _query
from trackstream.demo_pipeline import kafka_workers
from trackstream.schemas.settings import KafkaSettings, Secret, StoreSettings
from trackstream.schemas.topics import Topics

pytestmark = pytest.mark.kafka

CLI = [sys.executable, "-m", "trackstream.cli"]


def _environment(settings: KafkaSettings, tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRACKSTREAM_")}
    return {**env, **settings.to_environment(), "TRACKSTREAM_SPOOL_DIR": str(tmp_path / "worker-spool")}


def _wait_for(condition: Callable[[], Any], what: str, *, timeout_s: float, every_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)


@pytest.fixture
def prefixed(secured_kafka: KafkaSettings) -> KafkaSettings:
    return dataclasses.replace(secured_kafka, topic_prefix=f"sec-{uuid.uuid4().hex[:10]}")


@pytest.fixture
def workers(prefixed: KafkaSettings, tmp_path: Path) -> Iterator[Path]:
    """A stream worker and a chDB sink worker on the secured listener, as the demo runs them; both stopped after."""
    data = tmp_path / "store"
    with kafka_workers(prefixed, data, tmp_path, step_timeout_ms=1000):
        yield data


def test_every_point_crosses_the_secured_pipeline(
    prefixed: KafkaSettings, workers: Path, tmp_path: Path
) -> None:
    data = workers
    project, steps, ranks = f"secured-{uuid.uuid4().hex[:8]}", 500, 2
    for rank in range(ranks):
        with ts.start_run(project, run_id="r1", rank=rank, world_size=ranks, kafka=prefixed,
                          spool_dir=str(tmp_path / f"spool-{rank}"), params={"lr": 0.1}) as run:
            for step in range(steps):
                run.log_metrics({"loss": 1.0 / (step + 1), "acc": step / steps}, step=step)
    ts.flush(timeout_s=60)
    # nothing took the spool detour: the SDK reached the secured listener
    assert not [p for p in (tmp_path / "spool-0").rglob("*.seg") if p.stat().st_size]
    reader = _query.reader(StoreSettings(data_dir=str(data)))
    expected = ranks * steps * 2

    def stored() -> bool:  # the ranks' points, and the cross-rank means (rank 2**32 - 1): one per (metric, step)
        rows = reader.sql("SELECT countIf(rank != 4294967295), uniqExactIf(metric, rank, step, rank != 4294967295), "
                          "countIf(rank = 4294967295) FROM points FINAL WHERE project = {p:String}", {"p": project})
        return list(rows[0]) == [expected, expected, steps * 2]

    _wait_for(stored, f"{expected} points in the store", timeout_s=120)
    rows = reader.compare(project, "loss", agg="min")
    assert [(row["id"], row["value"]) for row in rows] == [("r1", 1.0 / steps)]
    _wait_for(lambda: [r["status"] for r in reader.runs(project)] == ["completed"], "the run to complete",
              timeout_s=60)


def test_a_wrong_password_fails_clearly_and_writes_nothing(
    prefixed: KafkaSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = dataclasses.replace(prefixed, sasl_password=Secret("not-the-password"))
    env = _environment(wrong, tmp_path)
    for command in (["streams", "worker", "--data-dir", str(tmp_path / "streams")],
                    ["sink", "worker", "--data-dir", str(tmp_path / "store")]):
        result = subprocess.run([*CLI, *command], env=env, capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 2, result.stderr[-3000:]
        assert "TRACKSTREAM_KAFKA_SASL_PASSWORD" in result.stderr
        assert "not-the-password" not in result.stderr

    spool = tmp_path / "sdk-spool"
    with caplog.at_level(logging.ERROR, logger="trackstream"):
        run = ts.start_run("wrong-password", run_id="r", kafka=wrong, spool_dir=str(spool))
        run.log_metrics({"loss": 1.0}, step=0)
        run.finish()
        ts.flush(timeout_s=30)
    assert "TRACKSTREAM_KAFKA_SASL_PASSWORD" in caplog.text
    assert "not-the-password" not in caplog.text
    # the points are kept in the spool, and nothing reached the topic
    assert any(p.stat().st_size for p in spool.rglob("*") if p.is_file())
    assert asyncio.run(_message_count(prefixed, Topics(prefixed.topic_prefix).metrics)) == 0


async def _message_count(settings: KafkaSettings, topic: str) -> int:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(**settings.client_options())
    await consumer.start()
    try:
        partitions = await consumer._client.fetch_all_metadata()
        if topic not in partitions.topics():
            return 0
        from aiokafka import TopicPartition

        tps = [TopicPartition(topic, p) for p in partitions.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(tps)
        return sum(ends.values())
    finally:
        await consumer.stop()
