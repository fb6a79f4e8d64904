"""The sink worker's dead letters: processed-topic messages, or records of them, that cannot be decoded or stored.

They go to ``<prefix>.sink.dlq`` (:func:`sink_dlq_topic`), keyed with the source message's key. A dead letter is
JSON (docs/wire-format.md describes the stream worker's, which this one extends):

``{"v": 1, "reason", "detail", "source": {"topic", "partition", "offset"}, "records", "rejected", "problems",
"points", "raw", "raw_size", "raw_sha256", "raw_truncated", "time_ns"}``

- ``records``: indices of the rejected records of the message (at most :data:`MAX_INDICES`), or ``null`` when
  the whole message is dead-lettered; ``rejected``: how many records were rejected (``null``: the whole message);
- ``problems``: ``{"record", "reason", "detail"}`` of the first :data:`MAX_PROBLEMS` rejected records;
- ``points``: the points of a dead-lettered point block, as far as its JSON could be read (else 0);
- ``raw``: base64 of the source message, cut so that the dead letter fits in
  :data:`~trackstream.schemas.limits.RECORD_BYTES_MAX`; ``raw_size`` and ``raw_sha256`` (hex) are those of the whole
  message, ``raw_truncated`` says whether ``raw`` was cut.

:class:`DeadLetterSender` produces them in order with ``acks="all"`` and retries a failed produce with capped
exponential backoff until the broker acknowledges it: a dead letter is never dropped. The worker commits a
message's offset only once its dead letter is acknowledged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from trackstream.schemas.kafka_clients import topic_durability
from trackstream.schemas.limits import RECORD_BYTES_MAX
from trackstream.schemas.settings import KafkaSettings
from trackstream.schemas.topics import Topics

log = logging.getLogger(__name__)

SINK_DLQ_VERSION: Final = 1
MAX_PROBLEMS: Final = 32
MAX_INDICES: Final = 4096
DETAIL_MAX: Final = 2000
KEY_MAX: Final = 1024  # a longer source key is replaced by its SHA-256 (32 bytes) as the dead letter's key
_SEND_AT_ONCE: Final = 256
_WARN_EVERY_S: Final = 60.0  # a failure streak outside a reported outage is logged at most this often


def sink_dlq_topic(prefix: str) -> str:
    """``<prefix>.sink.dlq`` (:attr:`Topics.sink_dlq`): what the sink worker could not decode or store."""
    return Topics(prefix).sink_dlq


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(slots=True)
class DeadLetter:
    """A source message, or some records of it, that the sink worker could not decode or store."""

    reason: str
    detail: str
    topic: str
    partition: int
    offset: int
    raw: bytes
    key: bytes | None = None
    records: list[int] | None = None  # rejected record indices; None: the whole message
    problems: list[tuple[int, str, str]] = field(default_factory=list)  # (record, reason, detail)
    points: int = 0
    time_ns: int = field(default_factory=time.time_ns)

    @classmethod
    def message(cls, reason: str, detail: str, source: tuple[str, int, int], raw: bytes | None,
                key: bytes | None = None, *, points: int = 0) -> DeadLetter:
        """The whole message at ``source`` (topic, partition, offset)."""
        return cls(reason, detail, *source, raw=raw or b"", key=key, points=points)

    @classmethod
    def some_records(cls, problems: list[tuple[int, str, str]], source: tuple[str, int, int], raw: bytes | None,
                     key: bytes | None = None) -> DeadLetter:
        """The records ``problems`` name, ``(index, reason, detail)``, of the message at ``source``."""
        _, reason, detail = problems[0]
        return cls(reason, detail, *source, raw=raw or b"", key=key, records=[p[0] for p in problems],
                   problems=problems)

    @property
    def count(self) -> int | None:
        """How many records are dead-lettered (``None``: the whole message)."""
        return None if self.records is None else len(self.records)

    def to_wire(self, raw_budget: int | None = None) -> dict[str, Any]:
        """The JSON-ready dead letter, with at most ``raw_budget`` bytes of the raw message (all by default)."""
        raw = self.raw if raw_budget is None else self.raw[: max(0, raw_budget)]
        return {
            "v": SINK_DLQ_VERSION,
            "reason": self.reason,
            "detail": _cut(self.detail, DETAIL_MAX),
            "source": {"topic": self.topic, "partition": self.partition, "offset": self.offset},
            "records": None if self.records is None else self.records[:MAX_INDICES],
            "rejected": self.count,
            "problems": [{"record": index, "reason": reason, "detail": _cut(detail, 300)}
                         for index, reason, detail in self.problems[:MAX_PROBLEMS]],
            "points": self.points,
            "raw": base64.b64encode(raw).decode("ascii"),
            "raw_size": len(self.raw),
            "raw_sha256": hashlib.sha256(self.raw).hexdigest(),
            "raw_truncated": len(raw) < len(self.raw),
            "time_ns": self.time_ns,
        }


def encode_dead_letter(letter: DeadLetter, max_bytes: int = RECORD_BYTES_MAX) -> bytes:
    """The dead letter's JSON bytes, at most ``max_bytes``: the raw message is cut to fit (its size and SHA-256
    are those of the whole message)."""
    whole = orjson.dumps(letter.to_wire())
    if len(whole) <= max_bytes:
        return whole
    empty = letter.to_wire(raw_budget=0)
    empty["raw_truncated"] = False  # the longest spelling, so the cut below never overshoots by its width
    overhead = len(orjson.dumps(empty))
    encoded = orjson.dumps(letter.to_wire(raw_budget=(max_bytes - overhead) // 4 * 3))
    assert len(encoded) <= max_bytes, (len(encoded), max_bytes)
    return encoded


def count_points(raw: bytes | None) -> int:
    """The points of a point block that could not be stored, as far as its JSON can be read (else 0)."""
    try:
        wire = orjson.loads(raw or b"")
        return sum(len(group["values"]) for group in wire["metrics"] if isinstance(group["values"], list))
    except Exception:
        return 0


def decode_dead_letter(raw: bytes) -> dict[str, Any]:
    """A dead letter as its JSON dict, ``raw`` decoded to bytes (for readers and tests)."""
    wire: dict[str, Any] = orjson.loads(raw)
    wire["raw"] = base64.b64decode(wire["raw"])
    return wire


@dataclass(slots=True)
class _Pending:
    key: bytes | None
    value: bytes
    done: asyncio.Future[None]


class DeadLetterSender:
    """Produces dead letters to ``topic``, in submission order, up to 256 at a time; each :meth:`submit` returns a
    future that is set once the broker acknowledged that dead letter (``acks="all"``, idempotent producer).

    The dead letters of a failed attempt (broker away, timeout) are sent again, ahead of later ones, after a
    backoff doubling from 0.1 s to ``max_backoff_s``; those of the attempt that were acknowledged are not, so a
    retry may land after them. Nothing is ever dropped. ``on_failure(exc)`` hears of every failed
    attempt (the worker's outage watch). A failure streak is logged at WARNING from its third attempt on, at most
    once a minute, and not at all while ``quiet()`` says an outage is already reported. ``on_acked(letter)`` hears
    of every acknowledged dead letter. The topic is created on first use when missing (``partitions()``
    partitions, replication factor 1, as the stream worker creates its topics).
    """

    def __init__(self, kafka: KafkaSettings, topic: str, *, partitions: Callable[[], int] = lambda: 3,
                 max_backoff_s: float = 10.0, ack_timeout_s: float = 30.0,
                 on_failure: Callable[[BaseException], None] = lambda exc: None,
                 on_acked: Callable[[DeadLetter], object] = lambda letter: None,
                 quiet: Callable[[], bool] = lambda: False) -> None:
        self.kafka = kafka
        self.topic = topic
        self.partitions = partitions
        self.max_backoff_s = max_backoff_s
        self.ack_timeout_s = ack_timeout_s
        self.on_failure = on_failure
        self.on_acked = on_acked
        self.quiet = quiet
        self.submitted = 0
        self.sent = 0
        self.retries = 0
        self._queue: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._producer: Any = None
        self._topic_ready = False

    @property
    def pending(self) -> int:
        """Dead letters submitted and not yet acknowledged."""
        return len(self._queue)

    def submit(self, letter: DeadLetter) -> asyncio.Future[None]:
        """Queue ``letter`` (encoded to fit the broker); the future is set when the broker acknowledged it.

        Logs the dead letter at WARNING (the first 20, then every 1,000th)."""
        if self.submitted < 20 or self.submitted % 1000 == 0:
            what = "the whole message" if letter.records is None else f"record(s) {letter.records[:10]}"
            log.warning("dead-lettering %s of %s[%d]@%d to %s: %s (%s)", what, letter.topic, letter.partition,
                        letter.offset, self.topic, letter.reason, _cut(letter.detail, 300))
        self.submitted += 1
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.add_done_callback(lambda future: future.cancelled() or self.on_acked(letter))
        key = letter.key if letter.key is None or len(letter.key) <= KEY_MAX else hashlib.sha256(letter.key).digest()
        self._queue.append(_Pending(key, encode_dead_letter(letter, RECORD_BYTES_MAX - len(key or b"")), done))
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="trackstream-sink-dlq")
        self._wakeup.set()
        return done

    async def _run(self) -> None:
        delay, streak, warned = 0.1, 0, -_WARN_EVERY_S
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                await self._send_some()
            except Exception as exc:
                self.retries += 1
                streak += 1
                self.on_failure(exc)
                # from the third failure on (the outage watch has probed by then), unless it reported an outage
                loud = streak >= 3 and not self.quiet() and time.monotonic() - warned >= _WARN_EVERY_S
                warned = time.monotonic() if loud else warned
                log.log(logging.WARNING if loud else logging.DEBUG, "producing %d dead letter(s) to %s failed "
                        "%d time(s) (%r); retrying in %.1fs, nothing is committed past them meanwhile",
                        len(self._queue), self.topic, streak, exc, delay)
                await self._reset()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
                continue
            if streak:
                log.info("dead letters to %s delivered again after %d failed attempt(s)", self.topic, streak)
            delay, streak = 0.1, 0

    async def _send_some(self) -> None:
        """Send the oldest dead letters at once and resolve those acknowledged; the others stay queued, in order,
        and the first failure is raised (so the caller backs off and retries them)."""
        producer = await self._start()
        batch = [self._queue[i] for i in range(min(len(self._queue), _SEND_AT_ONCE))]
        acks: list[asyncio.Future[Any]] = []
        failure: BaseException | None = None
        try:
            for item in batch:
                acks.append(await producer.send(self.topic, item.value, key=item.key))
        except Exception as exc:  # e.g. no metadata for the topic in time: the rest of the batch waits
            failure = exc
        done = (await asyncio.wait(acks, timeout=self.ack_timeout_s))[0] if acks else set()
        kept: list[_Pending] = []
        for at, item in enumerate(batch):
            ack = acks[at] if at < len(acks) else None
            problem = _problem(ack, done, self.ack_timeout_s)
            if problem is None:
                self.sent += 1
                if not item.done.done():
                    item.done.set_result(None)
            else:
                failure = failure or problem
                kept.append(item)
        for _ in batch:
            self._queue.popleft()
        self._queue.extendleft(reversed(kept))
        if failure is not None:
            raise failure

    async def _start(self) -> Any:
        if self._producer is not None:
            return self._producer
        from aiokafka import AIOKafkaProducer

        if not self._topic_ready:
            await self._create_topic()
        producer = AIOKafkaProducer(
            acks="all", enable_idempotence=True, linger_ms=5, max_request_size=max(1 << 20, RECORD_BYTES_MAX + 65536),
            request_timeout_ms=int(self.ack_timeout_s * 1000), retry_backoff_ms=200, **self.kafka.client_options(),
        )
        try:
            await asyncio.wait_for(producer.start(), timeout=self.ack_timeout_s)
        finally:
            self._producer = producer  # a failed start is stopped by _reset, as a failed send is
        return producer

    async def _create_topic(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import TopicAlreadyExistsError

        admin = AIOKafkaAdminClient(**self.kafka.client_options())
        try:
            await asyncio.wait_for(admin.start(), timeout=self.ack_timeout_s)
            if self.topic not in set(await admin.list_topics()):
                replicas, durable = await topic_durability(admin)
                with contextlib.suppress(TopicAlreadyExistsError):  # another worker of the group was faster
                    topic = NewTopic(self.topic, self.partitions(), replicas, topic_configs=durable)
                    await admin.create_topics([topic])
                log.info("created the sink's dead-letter topic %s", self.topic)
            self._topic_ready = True
        finally:
            with contextlib.suppress(Exception):
                await admin.close()

    async def _reset(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            from trackstream.schemas.kafka_clients import stop_producer_quietly  # abandons what it cannot send

            await stop_producer_quietly(producer)

    async def close(self) -> None:
        """Stop sending; dead letters not acknowledged yet are abandoned (their offsets were not committed, so a
        replay produces them again)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._reset()
        for item in self._queue:
            item.done.cancel()
        self._queue.clear()


def _problem(ack: asyncio.Future[Any] | None, done: set[Any], timeout_s: float) -> BaseException | None:
    """Why a send was not acknowledged (``None``: it was); an ack still pending is left to finish unobserved."""
    if ack is None:
        return ConnectionError("not sent")
    if ack not in done:
        ack.add_done_callback(lambda late: late.cancelled() or late.exception())  # retrieved: no asyncio warning
        return TimeoutError(f"no acknowledgement within {timeout_s:.0f}s")
    if ack.cancelled():
        return ConnectionError("the send was cancelled")
    return ack.exception()
