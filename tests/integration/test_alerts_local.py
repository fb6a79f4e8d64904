"""Alerts on the embedded default, end to end: a rule in the store's rules file, a training process logging a NaN
through the SDK, `trackstream local` evaluating it while it ingests, the transition stored in ``alerts`` and
POSTed to a real webhook server (once per transition, exactly)."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_local import _cli_json, _env, _owner_url, _start_local, _wait_for

from trackstream.alert_rules import load_rules, save_rule
from trackstream.schemas.alerts import make_rule


class Hook:
    """A webhook receiver on 127.0.0.1: records every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(orjson.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=s3cret"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def hook() -> Iterator[Hook]:
    receiver = Hook()
    yield receiver
    receiver.close()


LOG = """
import math, trackstream as ts
with ts.start_run("watched", name="diverges", run_id="r1") as run:
    for step, value in enumerate([3.0, 2.0, 1.5, math.nan, math.nan, 1.2, 1.1]):
        run.log_metric("loss", value, step=step)
with ts.start_run("watched", name="healthy", run_id="r2") as run:
    run.log_metric("loss", [3.0, 2.0, 1.0])
"""


def test_a_nan_fires_an_alert_that_is_stored_and_posted_once(tmp_path: Path, hook: Hook) -> None:
    data, spool = tmp_path / "data", tmp_path / "spool"
    env = _env(spool, data)
    rule = save_rule(data, make_rule("watched", "loss", "nan", webhook=hook.url))
    assert [r.id for r in load_rules(data)] == [rule.id]
    local = _start_local(env, tmp_path / "local.log")
    try:
        _wait_for(lambda: _owner_url(data) is not None, timeout_s=120, what="the local runner")
        subprocess.run([sys.executable, "-c", LOG], env=env, check=True, timeout=120)
        _wait_for(lambda: len(hook.bodies) >= 2, timeout_s=60, what="the webhook's two POSTs")
        rows = _cli_json(env, "sql", "SELECT entity_id, rule_id, condition, metric, state, step, rank FROM alerts "
                                     "FINAL ORDER BY time, state")
    finally:
        local.terminate()
        local.wait(60)
    assert rows == [{"entity_id": "r1", "rule_id": rule.id, "condition": "nan", "metric": "loss", "state": "firing",
                     "step": 3, "rank": 0},
                    {"entity_id": "r1", "rule_id": rule.id, "condition": "nan", "metric": "loss",
                     "state": "resolved", "step": 5, "rank": 0}]
    assert [(body["state"], body["step"], body["entity_id"]) for body in hook.bodies] == [
        ("firing", 3, "r1"), ("resolved", 5, "r1")]
    assert hook.bodies[0]["value"] == "NaN"
    assert "s3cret" not in (tmp_path / "local.log").read_text()
