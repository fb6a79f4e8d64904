"""What every trackstream Kafka client shares: quiet logs during outages, and a stop that never waits on them.

aiokafka logs every failed connection attempt at ERROR, which during an outage floods a training job's stderr
and a worker's log. trackstream reports an outage itself, once when Kafka is lost and once when it is back, and
demotes to DEBUG what aiokafka logs on trackstream's own threads (the SDK's flusher, a worker's event loop), with
a filter on the ``aiokafka`` loggers: levels, handlers and a user's own aiokafka clients (on other threads) are
left as they are, and the demoted records still reach whoever logs ``aiokafka`` at DEBUG.

Light: imports nothing outside the standard library; aiokafka objects are only passed in.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Final

log = logging.getLogger(__name__)

FLUSHER_THREAD: Final = "trackstream-flusher"
# The longest a worker's consumer lets the broker hold a fetch. aiokafka keeps one fetch in flight per broker, for
# the partitions with nothing buffered; while the busy ones wait to be taken, that fetch covers only quiet ones and
# the broker holds it this long, so fresh records wait behind it (faust fixes 1.5 s, aiokafka defaults to 0.5 s:
# most of the Kafka path's latency below saturation, measured with ``trackstream demo``).
FETCH_MAX_WAIT_MS: Final = 50


class _DemoteOwnRecords(logging.Filter):
    """Turns aiokafka records of trackstream's threads into DEBUG records (CRITICAL stays)."""

    def __init__(self) -> None:
        super().__init__()
        self.threads = {FLUSHER_THREAD}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.threadName in self.threads and logging.DEBUG < record.levelno < logging.CRITICAL:
            record.levelno = logging.DEBUG
            record.levelname = logging.getLevelName(logging.DEBUG)
            # a handler at NOTSET under an INFO logger would print it anyway: decide as a DEBUG call would
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


_DEMOTE: Final = _DemoteOwnRecords()


def quiet_aiokafka(*, this_thread: bool = False) -> None:
    """Attach the demoting filter to every ``aiokafka`` logger (a logger's filters see only its own records).

    The SDK's flusher thread is always quieted; ``this_thread=True`` adds the calling thread (a worker's event
    loop). Call it after aiokafka's modules are imported, so that their loggers exist.
    """
    if this_thread:
        _DEMOTE.threads.add(threading.current_thread().name)
    names = [n for n in list(logging.root.manager.loggerDict) if n == "aiokafka" or n.startswith("aiokafka.")]
    for name in ["aiokafka", *names]:
        logger = logging.getLogger(name)
        if _DEMOTE not in logger.filters:
            logger.addFilter(_DEMOTE)


async def stop_producer_quietly(producer: Any) -> None:
    """Stop an aiokafka producer; when it cannot flush (broker away), abandon its batches instead of waiting.

    Callers keep what the producer still holds (the SDK spooled it, a worker did not commit past it), so dropping
    it here loses nothing, and stopping its sender keeps it from delivering an old batch later. Waits at most
    about 4 s; never raises.
    """
    try:
        await asyncio.wait_for(producer.stop(), timeout=2)
        return
    except Exception as exc:
        log.debug("closing the Kafka producer failed: %r", exc)
    sender = getattr(producer, "_sender", None)
    task = getattr(sender, "sender_task", None)
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    try:
        await asyncio.wait_for(producer.client.close(), timeout=2)
    except Exception as exc:
        log.debug("closing the Kafka client failed: %r", exc)


async def topic_durability(admin: Any) -> tuple[int, dict[str, str]]:
    """Replication factor and topic configs for a topic trackstream creates, from a started aiokafka admin client.

    As many copies as the cluster allows, up to 3, with writes acknowledged by 2 of them
    (``min.insync.replicas=2``): losing one broker loses no topic and no acknowledged message. A single-broker
    development cluster gets one copy.
    """
    brokers = len((await admin.describe_cluster()).get("brokers", ())) or 1
    replicas = min(3, brokers)
    return replicas, ({"min.insync.replicas": "2"} if replicas >= 3 else {})


def pick_compression(requested: str) -> str | None:
    """The ``compression_type`` of a producer: for ``"auto"`` zstd, else lz4 when aiokafka can use them (cramjam
    installed), else none; ``"none"`` is None; any other name as it is.

    gzip is only used when asked for: aiokafka compresses it at level 9, which costs more CPU in the
    training process than it saves on a data-centre network. Used by the SDK and the stream worker.
    """
    from aiokafka.codec import has_lz4, has_zstd

    if requested == "auto":
        return "zstd" if has_zstd() else ("lz4" if has_lz4() else None)
    return None if requested == "none" else requested
