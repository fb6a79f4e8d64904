"""Delivery of fired alerts to webhooks (issue 15): a bounded queue and one daemon thread that POSTs with retries.

The caller (the stream processor's loop) only enqueues: :meth:`WebhookNotifier.notify` never blocks and never
raises. The worker POSTs :func:`~trackstream.schemas.alerts.alert_payload` (or, for a rule with ``slack``,
:func:`~trackstream.schemas.alerts.slack_payload`) as JSON, retrying connection errors, timeouts, 429 and 5xx with
exponential backoff (``Retry-After`` seconds honoured, capped), and gives up with a WARNING.

Webhook URLs often carry secrets in their user info, path or query (a Slack webhook's path is its key): logs show
``scheme://host[:port]/…`` only (:func:`redact_url`), and records that httpx and httpcore log from the worker
thread, which name the full URL, are redacted too.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import deque
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import orjson

from trackstream.schemas.alerts import Alert, AlertRule, alert_payload, slack_payload
from trackstream.schemas.errors import require

if TYPE_CHECKING:
    from types import TracebackType

    import httpx

__all__ = ["WebhookNotifier", "redact_url"]

log = logging.getLogger(__name__)

_URL: Final = re.compile(r"(?i)\b(https?)://(?:[^\s/?#@]*@)?([^\s/?#\"'<>@]+)[^\s\"'<>]*")
_HTTP_LOGGERS: Final = ("httpx", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy",
                        "httpcore.socks")


def redact_url(url: str) -> str:
    """What may be logged of a URL: ``scheme://host[:port]/…`` (no user info, path, query or fragment)."""
    match = _URL.search(url)
    return f"{match[1]}://{match[2]}/…" if match else "<not a URL>"


def _scrub(text: str, url: str | None = None) -> str:
    """``text`` with every URL redacted, and the secret-bearing parts of ``url`` if they appear on their own."""
    text = _URL.sub(lambda match: f"{match[1]}://{match[2]}/…", text)
    if url:
        try:
            parts = urlsplit(url)
            secrets = [parts.username, parts.password, parts.path, parts.query, parts.fragment]
        except ValueError:
            secrets = []
        for secret in sorted((s for s in secrets if s and len(s) > 1), key=len, reverse=True):
            text = text.replace(secret, "…")
    return text


class _RedactWorkerRecords(logging.Filter):
    """Redacts the URLs in records logged on a webhook worker thread (httpx logs each request's full URL)."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread in self.threads:
            record.msg, record.args = _scrub(record.getMessage()), None
        return True


_REDACT: Final = _RedactWorkerRecords()


def _describe(rule: AlertRule, alert: Alert) -> str:
    return f"{alert.state} {alert.when} alert of rule {rule.id}: {alert.message}"


class WebhookNotifier:
    """POSTs alerts to their rules' webhooks from a daemon thread; started by the constructor, stopped by
    :meth:`close` (or leaving a ``with`` block).

    ``timeout_s``: httpx's timeout of each request (connect, write, read, each); ``retries``: attempts after the first
    (so ``retries + 1`` POSTs at most); ``backoff_s``: the wait before the first retry, doubling after each, capped at
    ``max_backoff_s`` (which caps ``Retry-After`` too); ``max_queue``: alerts waiting at most, more are dropped.
    Counters: :attr:`sent`, :attr:`failed` (given up, or refused with a 4xx other than 429), :attr:`dropped`.

    Raises :class:`ValueError` for a bad setting, and
    :class:`~trackstream.schemas.errors.MissingDependencyError` when httpx is not installed.
    """

    def __init__(self, *, timeout_s: float = 5.0, retries: int = 5, backoff_s: float = 0.5, max_queue: int = 10_000,
                 max_backoff_s: float = 30.0) -> None:
        for name, value in (("timeout_s", timeout_s), ("backoff_s", backoff_s), ("max_backoff_s", max_backoff_s)):
            if not math.isfinite(value) or value < 0 or (name == "timeout_s" and value == 0):
                raise ValueError(f"{name} must be a finite number of seconds above 0, got {value!r}")
        if retries < 0 or max_queue < 1:
            raise ValueError(f"retries must be >= 0 and max_queue >= 1, got {retries!r} and {max_queue!r}")
        self._httpx = require("httpx", "streams")
        self._timeout_s, self._retries, self._backoff_s = timeout_s, retries, backoff_s
        self._max_queue, self._max_backoff_s = max_queue, max_backoff_s
        self._cond = threading.Condition()
        self._items: deque[tuple[AlertRule, Alert]] = deque()
        self._busy = False
        self._closed = False
        self._stop = threading.Event()
        self._sent = self._failed = self._dropped = 0
        for name in _HTTP_LOGGERS:
            logger = logging.getLogger(name)
            if _REDACT not in logger.filters:
                logger.addFilter(_REDACT)
        self._thread = threading.Thread(target=self._run, name="trackstream-webhooks", daemon=True)
        self._thread.start()

    # Counters are written under the lock; reading one int needs none.
    @property
    def sent(self) -> int:
        """Alerts a webhook accepted (a 2xx answer)."""
        return self._sent

    @property
    def failed(self) -> int:
        """Alerts given up on: retries exhausted, a 4xx answer other than 429, or stopped by :meth:`close`."""
        return self._failed

    @property
    def dropped(self) -> int:
        """Alerts never attempted: the queue was full, the notifier closed, or :meth:`close` found them waiting."""
        return self._dropped

    @property
    def pending(self) -> int:
        """Alerts waiting or being delivered."""
        with self._cond:
            return len(self._items) + self._busy

    def notify(self, rule: AlertRule, alert: Alert) -> bool:
        """Queue ``alert`` for ``rule.webhook``; True when queued, False when the rule has no webhook or the alert
        was dropped (queue full or notifier closed: a WARNING counts the drops, logged at the 1st, 2nd, 4th, 8th...).
        Never blocks, never raises."""
        if not rule.webhook:
            return False
        with self._cond:
            if not self._closed and len(self._items) < self._max_queue:
                self._items.append((rule, alert))
                self._cond.notify_all()
                return True
            self._dropped += 1
            dropped, why = self._dropped, "notifier closed" if self._closed else f"{self._max_queue} alerts waiting"
        if dropped & (dropped - 1) == 0:
            log.warning("alert webhook queue: dropped the %s (%s); %d alerts dropped so far",
                        _describe(rule, alert), why, dropped)
        return False

    def flush(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until every queued alert was delivered or given up on; True when none is left."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._items and not self._busy, timeout=timeout_s)

    def close(self, timeout_s: float = 10.0) -> bool:
        """Refuse new alerts, :meth:`flush` for up to ``timeout_s``, then stop the worker: what still waits is
        counted as dropped (with a WARNING), a retry in progress is given up on. Waits for a request in flight up to
        its own timeout. True when everything queued was handled. Idempotent."""
        with self._cond:
            self._closed = True
        flushed = self.flush(timeout_s)
        self._stop.set()
        with self._cond:
            left = len(self._items)
            self._items.clear()
            self._dropped += left
            self._cond.notify_all()
        if left:
            log.warning("alert webhooks: %d alerts not delivered, the notifier closed first", left)
        self._thread.join(4 * self._timeout_s)
        return flushed and not left

    def __enter__(self) -> WebhookNotifier:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _run(self) -> None:
        _REDACT.threads.add(threading.get_ident())
        try:
            with self._httpx.Client(timeout=self._timeout_s, follow_redirects=False) as client:
                while True:
                    with self._cond:
                        self._cond.wait_for(lambda: self._items or self._stop.is_set())
                        if self._stop.is_set():
                            return
                        rule, alert = self._items.popleft()
                        self._busy = True
                    try:
                        delivered = self._deliver(client, rule, alert)
                    except Exception as exc:  # a bug or an unforeseen httpx error must not end the worker
                        log.warning("alert webhook %s failed for the %s: %s: %s", redact_url(rule.webhook or ""),
                                    _describe(rule, alert), type(exc).__name__, _scrub(str(exc), rule.webhook))
                        delivered = False
                    with self._cond:
                        if delivered:
                            self._sent += 1
                        else:
                            self._failed += 1
                        self._busy = False
                        self._cond.notify_all()
        except Exception as exc:  # the client could not be built: say so, notify() drops once the queue is full
            log.warning("alert webhooks stopped: %s: %s", type(exc).__name__, _scrub(str(exc)))
        finally:
            _REDACT.threads.discard(threading.get_ident())

    def _deliver(self, client: httpx.Client, rule: AlertRule, alert: Alert) -> bool:
        """POST ``alert`` with retries; True when a 2xx came back."""
        url = rule.webhook or ""
        body = orjson.dumps(slack_payload(alert) if rule.slack else alert_payload(alert))
        attempt = 0
        while True:
            attempt += 1
            retry_after = None
            try:
                response = client.post(url, content=body, headers={"Content-Type": "application/json"})
            except self._httpx.TransportError as exc:  # connection errors and timeouts
                problem = f"{type(exc).__name__}: {_scrub(str(exc), url)}"
            else:
                if response.is_success:
                    return True
                problem = f"HTTP {response.status_code}"
                if response.status_code != 429 and response.status_code < 500:
                    log.warning("alert webhook %s refused the %s: %s (not retried)", redact_url(url),
                                _describe(rule, alert), problem)
                    return False
                retry_after = _seconds(response.headers.get("Retry-After"))
            if attempt > self._retries:
                break
            wait = self._backoff_s * 2 ** min(attempt - 1, 32) if retry_after is None else retry_after
            if self._stop.wait(min(wait, self._max_backoff_s)):
                problem += "; stopped by close()"
                break
        log.warning("alert webhook %s: gave up on the %s after %d attempts: %s", redact_url(url),
                    _describe(rule, alert), attempt, problem)
        return False


def _seconds(retry_after: str | None) -> float | None:
    """A ``Retry-After`` header in seconds, or None (absent, or an HTTP date: the backoff applies then)."""
    try:
        seconds = float(retry_after) if retry_after is not None else math.nan
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None

