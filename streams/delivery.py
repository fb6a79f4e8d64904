"""Delivery of the worker's messages until the broker acknowledges each one: retried, never dropped.

:class:`Delivery` hands messages to a producer (``send``: a coroutine returning the delivery future, as faust's
``Producer.send`` does) and waits for their acknowledgements. A message that fails is sent again, alone, after a
capped exponential backoff, for as long as it takes; the other messages of the same batch are not affected. The first
failure of a streak is logged once (a connectivity failure only tells :class:`~.outage.BrokerHealth`, which reports
outages); the end of the streak once more, with its retry count.

A message the broker refuses for good (too large for it) cannot succeed by retrying: ``rescue`` may replace it
(the worker dead-letters an oversize output, or re-encodes an oversize dead letter smaller). Without a replacement
it is retried like any other failure, and logged at ERROR once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from trackstream.schemas.topics import Topics
from trackstream.streams.dlq import DlqRecord, SourcePosition, decode_dlq, dlq_key, encode_dlq
from trackstream.streams.outage import BrokerHealth
from trackstream.streams.records import OutMessage

log = logging.getLogger(__name__)

BACKOFF_MIN_S: Final = 0.1
BACKOFF_MAX_S: Final = 5.0
_TOO_LARGE: Final = ("MessageSizeTooLarge", "RecordTooLarge", "RecordListTooLarge", "RecordBatchTooLarge")
_CONNECTIVITY: Final = ("KafkaConnectionError", "NodeNotReadyError", "KafkaTimeoutError", "RequestTimedOutError",
                        "NotLeaderForPartitionError", "LeaderNotAvailableError", "ConnectionError", "TimeoutError")

Send = Callable[[OutMessage], Awaitable[Awaitable[Any]]]
Rescue = Callable[[OutMessage, BaseException], "OutMessage | None"]


def _names(exc: BaseException) -> list[str]:
    """Class names of ``exc``, its causes and their base classes (faust wraps aiokafka's errors)."""
    names: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        names.extend(cls.__name__ for cls in type(current).__mro__)
        current = current.__cause__ or current.__context__
    return names


def too_large(exc: BaseException) -> bool:
    """True when the broker (or the client, against its limit) refused a message for its size."""
    return any(name.startswith(_TOO_LARGE) for name in _names(exc))


def connectivity(exc: BaseException) -> bool:
    """True for failures that mean the broker cannot be reached (or did not answer in time)."""
    return any(name in _CONNECTIVITY for name in _names(exc))


@dataclass(slots=True)
class Pending:
    """A message handed to the producer: its delivery future, or the exception that handing it over raised."""

    message: OutMessage
    future: Awaitable[Any] | None = None
    error: BaseException | None = None


@dataclass
class Delivery:
    """Sends messages and waits until each one is acknowledged (see the module docstring)."""

    send: Send
    health: BrokerHealth | None = None
    rescue: Rescue | None = None
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    backoff_min_s: float = BACKOFF_MIN_S
    backoff_max_s: float = BACKOFF_MAX_S
    retried: int = 0  # messages sent again, over the worker's life
    rescued: int = 0
    _reported: set[str] = field(default_factory=set)

    async def submit(self, message: OutMessage) -> Pending:
        """Hand ``message`` to the producer; never raises (a failure is kept in the result and retried by settle)."""
        try:
            return Pending(message, future=await self.send(message))
        except Exception as exc:
            return Pending(message, error=exc)

    async def deliver(self, messages: list[OutMessage]) -> None:
        """Send ``messages`` and return once every one (or its replacement) is acknowledged."""
        await self.settle([await self.submit(message) for message in messages])

    async def settle(self, pending: list[Pending]) -> None:
        """Return once every pending message (or its replacement) is acknowledged; retries failures forever."""
        attempt = 0
        while pending:
            failed = await self._failures(pending)
            if not failed:
                break
            if attempt == 0:
                self._report(failed)
            attempt += 1
            await self.sleep(min(self.backoff_min_s * 2 ** min(attempt - 1, 16), self.backoff_max_s))
            again = []
            for item in failed:
                assert item.error is not None
                message = self._replace(item.message, item.error)
                self.retried += 1
                again.append(await self.submit(message))
            pending = again
        if attempt:
            log.info("delivered after %d retr%s", attempt, "y" if attempt == 1 else "ies")

    async def _failures(self, pending: list[Pending]) -> list[Pending]:
        futures = [item.future for item in pending if item.future is not None]
        results = iter(await asyncio.gather(*futures, return_exceptions=True))
        failed = []
        for item in pending:
            if item.future is not None:
                result = next(results)
                if isinstance(result, BaseException):
                    if isinstance(result, asyncio.CancelledError):
                        raise result
                    item.error = result
            if item.error is not None:
                failed.append(item)
        return failed

    def _replace(self, message: OutMessage, error: BaseException) -> OutMessage:
        if not too_large(error):
            return message
        replacement = self.rescue(message, error) if self.rescue is not None else None
        if replacement is None:
            if f"too_large:{message.topic}" not in self._reported:
                self._reported.add(f"too_large:{message.topic}")
                log.error("the broker refused a %d-byte %s message as too large (%r); retrying, it must take it "
                          "before the offsets behind it are committed", len(message.value), message.topic, error)
            return message
        self.rescued += 1
        return replacement

    def _report(self, failed: list[Pending]) -> None:
        error = failed[0].error
        assert error is not None
        if self.health is not None and all(item.error is not None and connectivity(item.error) for item in failed):
            self.health.suspect(f"{type(error).__name__}: {error}")
            return
        others = [item for item in failed if item.error is not None and not too_large(item.error)]
        if not others:
            return  # refused as too large: the rescue (or its absence) is logged per message
        topics = sorted({item.message.topic for item in others})
        key = f"{type(error).__name__}:{','.join(topics)}"
        if key in self._reported:
            log.debug("%d message(s) to %s not delivered (%r); retrying", len(others), topics, error)
            return
        self._reported.add(key)
        log.warning("%d message(s) to %s not delivered (%r); retrying with backoff (at most %.0f s) until the "
                    "broker takes them", len(others), ", ".join(topics), error, self.backoff_max_s)


def oversize_rescue(topics: Topics) -> Rescue:
    """What the worker does with a message the broker refuses as too large (see :class:`Delivery`).

    A dead letter is encoded again at half its size (its raw payload cut further). A processed-topic (or alerts)
    message is dead-lettered (``output_too_large``, its bytes as ``raw``, its points as ``count``), so that its
    records are accounted for rather than retried forever. Anything else (state checkpoints) has no replacement.
    """
    processed = set(topics.sink_inputs())

    def rescue(message: OutMessage, error: BaseException) -> OutMessage | None:
        if message.topic == topics.dlq:
            try:
                record = decode_dlq(message.value, key=message.key)
            except Exception:
                record = DlqRecord("internal_error", "an oversize dead letter could not be read back",
                                   SourcePosition(message.topic, -1, -1), message.value, key=message.key)
            smaller = encode_dlq(record, limit=len(message.value) // 2)
            log.error("the broker refused a %d-byte dead letter (%r): sent again in %d bytes", len(message.value),
                      error, len(smaller))
            return OutMessage(topics.dlq, message.key, smaller)
        if message.topic not in processed:
            return None
        record = DlqRecord("output_too_large", f"the broker refused a {len(message.value)}-byte {message.topic} "
                           f"message: {type(error).__name__}: {error}",
                           SourcePosition(message.topic, message.partition if message.partition is not None else -1,
                                          -1), message.value, key=message.key,
                           count=_points(message.value) if message.topic == topics.points else 0)
        log.error("the broker refused a %d-byte %s message (%r): dead-lettered", len(message.value), message.topic,
                  error)
        return OutMessage(topics.dlq, dlq_key(message.key), encode_dlq(record))

    return rescue


def _points(value: bytes) -> int:
    try:
        return sum(len(group["values"]) for group in orjson.loads(value)["metrics"])
    except Exception:
        return 0
