"""Alerts POSTed to a real HTTP server: retried through 503s and 429s, one body per alert, Slack bodies, failures
counted, and never a secret of the webhook URL in the logs."""

from __future__ import annotations

import logging
import sys
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest

from trackstream.schemas.alerts import Alert, AlertRule, alert_payload, make_rule
from trackstream.schemas.errors import MissingDependencyError
from trackstream.streams.webhooks import WebhookNotifier, redact_url

WAIT_S = 10.0


@dataclass
class Hook:
    """What the server answers (``statuses`` in turn, then ``status``) and what it received."""

    statuses: deque[int] = field(default_factory=deque)
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    received: list[tuple[str, dict[str, str], bytes, int]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    release: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    def wait_for(self, count: int) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.received) >= count, timeout=WAIT_S)

    def delivered(self) -> list[bytes]:
        with self.cond:
            return [body for _, _, body, status in self.received if 200 <= status < 300]


@contextmanager
def serve(hook: Hook, *, blocked: bool = False) -> Iterator[Hook]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with hook.cond:
                status = hook.statuses.popleft() if hook.statuses else hook.status
                hook.received.append((self.path, dict(self.headers), body, status))
                hook.cond.notify_all()
            hook.release.wait(WAIT_S)
            self.send_response(status)
            for name, value in hook.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    if not blocked:
        hook.release.set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    hook.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="test-webhook-server",
                              daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        hook.release.set()
        server.shutdown()
        server.server_close()
        thread.join(WAIT_S)


def rule(port: int, *, slack: bool = False, path: str = "/hook") -> AlertRule:
    return make_rule("p", "loss", "nan", webhook=f"http://127.0.0.1:{port}{path}", slack=slack)


def alert(step: int, state: str = "firing") -> Alert:
    return Alert(rule_id="r", when="nan", project="p", entity_type="run", entity_id="r1", metric="loss", state=state,
                 step=step, value=float("nan"), rank=0, time_ns=step, threshold=None,
                 message=f"loss is NaN at step {step} (rank 0) in run r1 of project p")


@pytest.fixture
def notifier() -> Iterator[WebhookNotifier]:
    notifier = WebhookNotifier(timeout_s=2.0, retries=3, backoff_s=0.01)
    yield notifier
    notifier.close(WAIT_S)


def test_each_alert_is_delivered_once_after_503s(notifier: WebhookNotifier) -> None:
    with serve(Hook(statuses=deque([503, 503]))) as hook:
        first, second = alert(1), alert(2, "resolved")
        assert notifier.notify(rule(hook.port), first)
        assert notifier.notify(rule(hook.port), second)
        assert notifier.flush(WAIT_S)
        assert [status for *_, status in hook.received] == [503, 503, 200, 200]
        assert hook.delivered() == [orjson.dumps(alert_payload(first)), orjson.dumps(alert_payload(second))]
        path, headers, body, _ = hook.received[-1]
        assert path == "/hook"
        assert headers["Content-Type"] == "application/json"
        assert orjson.loads(body)["value"] == "NaN"
    assert (notifier.sent, notifier.failed, notifier.dropped, notifier.pending) == (2, 0, 0, 0)


def test_429_is_retried_and_retry_after_is_capped() -> None:
    notifier = WebhookNotifier(timeout_s=2.0, retries=2, backoff_s=0.01, max_backoff_s=0.05)
    try:
        with serve(Hook(statuses=deque([429]), headers={"Retry-After": "3600"})) as hook:
            notifier.notify(rule(hook.port), alert(1))
            assert notifier.flush(WAIT_S)  # an hour's Retry-After waited 0.05 s
            assert [status for *_, status in hook.received] == [429, 200]
    finally:
        assert notifier.close(WAIT_S)
    assert (notifier.sent, notifier.failed) == (1, 0)


def test_a_slack_rule_posts_an_incoming_webhook_text(notifier: WebhookNotifier) -> None:
    with serve(Hook()) as hook:
        notifier.notify(rule(hook.port, slack=True), alert(7))
        assert notifier.flush(WAIT_S)
        assert [orjson.loads(body) for body in hook.delivered()] == [
            {"text": "FIRING: loss is NaN at step 7 (rank 0) in run r1 of project p"}]


def test_a_failing_hook_is_given_up_on_and_no_secret_of_its_url_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # httpx logs each request's full URL at INFO: those records are redacted
    notifier = WebhookNotifier(timeout_s=2.0, retries=2, backoff_s=0.01)
    try:
        with serve(Hook(status=500)) as hook:
            secret_rule = make_rule("p", "loss", "nan",
                                    webhook=f"http://user:secret@127.0.0.1:{hook.port}/hook/T0K3N?token=s3cret")
            notifier.notify(secret_rule, alert(1))
            assert notifier.flush(WAIT_S)
            assert len(hook.received) == 3
            assert hook.received[0][0] == "/hook/T0K3N?token=s3cret"
    finally:
        notifier.close(WAIT_S)
    assert (notifier.sent, notifier.failed) == (0, 1)
    gave_up = [r for r in caplog.records if r.levelno == logging.WARNING and "gave up" in r.getMessage()]
    assert len(gave_up) == 1
    line = gave_up[0].getMessage()
    assert f"http://127.0.0.1:{hook.port}/…" in line
    assert f"alert of rule {secret_rule.id}: loss is NaN at step 1" in line
    assert "after 3 attempts: HTTP 500" in line
    assert "HTTP Request" in caplog.text  # httpx's own records were there, and redacted
    for secret in ("s3cret", "secret", "T0K3N", "user:"):
        assert secret not in caplog.text


def test_a_refused_alert_is_not_retried_and_an_unreachable_hook_fails(caplog: pytest.LogCaptureFixture) -> None:
    notifier = WebhookNotifier(timeout_s=2.0, retries=2, backoff_s=0.01)
    try:
        with serve(Hook(status=404)) as hook:
            notifier.notify(rule(hook.port), alert(1))
            assert notifier.flush(WAIT_S)
            assert len(hook.received) == 1
        closed_port = hook.port  # the server is gone: connections are refused
        notifier.notify(rule(closed_port, path="/x?key=hidden"), alert(2))
        assert notifier.flush(WAIT_S)
    finally:
        notifier.close(WAIT_S)
    assert (notifier.sent, notifier.failed) == (0, 2)
    assert "HTTP 404 (not retried)" in caplog.text
    assert "ConnectError" in caplog.text
    assert "hidden" not in caplog.text


def test_a_full_queue_drops_with_a_counted_warning_and_close_stops_the_worker(
        caplog: pytest.LogCaptureFixture) -> None:
    notifier = WebhookNotifier(timeout_s=2.0, retries=0, max_queue=1)
    with serve(Hook(), blocked=True) as hook:
        assert notifier.notify(rule(hook.port), alert(1))
        assert hook.wait_for(1)  # the worker is inside the first POST
        assert notifier.notify(rule(hook.port), alert(2))
        assert not notifier.notify(rule(hook.port), alert(3))
        assert not notifier.notify(rule(hook.port), alert(4))
        assert notifier.dropped == 2
        assert not notifier.notify(make_rule("p", "loss", "nan"), alert(5))  # no webhook: nothing to do
        hook.release.set()
        assert notifier.close(WAIT_S)
        assert len(hook.delivered()) == 2
    assert (notifier.sent, notifier.dropped) == (2, 2)
    assert "1 alerts waiting); 1 alerts dropped so far" in caplog.text
    assert "2 alerts dropped so far" in caplog.text
    assert not notifier.notify(rule(hook.port), alert(6))  # closed
    assert notifier.dropped == 3
    assert not [t for t in threading.enumerate() if t.name == "trackstream-webhooks" and t.is_alive()]


def test_close_drops_what_still_waits_and_gives_up_a_retry_in_progress(caplog: pytest.LogCaptureFixture) -> None:
    notifier = WebhookNotifier(timeout_s=2.0, retries=5, backoff_s=60.0)
    with serve(Hook(status=503)) as hook:
        notifier.notify(rule(hook.port), alert(1))
        notifier.notify(rule(hook.port), alert(2))
        assert hook.wait_for(1)  # the first alert now waits 60 s before its retry
        assert not notifier.close(0.05)
    assert (notifier.sent, notifier.failed, notifier.dropped) == (0, 1, 1)
    assert "stopped by close()" in caplog.text
    assert "1 alerts not delivered, the notifier closed first" in caplog.text


def test_redact_url_keeps_scheme_host_and_port_only() -> None:
    assert redact_url("https://u:p@hooks.slack.com/services/T0/B0/KEY?x=1#f") == "https://hooks.slack.com/…"
    assert redact_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080/…"


def test_settings_are_checked_and_a_missing_httpx_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="timeout_s must be a finite number of seconds above 0"):
        WebhookNotifier(timeout_s=0)
    with pytest.raises(ValueError, match="retries must be >= 0"):
        WebhookNotifier(retries=-1)
    monkeypatch.setitem(sys.modules, "httpx", None)
    with pytest.raises(MissingDependencyError, match=r"'httpx' is not installed; it comes with the 'streams' extra"):
        WebhookNotifier()
