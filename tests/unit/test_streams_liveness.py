"""A run's status comes from its ranks, in any arrival order; silent ranks become crashed, and come back."""

from __future__ import annotations

import itertools
import random

import pytest

from trackstream.schemas import EntityRef, Envelope, Event, MetricBatch, encode
from trackstream.streams.processor import Processor
from trackstream.streams.records import SourcePosition

RUN = EntityRef("p", "run", "r")
S = 1_000_000_000


def envelope(producer: str, seq: int, rank: int, *, sent_s: float, events: list[Event] | None = None,
             world_size: int = 2) -> bytes:
    metrics = [MetricBatch("loss", "series", [seq], [int(sent_s * S)], [1.0])]
    return encode(Envelope(producer_id=producer, seq=seq, sent_ns=int(sent_s * S), entity=RUN, rank=rank,
                           world_size=world_size, metrics=metrics, events=events or []))


def feed(processor: Processor, raws: list[bytes], *, now_s: float) -> str:
    status = None
    for offset, raw in enumerate(raws):
        out = processor.process(raw, source=SourcePosition("t", 0, offset), now_ns=int(now_s * S))
        status = out.entity_states[-1].status if out.entity_states else status
    entity = processor.entity(RUN)
    assert entity is not None
    return entity.state.status


def finish(producer: str, seq: int, rank: int, status: str, *, at_s: float) -> bytes:
    return envelope(producer, seq, rank, sent_s=at_s, events=[Event("run_finished", int(at_s * S), {"status": status})])


@pytest.mark.parametrize(("statuses", "expected"), [
    (("completed", "completed"), "completed"),
    (("completed", "failed"), "failed"),
    (("killed", "completed"), "killed"),
    (("failed", "killed"), "failed"),
])
def test_the_run_ends_when_every_rank_ended_whatever_the_order(statuses: tuple[str, str], expected: str) -> None:
    starts = [envelope("a", 0, 0, sent_s=1), envelope("b", 0, 1, sent_s=1)]
    finishes = [finish("a", 1, 0, statuses[0], at_s=5), finish("b", 1, 1, statuses[1], at_s=6)]
    for order in itertools.permutations(finishes):
        processor = Processor()
        assert feed(processor, starts, now_s=2) == "running"
        assert feed(processor, [order[0]], now_s=7) == "running"  # one rank still runs
        assert feed(processor, [order[1]], now_s=7) == expected
        entity = processor.entity(RUN)
        assert entity is not None
        assert entity.state.ended_ns == 6 * S


def test_a_silent_rank_crashes_after_the_timeout_and_a_later_heartbeat_revives_it() -> None:
    processor = Processor(heartbeat_timeout_ms=60_000)
    feed(processor, [envelope("a", 0, 0, sent_s=0), envelope("b", 0, 1, sent_s=0)], now_s=0)
    feed(processor, [finish("a", 1, 0, "completed", at_s=10)], now_s=10)
    assert processor.tick(now_ns=59 * S).entity_states == []  # within the timeout: still running
    crashed = processor.tick(now_ns=61 * S).entity_states
    assert [state.status for state in crashed] == ["crashed"]
    ranks = {item["rank"]: item["status"] for item in crashed[0].producers}
    assert ranks == {0: "completed", 1: "crashed"}
    beat = envelope("b", 1, 1, sent_s=70, events=[Event("heartbeat", 70 * S, {})])
    assert feed(processor, [beat], now_s=70) == "running"
    assert feed(processor, [finish("b", 2, 1, "completed", at_s=80)], now_s=80) == "completed"


def test_a_processor_that_catches_up_on_a_backlog_crashes_no_live_rank() -> None:
    processor = Processor(heartbeat_timeout_ms=60_000)
    # envelopes sent long ago (the producer's clock) but processed now: the processor just saw the rank
    feed(processor, [envelope("a", 0, 0, sent_s=0, world_size=1)], now_s=600)
    assert processor.tick(now_ns=601 * S).entity_states == []
    assert [s.status for s in processor.tick(now_ns=661 * S).entity_states] == ["crashed"]


def test_a_restarted_rank_counts_by_its_newest_producer() -> None:
    processor = Processor(heartbeat_timeout_ms=60_000)
    feed(processor, [envelope("old", 0, 0, sent_s=0, world_size=1)], now_s=0)
    assert [s.status for s in processor.tick(now_ns=100 * S).entity_states] == ["crashed"]
    restarted = envelope("new", 0, 0, sent_s=120, world_size=1,
                         events=[Event("run_started", 120 * S, {"name": "", "params": {}, "tags": {}})])
    assert feed(processor, [restarted], now_s=120) == "running"
    assert feed(processor, [finish("new", 1, 0, "completed", at_s=130)], now_s=130) == "completed"


def test_heartbeats_emit_no_entity_record_but_keep_the_rank_alive() -> None:
    processor = Processor(heartbeat_timeout_ms=60_000)
    feed(processor, [envelope("a", 0, 0, sent_s=0, world_size=1)], now_s=0)
    beat = encode(Envelope(producer_id="a", seq=1, sent_ns=50 * S, entity=RUN, rank=0, world_size=1,
                           events=[Event("heartbeat", 50 * S, {})]))
    out = processor.process(beat, source=SourcePosition("t", 0, 9), now_ns=50 * S)
    assert out.entity_states == []  # nothing a reader sees changed
    assert processor.tick(now_ns=100 * S).entity_states == []  # 50 s after the heartbeat: alive
    assert [s.status for s in processor.tick(now_ns=111 * S).entity_states] == ["crashed"]


def _rank_history(rank: int, ending: str) -> list[bytes]:
    """One rank's envelopes in its own order: run_started, 50 steps, then its ending (none for a SIGKILLed rank)."""
    producer = f"rank-{rank}"
    started = Event("run_started", S, {"name": "n", "params": {}, "tags": {}})
    history = [envelope(producer, 0, rank, sent_s=1, events=[started], world_size=4)]
    history += [envelope(producer, seq, rank, sent_s=1 + seq, world_size=4) for seq in range(1, 51)]
    if ending != "sigkill":
        history.append(envelope(producer, 51, rank, sent_s=60, world_size=4,
                                events=[Event("run_finished", 60 * S, {"status": ending})]))
    return history


@pytest.mark.parametrize(("endings", "expected"), [
    (("completed", "completed", "completed", "completed"), "completed"),
    (("completed", "completed", "completed", "sigkill"), "crashed"),
    (("completed", "failed", "completed", "sigkill"), "failed"),
    (("completed", "killed", "completed", "completed"), "killed"),
])
def test_the_status_of_four_ranks_is_one_answer_for_every_arrival_order(endings: tuple[str, ...],
                                                                         expected: str) -> None:
    """Each rank's envelopes keep their own order (one producer, one partition); ranks interleave at random. A late
    ``run_started`` must not re-open the run, and finished ranks must not hide a dead one."""
    rng = random.Random(13)
    histories = [_rank_history(rank, ending) for rank, ending in enumerate(endings)]
    answers = set()
    for trial in range(60):
        queues = [list(history) for history in histories]
        if trial % 3 == 0:  # whole ranks one after another, in a random order of ranks
            rng.shuffle(queues)
            order = [raw for queue in queues for raw in queue]
        else:
            order = []
            while any(queues):
                queue = rng.choice([q for q in queues if q])
                order.append(queue.pop(0))
        processor = Processor(heartbeat_timeout_ms=30_000)
        status = feed(processor, order, now_s=100)
        if "sigkill" not in endings:
            answers.add(status)
            continue
        assert status == "running"  # the killed rank is not known dead yet
        answers.add(processor.tick(now_ns=131 * S).entity_states[-1].status)
    assert answers == {expected}
