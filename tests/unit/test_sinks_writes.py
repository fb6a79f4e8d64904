"""The sink worker's writes of several partitions: keys, merged tables, and the replay pool that rebuilds a recorded
write from its chunks. Pure logic: no Kafka, no store."""

from __future__ import annotations

from collections import namedtuple

import pytest

from trackstream.schemas.envelope import EntityRef, MetricBatch
from trackstream.schemas.processed import EntityState, PointBlock
from trackstream.sinks.batch import Batcher
from trackstream.sinks.chunks import Chunk, Held, Message, piece_key
from trackstream.sinks.sink import Prepared, Sink
from trackstream.sinks.writes import ReplayPool, Write, key_partitions, write_key

TP = namedtuple("TP", "topic partition")  # what aiokafka's TopicPartition is
POINTS0, POINTS1, STEPS0 = TP("ts.points", 0), TP("ts.points", 1), TP("ts.steps", 0)


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def cut(tp: TP, first: int, last: int, plan_key: str | None = None) -> Chunk:
    """The chunk of offsets first..last of ``tp``, replaying the write ``plan_key`` when given."""
    held = Held(tp.topic, tp.partition, tp.topic.rsplit(".", 1)[1], Batcher(write=lambda items: None))
    if plan_key is not None:
        held.plans.append((first, last, plan_key))
    for offset in range(first, last + 1):
        held.batcher.add(Message(offset, []))
    return held.seal(tp)


def test_a_write_key_lists_its_chunks_and_one_chunk_keeps_the_key_it_had_alone() -> None:
    a, b = cut(POINTS1, 5, 9), cut(POINTS0, 10, 20)
    key = write_key([a, b])
    assert key == "ts.points:0:10-20,ts.points:1:5-9" == write_key([b, a])
    assert key_partitions(key) == {("ts.points", 0), ("ts.points", 1)}
    assert write_key([a]) == piece_key("ts.points", 1, 5, 9) == "ts.points:1:5-9"


def test_a_recorded_write_is_rebuilt_whole_under_its_key() -> None:
    key = "ts.points:0:0-4,ts.steps:0:0-2"
    pool, assigned = ReplayPool(), [POINTS0, POINTS1, STEPS0]
    pool.add(cut(POINTS0, 0, 4, key), assigned)
    assert pool.ready() == []  # its steps chunk is not back yet
    assert pool.holds(POINTS0)
    assert not pool.holds(STEPS0)
    pool.add(cut(STEPS0, 0, 2, key), assigned)
    (write,) = pool.ready()
    assert (write.key, write.planned, sorted(c.tp for c in write.chunks)) == (key, True, [POINTS0, STEPS0])
    assert not pool.holds(POINTS0)
    assert pool.waiting == {}


def test_writes_leave_in_the_order_their_chunks_were_cut_per_partition() -> None:
    first, second = "ts.points:0:0-4,ts.steps:0:0-2", "ts.points:0:5-9"
    pool, assigned = ReplayPool(), [POINTS0, STEPS0]
    pool.add(cut(POINTS0, 0, 4, first), assigned)
    pool.add(cut(POINTS0, 5, 9, second), assigned)
    assert pool.ready() == []  # the second is whole, but offset 10 must not be committed before 0-4 is written
    pool.add(cut(STEPS0, 0, 2, first), assigned)
    assert [w.key for w in pool.ready()] == [first, second]


def test_a_write_spanning_a_partition_held_elsewhere_gets_a_new_key_at_once() -> None:
    pool = ReplayPool()
    pool.add(cut(POINTS0, 0, 4, "ts.points:0:0-4,ts.points:1:0-3"), [POINTS0])
    (write,) = pool.ready()
    assert (write.key, write.planned) == ("ts.points:0:0-4", False)


def test_a_write_that_does_not_come_back_whole_is_written_under_a_new_key_after_the_timeout() -> None:
    clock = Clock()
    pool, key = ReplayPool(timeout_s=10.0, clock=clock), "ts.points:0:0-4,ts.points:1:0-3"
    pool.add(cut(POINTS0, 0, 4, key), [POINTS0, POINTS1])
    clock.now += 9.9
    assert pool.ready() == []
    clock.now += 0.1
    (write,) = pool.ready()
    assert (write.key, write.planned) == ("ts.points:0:0-4", False)


def test_revoked_partitions_leave_the_pool() -> None:
    clock = Clock()
    pool, key = ReplayPool(clock=clock), "ts.points:0:0-4,ts.points:1:0-3"
    pool.add(cut(POINTS0, 0, 4, key), [POINTS0, POINTS1])
    pool.add(cut(POINTS1, 0, 2), [POINTS0, POINTS1])  # a chunk not cut as recorded: written alone
    pool.drop([POINTS0])
    assert not pool.holds(POINTS0)
    assert key not in pool.waiting
    (write,) = pool.ready()
    assert (write.key, write.planned) == ("ts.points:1:0-2", False)


def test_a_write_that_loses_a_revoked_chunk_gets_a_new_key() -> None:
    a, b = cut(POINTS0, 0, 4), cut(POINTS1, 0, 3)
    write = Write.of([a, b])
    assert write.keep(lambda chunk: True)
    assert write.key == "ts.points:0:0-4,ts.points:1:0-3"
    assert write.keep(lambda chunk: chunk is b)
    assert (write.key, write.chunks) == ("ts.points:1:0-3", [b])
    assert not write.keep(lambda chunk: False)


def test_merged_tables_hold_the_rows_of_every_part_in_insert_order() -> None:
    entity = EntityRef("p", "run", "r1")
    blocks = [PointBlock(entity, rank, "prod", 1, [MetricBatch("loss", "series", [0, 1], [10, 20], [1.0, 2.0])], [0])
              for rank in (0, 1)]
    parts = [Sink.prepare(blocks[:1]), Sink.prepare(entity_states=[EntityState(entity, "r1", "running")]),
             Sink.prepare(blocks[1:])]
    merged = Prepared.merge(parts)
    assert [name for name, _ in merged.tables] == ["points", "series_stats", "series_blocks", "ingested",
                                                   "entities", "params"][:len(merged.tables)]
    tables = dict(merged.tables)
    assert tables["points"].column("rank").to_pylist() == [0, 0, 1, 1]
    assert tables["points"].column("value32").to_pylist() == pytest.approx([1.0, 2.0, 1.0, 2.0])
    assert tables["entities"].num_rows == 1
    assert (merged.stats.points, merged.stats.entity_states) == (4, 1)
