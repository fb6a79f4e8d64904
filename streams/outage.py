"""Quiet broker outages for the stream worker: one WARNING when Kafka is lost, one when it is back.

During an outage aiokafka logs every failed connection attempt, metadata refresh, fetch and coordinator lookup at
ERROR, from every client of the worker (faust's consumer thread, its producer, the state loader): over a thousand
lines in 20 s. :class:`KafkaLogFilter`, attached to the ``aiokafka``, ``faust`` and ``mode`` loggers of the process
(:func:`install`), turns those records into DEBUG records and tells the :class:`BrokerHealth` monitor. The monitor
probes the broker (the worker supplies the probe) and reports the outage itself: one WARNING when the probe fails,
one when it succeeds again, with the outage's duration and retry count. Records the filter demotes are still there
for whoever logs these libraries at DEBUG; records unrelated to connectivity pass unchanged outside an outage.

The SDK and the sink worker demote aiokafka's records with :func:`trackstream.schemas.kafka_clients.quiet_aiokafka`,
which demotes by thread, so as to leave a training job's own Kafka clients alone. That does not fit here: faust runs
its consumer in a thread of its own (an unnamed ``mode`` service thread) besides the event loop's, and the records are
also this worker's signal to probe the broker. A stream worker owns its whole process, so this filter demotes by
message, on every thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Final

log = logging.getLogger(__name__)

FAMILIES: Final = ("aiokafka", "faust", "mode")
# Messages of aiokafka (and faust) that mean "the broker cannot be reached", whatever client logs them.
CONNECTIVITY: Final = (
    "Unable connect to node", "Unable to update metadata", "Unable to request metadata", "Connect call failed",
    "Failed fetch messages", "Group Coordinator Request failed", "Marking the coordinator dead",
    "NodeNotReadyError", "KafkaConnectionError", "Connection refused", "Heartbeat failed", "Error sending",
    "OffsetCommit failed", "coordinator dead", "RequestTimedOutError", "KafkaTimeoutError",
)


class BrokerHealth:
    """Whether the worker can reach Kafka, as far as it knows; reports each outage with two WARNINGs.

    Thread-safe: log records arrive from faust's consumer thread too. ``suspect`` is cheap (the log filter calls
    it); the worker's monitor loop (:meth:`watch`) probes the broker when something is suspected, and every
    ``interval_s`` while it is down.
    """

    def __init__(self, where: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.where = where
        self.clock = clock
        self._lock = threading.Lock()
        self._suspected = False
        self.down_since: float | None = None
        self.retries = 0  # failed probes of the current outage
        self.suppressed = 0  # client log records demoted during the current outage
        self.outages = 0

    @property
    def down(self) -> bool:
        """True between a failed probe and the next successful one."""
        return self.down_since is not None

    def suspect(self, why: str = "") -> None:
        """Something failed in a way that may mean the broker is gone: probe it soon."""
        with self._lock:
            self._suspected = True
            if self.down_since is not None:
                self.suppressed += 1

    def probed(self, ok: bool, detail: str = "") -> None:
        """Record a probe's result; logs the WARNING that starts or ends an outage."""
        with self._lock:
            self._suspected = False
            if ok:
                if self.down_since is not None:
                    log.warning("Kafka at %s is reachable again after %.1f s: %d retries (%d client errors "
                                "logged at DEBUG)", self.where, self.clock() - self.down_since, self.retries,
                                self.suppressed)
                    self.down_since = None
                return
            if self.down_since is None:
                self.down_since = self.clock()
                self.retries = self.suppressed = 0
                self.outages += 1
                log.warning("lost Kafka at %s (%s); retrying until it is back, the Kafka clients' errors are "
                            "logged at DEBUG meanwhile", self.where, detail or "unreachable")
            else:
                self.retries += 1

    def due(self) -> bool:
        """True when a probe should run now: something was suspected, or the broker is down."""
        return self._suspected or self.down_since is not None

    async def watch(self, probe: Callable[[], Awaitable[str | None]], sleep: Callable[[float], Awaitable[None]], *,
                    interval_s: float = 1.0) -> None:
        """Forever: when :meth:`due`, run ``probe`` (None: reachable, else why not) and record it; then sleep."""
        while True:
            if self.due():
                try:
                    problem = await probe()
                except Exception as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                self.probed(problem is None, problem or "")
            await sleep(interval_s)


class KafkaLogFilter(logging.Filter):
    """Demotes the Kafka clients' connectivity records to DEBUG (and all their warnings during an outage)."""

    def __init__(self, health: BrokerHealth) -> None:
        super().__init__()
        self.health = health

    def filter(self, record: logging.LogRecord) -> bool:
        if not logging.WARNING <= record.levelno < logging.CRITICAL:
            return True
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        connectivity = any(marker in message for marker in CONNECTIVITY)
        if connectivity:
            self.health.suspect(message[:200])
        if connectivity or self.health.down:
            record.levelno = logging.DEBUG
            record.levelname = logging.getLevelName(logging.DEBUG)
            # a handler at NOTSET under an INFO logger would print it anyway: decide as a DEBUG call would
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def install(log_filter: KafkaLogFilter) -> int:
    """Attach ``log_filter`` to every existing logger of :data:`FAMILIES` (a logger's filters see only its own
    records, so each one needs it); returns how many loggers got it now. Call again to cover loggers created since.
    """
    added = 0
    names = [name for name in list(logging.root.manager.loggerDict)
             if name in FAMILIES or name.startswith(tuple(f"{family}." for family in FAMILIES))]
    for name in [*FAMILIES, *names]:
        logger = logging.getLogger(name)
        if log_filter not in logger.filters:
            logger.addFilter(log_filter)
            added += 1
    return added
