"""The sink worker's cut rule while its writer is idle: the oldest chunk, once it is ``idle_linger_ms`` old or a
quarter of ``max_rows``; and the poll never sleeps past that age. Pure logic: no Kafka, no store."""

from __future__ import annotations

from typing import Any

from trackstream.schemas.settings import KafkaSettings
from trackstream.sinks.batch import Batcher, BatchLimits
from trackstream.sinks.chunks import Held
from trackstream.sinks.worker import SinkWorker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def worker(limits: BatchLimits) -> SinkWorker:
    return SinkWorker(sink=Any, kafka=KafkaSettings(bootstrap="127.0.0.1:1"), limits=limits, poll_ms=200)  # type: ignore[arg-type]


def held(clock: Clock, limits: BatchLimits) -> Held:
    return Held("p.points", 0, "points", Batcher(write=lambda items: None, limits=limits, clock=clock))


def test_an_idle_writer_takes_a_chunk_once_it_is_idle_linger_old_or_a_quarter_full() -> None:
    limits = BatchLimits(max_rows=400, linger_ms=1000, idle_linger_ms=100)
    clock, sink = Clock(), worker(limits)
    young = held(clock, limits)
    assert not sink._idle(young)  # empty
    young.batcher.add(object(), rows=10)
    clock.now += 0.099
    assert not sink._idle(young)
    clock.now += 0.001
    assert sink._idle(young)  # idle_linger_ms old
    full = held(clock, limits)
    full.batcher.add(object(), rows=100)
    assert sink._idle(full)  # a quarter of max_rows, however young
    sink._inflight = (object(), object())  # type: ignore[assignment]
    assert not sink._idle(young)  # a busy writer lets chunks grow
    assert not sink._idle(full)


def test_the_idle_poll_wakes_when_the_oldest_chunk_is_due() -> None:
    limits = BatchLimits(idle_linger_ms=100)
    clock, sink = Clock(), worker(limits)
    assert sink._poll_timeout_ms() == 200  # nothing held: the configured poll
    first, second = held(clock, limits), held(clock, limits)
    sink._held = {"a": first, "b": second}
    first.batcher.add(object())
    clock.now += 0.030
    second.batcher.add(object())
    assert 70 <= sink._poll_timeout_ms() <= 71  # the oldest is 30 ms old
    clock.now += 0.5
    assert sink._poll_timeout_ms() == 1  # overdue: poll without waiting
