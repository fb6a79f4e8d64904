"""Quiet broker outages: the sink worker says once that it lost Kafka and once that Kafka is back.

aiokafka logs every failed connection, fetch and metadata attempt at ERROR: a 20 s outage used to write over a
thousand ERROR lines. The worker demotes to DEBUG what aiokafka logs on the worker's own thread
(:func:`quiet_here`, through ``schemas.kafka_clients.quiet_aiokafka``) and reports the outage itself:
a :class:`BrokerWatch` probes the cluster (a metadata request on the consumer's connections) every 10 s,
every second while Kafka is away, logs one WARNING when a probe first fails and one when a probe succeeds again,
with how long the outage lasted and how many probes failed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("trackstream.sinks.worker")


def quiet_here() -> None:
    """Demote to DEBUG the records aiokafka logs on the calling thread (the worker's event loop), CRITICAL aside."""
    import aiokafka.admin  # noqa: F401 - its loggers exist from here on, so the filter reaches them too

    from trackstream.schemas.kafka_clients import quiet_aiokafka

    quiet_aiokafka(this_thread=True)


class BrokerWatch:
    """Whether Kafka answers, as a probe last saw it; logs the transitions, once each."""

    def __init__(self, bootstrap: str | None, *, interval_s: float = 10.0, down_interval_s: float = 1.0,
                 timeout_s: float = 5.0) -> None:
        self.bootstrap = bootstrap
        self.interval_s = interval_s
        self.down_interval_s = down_interval_s
        self.timeout_s = timeout_s
        self.down = False
        self.retries = 0  # failed probes in the current (or last) outage
        self.outages = 0
        self._since = 0.0
        self._wakeup = asyncio.Event()

    def failed(self, exc: BaseException) -> None:
        """A probe failed: the first failure after a success starts an outage (one WARNING)."""
        if self.down:
            self.retries += 1
            return
        self.down, self.retries, self._since = True, 0, time.monotonic()
        self.outages += 1
        log.warning("lost Kafka at %s (%s); retrying quietly until it is back, nothing is committed meanwhile",
                    self.bootstrap, _short(exc))

    def succeeded(self) -> None:
        """A probe succeeded: ends an outage (one WARNING, with its length and retries)."""
        if self.down:
            self.down = False
            log.warning("Kafka at %s is back after %.1fs (%d retries)", self.bootstrap,
                        time.monotonic() - self._since, self.retries)

    def suspect(self) -> None:
        """Something else failed to reach Kafka (a produce, a commit): probe now rather than at the next tick."""
        self._wakeup.set()

    async def run(self, probe: Callable[[], Awaitable[object]], stop: asyncio.Event) -> None:
        """Probe until ``stop`` is set."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(probe(), timeout=self.timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed(exc)
            else:
                self.succeeded()
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(),
                                       timeout=self.down_interval_s if self.down else self.interval_s)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


async def stop_consumer(consumer: Any) -> None:
    """``consumer.stop()``, also while the broker is away.

    aiokafka 0.14's fetcher, when closed while a fetch waits out its retry backoff (the broker is away), lets that
    fetch's CancelledError out of ``stop()`` before the other fetches and the client are closed. Such an error is
    not a cancellation of the caller: the rest of the shutdown is done here, so no task or connection is left.
    """
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.debug("the Kafka consumer stopped with a fetch cancelled in its retry backoff; closing the rest")
        pending = list(getattr(getattr(consumer, "_fetcher", None), "_pending_tasks", ()))
        for fetch in pending:
            fetch.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        client = getattr(consumer, "_client", None)
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()
