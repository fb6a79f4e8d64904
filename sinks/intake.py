"""How the sink worker takes a partition's messages in: the chunk boundaries recorded for it in ``sink_chunks``,
loaded when it is assigned, and each fetched message decoded into its chunk, with a dead letter for what cannot
be stored."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from trackstream.sinks.checks import decode_records, reason_of
from trackstream.sinks.chunks import Held, Message, Plan, recorded_chunks
from trackstream.sinks.dlq import DeadLetter, count_points
from trackstream.sinks.errors import SinkError
from trackstream.sinks.sink import Sink

# the worker's logger: its log lines name the sink worker, whichever of its modules writes them
log = logging.getLogger("trackstream.sinks.worker")


async def load_plans(sink: Sink, group_id: str, tp: Any, offset: int, *,
                     backoff: Callable[[float], Awaitable[None]], max_backoff_s: float) -> list[Plan]:
    """The chunks recorded for partition ``tp`` at or after ``offset`` (its next message), to replay with their
    original boundaries. A store that is away is retried like a write: ``backoff(delay)`` polls (paused) meanwhile,
    the delay doubling up to ``max_backoff_s``."""
    delay = 0.1
    while True:
        try:
            plans = await asyncio.to_thread(recorded_chunks, sink, group_id, tp, offset)
            break
        except SinkError as exc:
            log.warning("reading the recorded chunks of %s[%d] failed (%s); retrying in %.1fs", tp.topic,
                        tp.partition, exc, delay)
            await backoff(delay)
            delay = min(delay * 2, max_backoff_s)
    if plans:
        log.info("%s[%d]: replaying %d recorded chunk(s) from offset %d with their original boundaries",
                 tp.topic, tp.partition, len(plans), offset)
    return plans


def decode_message(held: Held, message: Any) -> tuple[Message, int, list[DeadLetter]]:
    """The message as an item of ``held``'s chunk, its rows, and the dead letters of what cannot be stored.

    Points and step aggregates go straight into the chunk's columns; other records are decoded. A message that
    cannot be decoded is dead-lettered whole (its item is not stored), the records a column cannot hold one by one.
    """
    raw, source = message.value, (held.topic, held.partition, message.offset)
    item = Message(message.offset, [], raw, message.key)
    try:
        if held.kind == "points":
            return item, held.columns.add_raw(raw if raw is not None else b""), []
        if held.kind == "steps" and (count := held.columns.add_steps_raw(raw)) is not None:
            return item, count, []  # column-wise; the records are decoded again only if the chunk fails to build
        decoded = decode_records(held.kind, raw)
    except Exception as exc:
        item.stored = False
        detail, points = f"{type(exc).__name__}: {exc}", count_points(raw) if held.kind == "points" else 0
        return item, 0, [DeadLetter.message(reason_of(exc), detail, source, raw, message.key, points=points)]
    item.records = decoded.records
    letters = []
    if decoded.rejected:
        rejected = {index for index, _, _ in decoded.rejected}
        item.indices = [i for i in range(len(decoded.records) + len(rejected)) if i not in rejected]
        letters.append(DeadLetter.some_records(decoded.rejected, source, raw, message.key))
    return item, len(decoded.records), letters
