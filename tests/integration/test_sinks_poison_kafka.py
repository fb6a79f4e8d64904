"""Sink worker against a real broker, fed poison: garbage bytes, truncated records, values no column can hold.

The worker stays up, the good records after the poison land in chDB, the bad ones are on ``<prefix>.sink.dlq``
with their reasons and source positions, stored + dead-lettered = sent, and the offsets are committed past all of
it. A dead letter the broker does not acknowledge holds the commit back until it is. A broker outage is two
WARNING lines, not hundreds of aiokafka ERRORs, and the worker exits cleanly, during an outage too.
"""

from __future__ import annotations

import asyncio
import hashlib
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from trackstream.schemas.envelope import EntityRef, MetricBatch
from trackstream.schemas.processed import (
    EntityState,
    PointBlock,
    StepAggregate,
    encode_point_block,
    encode_records,
)
from trackstream.schemas.settings import KafkaSettings
from trackstream.schemas.topics import Topics
from trackstream.sinks.dlq import decode_dead_letter, sink_dlq_topic
from trackstream.sinks.errors import StoreUnavailable
from trackstream.sinks.schema import CROSS_RANK

pytestmark = pytest.mark.kafka

T0 = 1_700_000_000_000_000_000


def _entity(i: int) -> EntityRef:
    return EntityRef("p", "run", f"run-{i}")


def _block(i: int, points: int = 50) -> PointBlock:
    steps = list(range(points))
    batch = MetricBatch("loss", "series", steps, [T0 + s for s in steps], [1.0 / (s + 1) for s in steps])
    return PointBlock(_entity(i), 0, f"prod-{i}", i, [batch], [0])


def _step(i: int, world_size: int = 2) -> StepAggregate:
    return StepAggregate(_entity(0), "loss", 0, i, 1.0, 0.5, 1.5, 2, world_size, T0 + i)


def _state(i: int, **changes: Any) -> EntityState:
    state = EntityState(_entity(i), f"run {i}", "running", {"lr": 0.1}, {"t": "v"}, T0, 0,
                        [{"producer_id": f"prod-{i}", "rank": 0, "world_size": 1, "host": "h"}], 0, 1)
    for name, value in changes.items():
        setattr(state, name, value)
    return state


def _poisoned(topics: Topics) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
    """The messages to send, in order per topic, and what must come of them."""
    good_block = encode_point_block(_block(0))
    rank_block = orjson.loads(encode_point_block(_block(9)))
    rank_block["rank"] = 2**32
    huge_step = orjson.loads(encode_records([_step(0)]))
    huge_step["records"][0]["world_size"] = 2**62  # made the worker exit: "too large to fit in C integer type"
    bad_state = orjson.loads(encode_records([_state(7)]))
    bad_state["records"][0]["producers"][0].update(rank=2**32, world_size=2**62)
    mixed = orjson.loads(encode_records([_state(1), _state(8)]))
    mixed["records"][1]["lost_points"] = -1
    messages = [
        (topics.points, b"\x00\xffnot a point block"),
        (topics.points, good_block[: len(good_block) // 2]),
        (topics.points, orjson.dumps(rank_block)),
        *[(topics.points, encode_point_block(_block(i))) for i in range(4)],
        (topics.steps, orjson.dumps(huge_step)),
        (topics.steps, encode_records([_step(1), _step(2)])),
        (topics.steps, encode_records([_step(3)])[:-7]),
        (topics.entities, orjson.dumps(bad_state)),
        (topics.entities, orjson.dumps(mixed)),
        (topics.entities, encode_records([_state(2)])),
    ]
    expected = {
        # (topic, offset) -> reason, for every dead letter
        "letters": {(topics.points, 0): "malformed", (topics.points, 1): "malformed",
                    (topics.points, 2): "unstorable_value", (topics.steps, 0): "unstorable_value",
                    (topics.steps, 2): "malformed", (topics.entities, 0): "unstorable_value",
                    (topics.entities, 1): "unstorable_value"},
        # step aggregates are stored as the cross-rank rows of points (:func:`_count`)
        "stored": {"points": 4 * 50, "ingested": 4, "steps": 2, "entities": 2},
        # per topic, sent = stored + dead-lettered, in records (a message dead-lettered whole counts its records)
        "sent": {"points": 7, "steps": 4, "entities": 4},
    }
    return messages, expected


async def _send(bootstrap: str, messages: list[tuple[str, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for topic, value in messages:
            await producer.send_and_wait(topic, value, key=b"k", partition=0)
    finally:
        await producer.stop()


async def _dead_letters(bootstrap: str, topic: str, count: int, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """The first ``count`` dead letters on ``topic``, and whatever else arrived with them."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    letters: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(letters) < count:
            assert time.monotonic() < deadline, f"{len(letters)} of {count} dead letters in time"
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                letters.extend(decode_dead_letter(message.value) for message in batch)
    finally:
        await consumer.stop()
    return letters


async def _committed(bootstrap: str, group_id: str) -> dict[str, int]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group_id)
    finally:
        await admin.close()
    return {tp.topic: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


async def _until(condition: Callable[[], bool], timeout_s: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} not reached in time"
        await asyncio.sleep(0.05)


async def _until_async(value: Callable[[], Any], expected: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (found := await value()) != expected:
        assert time.monotonic() < deadline, f"{found} != {expected} in time"
        await asyncio.sleep(0.1)


def _worker(bootstrap: str, prefix: str, chdb_store: Path) -> Any:
    from trackstream.sinks.batch import BatchLimits
    from trackstream.sinks.chdb_backend import ChdbBackend
    from trackstream.sinks.sink import Sink
    from trackstream.sinks.worker import SinkWorker

    sink = Sink(ChdbBackend(chdb_store, database=f"poison_{prefix}"))
    return SinkWorker(sink, kafka=KafkaSettings(bootstrap=bootstrap, topic_prefix=prefix), group_id=f"{prefix}-sink",
                      limits=BatchLimits(max_rows=100_000, linger_ms=100), max_backoff_s=0.2)


# what each stored count reads: the ranks' points and the cross-rank step aggregates share the points table
_STORED_SQL = {"points": f"points FINAL WHERE rank != {CROSS_RANK}", "steps": f"points FINAL WHERE rank = {CROSS_RANK}"}


def _count(worker: Any, table: str) -> int:
    (count,), = worker.sink.backend.query(f"SELECT count() FROM {_STORED_SQL.get(table, table + ' FINAL')}")[1]
    return int(count)


def test_poison_is_dead_lettered_and_the_good_records_after_it_land(
    kafka_bootstrap: str, topic_prefix_factory: Any, chdb_store: Path
) -> None:
    prefix = topic_prefix_factory(partitions=1)
    topics = Topics(prefix)
    messages, expected = _poisoned(topics)
    asyncio.run(_send(kafka_bootstrap, messages))
    worker = _worker(kafka_bootstrap, prefix, chdb_store)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        await _until(lambda: worker.stats.dead_letters == len(expected["letters"]) or task.done(), what="letters")
        await _until(lambda: all(_count(worker, t) == n for t, n in expected["stored"].items()) or task.done(),
                     what="stored rows")
        per_topic = {topic: sum(1 for t, _ in messages if t == topic) for topic in topics.processed()}
        await _until_async(lambda: _committed(kafka_bootstrap, f"{prefix}-sink"), per_topic)
        assert not task.done(), task  # the worker stayed up through all of it
        stop.set()
        await asyncio.wait_for(task, timeout=30)

    asyncio.run(scenario())
    stored = {table: _count(worker, table) for table in expected["stored"]}
    assert stored == expected["stored"]
    worker.sink.close()

    letters = asyncio.run(_dead_letters(kafka_bootstrap, sink_dlq_topic(prefix), len(expected["letters"])))
    found = {(letter["source"]["topic"], letter["source"]["offset"]): letter["reason"] for letter in letters}
    assert found == expected["letters"]
    assert len(letters) == len(expected["letters"])  # each once
    by_position = {(t, sum(1 for u, _ in messages[:i] if u == t)): v for i, (t, v) in enumerate(messages)}
    for letter in letters:
        raw = by_position[(letter["source"]["topic"], letter["source"]["offset"])]
        assert letter["raw"] == raw
        assert letter["raw_size"] == len(raw)
        assert letter["raw_sha256"] == hashlib.sha256(raw).hexdigest()
        assert letter["source"]["partition"] == 0
        assert letter["detail"]
    rank = next(x for x in letters if x["source"] == {"topic": topics.points, "partition": 0, "offset": 2})
    assert rank["detail"].startswith("Unstorable: rank:")
    assert rank["points"] == 50
    steps = next(x for x in letters if x["source"] == {"topic": topics.steps, "partition": 0, "offset": 0})
    assert steps["problems"][0]["detail"].startswith("world_size:")
    mixed = next(x for x in letters if x["source"] == {"topic": topics.entities, "partition": 0, "offset": 1})
    assert (mixed["records"], mixed["rejected"]) == ([1], 1)

    # stored + dead-lettered = sent, per topic, in records (a message dead-lettered whole holds one record here)
    dead = dict.fromkeys(expected["sent"], 0)
    for letter in letters:
        kind = letter["source"]["topic"].rsplit(".", 1)[1]
        dead[kind] += 1 if letter["records"] is None else len(letter["records"])
    stored_records = {"points": stored["ingested"], "steps": stored["steps"], "entities": stored["entities"]}
    assert {kind: stored_records[kind] + dead[kind] for kind in dead} == expected["sent"]


def test_offsets_wait_for_the_dead_letters_before_them(
    kafka_bootstrap: str, topic_prefix_factory: Any, chdb_store: Path
) -> None:
    prefix = topic_prefix_factory(partitions=1)
    topics = Topics(prefix)
    messages = [(topics.points, b"garbage"), *[(topics.points, encode_point_block(_block(i))) for i in range(3)]]
    asyncio.run(_send(kafka_bootstrap, messages))
    worker = _worker(kafka_bootstrap, prefix, chdb_store)
    sender = worker._dlq
    real_send = sender._send_some
    state = {"down": True, "failures": 0}

    async def flaky_send() -> None:
        if state["down"]:
            state["failures"] += 1
            raise ConnectionError("the dead-letter topic is unreachable (test)")
        await real_send()

    sender._send_some = flaky_send

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        await _until(lambda: state["failures"] >= 4 and _count(worker, "ingested") == 3, what="write, no letter")
        assert await _committed(kafka_bootstrap, f"{prefix}-sink") == {}  # not past an unacknowledged dead letter
        assert worker.stats.dead_letters == 0
        state["down"] = False
        await _until_async(lambda: _committed(kafka_bootstrap, f"{prefix}-sink"), {topics.points: 4})
        assert worker.stats.dead_letters == 1
        stop.set()
        await asyncio.wait_for(task, timeout=30)

    asyncio.run(scenario())
    assert _count(worker, "points") == 150
    worker.sink.close()
    letters = asyncio.run(_dead_letters(kafka_bootstrap, sink_dlq_topic(prefix), 1))
    assert [(x["reason"], x["source"]["offset"], x["raw"]) for x in letters] == [("malformed", 0, b"garbage")]


class ChunksAway:
    """A real backend whose reads of ``sink_chunks`` fail the first ``failures`` times (ClickHouse away)."""

    def __init__(self, inner: Any, failures: int) -> None:
        self.inner, self.kind, self.failures = inner, inner.kind, failures

    def query(self, sql: str, params: Any = None, *, readonly: bool = False) -> Any:
        if "sink_chunks" in sql and self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable("ClickHouse is away (test)")
        return self.inner.query(sql, params, readonly=readonly)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_store_away_when_a_partition_is_assigned_is_waited_for(
    kafka_bootstrap: str, topic_prefix_factory: Any, chdb_store: Path
) -> None:
    prefix = topic_prefix_factory(partitions=1)
    topics = Topics(prefix)
    asyncio.run(_send(kafka_bootstrap, [(topics.points, encode_point_block(_block(i))) for i in range(3)]))
    worker = _worker(kafka_bootstrap, prefix, chdb_store)
    worker.sink.backend = away = ChunksAway(worker.sink.backend, failures=3)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        await _until(lambda: worker.stats.points == 150 or task.done(), what="points after the store came back")
        assert not task.done(), task
        stop.set()
        await asyncio.wait_for(task, timeout=30)

    asyncio.run(scenario())
    assert away.failures == 0
    assert _count(worker, "points") == 150
    worker.sink.close()


OUTAGE_WORKER = textwrap.dedent("""
    import asyncio, logging, sys
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from trackstream.schemas.settings import KafkaSettings
    from trackstream.sinks.batch import BatchLimits
    from trackstream.sinks.sink import Sink
    from trackstream.sinks.worker import SinkWorker

    bootstrap, prefix, store = sys.argv[1:4]
    sink = Sink.open(data_dir=store)

    async def main():
        worker = SinkWorker(sink, kafka=KafkaSettings(bootstrap=bootstrap, topic_prefix=prefix),
                            group_id=prefix + "-sink", limits=BatchLimits(max_rows=10_000, linger_ms=100))
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(15, stop.set)
        async def report():
            landed = 0
            while True:
                (count,), = (await asyncio.to_thread(sink.backend.query, "SELECT count() FROM ingested"))[1]
                if count != landed:
                    landed = count
                    print(f"LANDED {count}", file=sys.stderr, flush=True)
                await asyncio.sleep(0.1)
        reporter = asyncio.create_task(report())
        await worker.run(stop)
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)
    asyncio.run(main())
    sink.close()
""")


class Lines:
    """The lines a subprocess writes to stderr, read on a thread, to wait on."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.all: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self._queue.put(line)

    def wait_for(self, text: str, timeout_s: float = 90.0) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no line with {text!r} in time; last lines: {self.all[-20:]}"
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            self.all.append(line)
            if text in line:
                return line

    def rest(self) -> list[str]:
        self._thread.join(timeout=30)
        while not self._queue.empty():
            self.all.append(self._queue.get())
        return self.all


def test_a_broker_outage_is_two_warnings_and_an_exit_during_one_is_clean(
    kafka_broker_factory: Callable[[], Any], tmp_path: Path
) -> None:
    broker = kafka_broker_factory()
    prefix = "outage"
    topics = Topics(prefix)

    async def create() -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, 1, 1) for name in topics.processed()])
        finally:
            await admin.close()

    asyncio.run(create())
    asyncio.run(_send(broker.bootstrap, [(topics.points, encode_point_block(_block(0))), (topics.points, b"junk")]))
    process = subprocess.Popen(
        [sys.executable, "-W", "default", "-c", OUTAGE_WORKER, broker.bootstrap, prefix, str(tmp_path / "store")],
        stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2],
    )
    lines = Lines(process)
    try:
        lines.wait_for("LANDED 1")
        broker.stop()
        lines.wait_for("lost Kafka at")
        broker.start()
        back = lines.wait_for("is back after")
        asyncio.run(_send(broker.bootstrap, [(topics.points, encode_point_block(_block(1)))]))
        lines.wait_for("LANDED 2")
        broker.stop()  # and stopped during the next outage: still a clean exit, promptly
        lines.wait_for("lost Kafka at")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = lines.rest()
    assert "retries)" in back
    # logged at INFO: aiokafka's demoted records (DEBUG) must not be printed either
    noisy = [line for line in output if any(level in line for level in (" ERROR ", " CRITICAL ", " DEBUG "))]
    assert not noisy, noisy[:20]
    warnings = [line for line in output if " WARNING " in line]
    assert sum("lost Kafka at" in line for line in warnings) == 2, warnings
    assert sum("is back after" in line for line in warnings) == 1, warnings
    asyncio_noise = ("Task was destroyed", "Unclosed", "was never awaited", "Exception ignored", "ResourceWarning",
                     "Task exception was never retrieved", "Future exception was never retrieved")
    assert not [line for line in output if any(noise in line for noise in asyncio_noise)], output[-40:]
