"""Sink worker against a real broker: killed between the insert and the offset commit, then restarted.

The worker runs in subprocesses (a chDB store belongs to one process). The first incarnation cuts small chunks
and dies (os._exit) right after a ClickHouse insert, before committing; the second cuts much larger chunks, so
without the recorded chunk boundaries its replay would carry different deduplication tokens.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from trackstream.schemas.envelope import EntityRef, MetricBatch
from trackstream.schemas.processed import EntityState, PointBlock, encode_point_block, encode_records
from trackstream.schemas.settings import KafkaSettings
from trackstream.schemas.topics import Topics
from trackstream.sinks.errors import StoreUnavailable

pytestmark = pytest.mark.kafka

WORKER = textwrap.dedent("""
    import asyncio, json, logging, os, sys
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from trackstream.sinks.batch import BatchLimits
    from trackstream.sinks.sink import Sink
    from trackstream.sinks.worker import SinkWorker
    from trackstream.schemas.settings import KafkaSettings

    bootstrap, prefix, store, crash_after, max_rows, expected = sys.argv[1:7]
    crash_after, expected = int(crash_after), int(expected)
    sink = Sink.open(data_dir=store)
    sink.backend.command("SYSTEM STOP MERGES points")  # a merge would hide duplicates from count()

    class Crashing(SinkWorker):
        def _write(self, write):
            super()._write(write)
            points = any(c.held.kind == "points" for c in write.chunks)
            if points and crash_after and self.stats.writes + 1 >= crash_after:
                os._exit(17)  # inserted, not committed

    async def main():
        worker = Crashing(sink, kafka=KafkaSettings(bootstrap=bootstrap, topic_prefix=prefix),
                          group_id=prefix + "-sink", limits=BatchLimits(max_rows=int(max_rows), linger_ms=300))
        stop = asyncio.Event()
        async def watch():
            while not stop.is_set():
                (count,), = sink.backend.query("SELECT count() FROM points")[1]
                (entities,), = sink.backend.query("SELECT count() FROM entities")[1]
                if count >= expected and entities > 0 and not worker.held_rows:
                    await asyncio.sleep(0.5)  # let a possible duplicate land before stopping (not a sync point)
                    stop.set()
                await asyncio.sleep(0.1)
        watcher = asyncio.create_task(watch())
        await asyncio.wait_for(worker.run(stop), timeout=120)
        watcher.cancel()
    asyncio.run(main())
    rows = {
        "raw": sink.backend.query("SELECT count() FROM points")[1][0][0],
        "final": sink.backend.query("SELECT count() FROM points FINAL")[1][0][0],
        "entities": sink.backend.query("SELECT count() FROM entities FINAL")[1][0][0],
    }
    print(json.dumps(rows))
""")


async def _produce(bootstrap: str, topics: Topics, blocks: list[PointBlock], states: list[EntityState]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for block in blocks:
            await producer.send(topics.points, encode_point_block(block), key=block.entity.key())
        for state in states:
            await producer.send(topics.entities, encode_records([state]), key=state.entity.key())
        await producer.flush()
    finally:
        await producer.stop()


def _blocks(entities: int, blocks_per_entity: int, points: int) -> list[PointBlock]:
    out = []
    for e in range(entities):
        entity = EntityRef("p", "run", f"run-{e}")
        for b in range(blocks_per_entity):
            steps = list(range(b * points, (b + 1) * points))
            batch = MetricBatch("loss", "series", steps, [1_700_000_000_000_000_000 + s * 10**9 for s in steps],
                                [1.0 / (s + 1) for s in steps])
            out.append(PointBlock(entity, 0, f"prod-{e}", b, [batch], [0]))
    return out


def _run_worker(bootstrap: str, prefix: str, store: Path, *, crash_after: int, max_rows: int, expected: int
                ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WORKER, bootstrap, prefix, str(store), str(crash_after), str(max_rows), str(expected)],
        capture_output=True, text=True, timeout=180, cwd=Path(__file__).parents[2], check=False,
    )


def test_killed_between_insert_and_commit_lands_every_point_once(
    kafka_bootstrap: str, topic_prefix_factory: object, tmp_path: Path
) -> None:
    prefix = topic_prefix_factory(partitions=3)  # type: ignore[operator]
    topics = Topics(prefix)
    blocks = _blocks(entities=6, blocks_per_entity=20, points=250)
    states = [EntityState(EntityRef("p", "run", f"run-{e}"), f"run {e}", "running", version=1) for e in range(6)]
    asyncio.run(_produce(kafka_bootstrap, topics, blocks, states))
    produced = sum(b.point_count() for b in blocks)
    store = tmp_path / "store"

    first = _run_worker(kafka_bootstrap, prefix, store, crash_after=3, max_rows=2000, expected=produced)
    assert first.returncode == 17, first.stderr[-6000:]

    started = time.monotonic()
    second = _run_worker(kafka_bootstrap, prefix, store, crash_after=0, max_rows=100_000, expected=produced)
    assert second.returncode == 0, second.stderr[-3000:]
    counts = json.loads(second.stdout.strip().splitlines()[-1])
    assert counts == {"raw": produced, "final": produced, "entities": 6}, (counts, time.monotonic() - started)


class FlakyBackend:
    """A real backend whose ``points`` inserts fail while ``down`` is set."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.down = True
        self.failures = 0

    def insert(self, table: str, data: Any, *, dedup_token: str | None = None) -> None:
        if self.down and table == "points":
            self.failures += 1
            raise StoreUnavailable("ClickHouse is down (test)")
        self.inner.insert(table, data, dedup_token=dedup_token)

    def query(self, sql: str, params: Any = None, *, readonly: bool = False) -> Any:
        return self.inner.query(sql, params, readonly=readonly)

    def command(self, sql: str) -> None:
        self.inner.command(sql)

    def create_database(self) -> None:
        self.inner.create_database()

    def close(self) -> None:
        self.inner.close()


async def _committed(bootstrap: str, group_id: str) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group_id)
    finally:
        await admin.close()
    return sum(meta.offset for meta in offsets.values() if meta.offset > 0)


async def _until(condition: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def test_clickhouse_unavailable_backs_off_without_committing(
    kafka_bootstrap: str, topic_prefix_factory: Any, chdb_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from trackstream.sinks.batch import BatchLimits
    from trackstream.sinks.chdb_backend import ChdbBackend
    from trackstream.sinks.sink import Sink
    from trackstream.sinks.worker import SinkWorker

    prefix = topic_prefix_factory(partitions=3)
    blocks = _blocks(entities=3, blocks_per_entity=10, points=100)
    asyncio.run(_produce(kafka_bootstrap, Topics(prefix), blocks, []))
    flaky = FlakyBackend(ChdbBackend(chdb_store, database=f"flaky_{prefix}"))
    sink = Sink(flaky)
    group = f"{prefix}-sink"
    worker = SinkWorker(sink, kafka=KafkaSettings(bootstrap=kafka_bootstrap, topic_prefix=prefix), group_id=group,
                        limits=BatchLimits(max_rows=100_000, linger_ms=100), max_backoff_s=0.2)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        await _until(lambda: flaky.failures >= 3)
        held = worker.held_rows
        await _until(lambda: flaky.failures >= 8)
        assert worker.held_rows == held  # nothing new fetched while down
        assert await _committed(kafka_bootstrap, group) == 0
        flaky.down = False
        await _until(lambda: worker.stats.points == 3000)
        await _until_async(lambda: _committed(kafka_bootstrap, group), len(blocks))
        stop.set()
        await task

    with caplog.at_level(logging.WARNING, logger="trackstream.sinks.worker"):
        asyncio.run(scenario())
    assert "not committing, retrying" in caplog.text
    (count,), = flaky.query("SELECT count() FROM points")[1]
    assert count == 3000
    flaky.close()


async def _until_async(value: Any, expected: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while await value() != expected:
        assert time.monotonic() < deadline, "offsets not committed in time"
        await asyncio.sleep(0.1)
