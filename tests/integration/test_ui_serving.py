"""The live page's server side over real sockets and a real chDB store: the token-in-URL login, the page's
headers, and the Server-Sent Events stream whose incremental buckets must equal a fresh ``curves()`` call."""

from __future__ import annotations

import http.client
import logging
import math
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from conftest import unique_name
from test_api_auth import Served, request, same

from trackstream.api.events import LiveView
from trackstream.api.server import QueryServer
from trackstream.schemas.envelope import EntityRef, MetricBatch
from trackstream.schemas.processed import EntityState, PointBlock
from trackstream.sinks.chdb_backend import ChdbBackend
from trackstream.sinks.query import QueryService
from trackstream.sinks.schema import migrate
from trackstream.sinks.sink import Sink
from trackstream.store import StoreLock
from trackstream.ui import missing_assets, page_url

PROJECT = "live"


class Writer:
    """Points of runs written through the sink, in blocks of consecutive steps."""

    def __init__(self, backend: Any) -> None:
        self.sink, self.seq = Sink(backend), 0

    def log(self, run: str, steps: range, *, generation: int = 0, special: dict[int, float] | None = None) -> None:
        values = [(special or {}).get(s, 1.0 / (1 + s)) for s in steps]
        batch = MetricBatch("loss", "series", list(steps), [10**18 + s * 10**6 for s in steps], values)
        self.sink.write([PointBlock(EntityRef(PROJECT, "run", run), 0, f"producer-{run}", self.seq, [batch],
                                    [generation])])
        self.seq += 1

    def state(self, run: str, status: str) -> None:
        self.seq += 1
        self.sink.write(entity_states=[EntityState(EntityRef(PROJECT, "run", run), f"name {run}", status, {}, {},
                                                   1, 0, [], 0, self.seq)])


@pytest.fixture
def service(chdb_store: Path) -> Iterator[QueryService]:
    backend = ChdbBackend(chdb_store, database=unique_name("ui"))
    migrate(backend)
    query = QueryService(backend=backend)
    yield query
    query.close()


@pytest.fixture
def served(service: QueryService, tmp_path: Path) -> Iterator[Served]:
    lock = StoreLock(tmp_path / "owner")
    assert lock.acquire()
    server = QueryServer(service, tmp_path / "owner")
    try:
        yield Served(server, server.start(), tmp_path / "owner")
    finally:
        server.stop()
        lock.release()


def apply(view: dict[str, list[dict[str, Any]]], event: str, data: dict[str, Any]) -> None:
    """What the page does with an event: replace a run's curve, or its buckets from the first new one on."""
    if event == "curves":
        for run, curve in data["curves"].items():
            view[run] = list(curve["buckets"])
    elif event == "buckets":
        for run, buckets in data["buckets"].items():
            if buckets:
                view[run] = [b for b in view.get(run, []) if b["step_from"] < buckets[0]["step_from"]] + buckets


def expected(service: QueryService, live: LiveView) -> dict[str, list[dict[str, Any]]]:
    """Brute force: each run's per-step values (``history``) in buckets of the view's plan for it."""
    out: dict[str, list[dict[str, Any]]] = {}
    for run, plan in live.plans.items():
        buckets: dict[int, list[tuple[int, float]]] = {}
        for row in service.history(PROJECT, run, "loss"):
            buckets.setdefault((row["step"] - plan["origin"]) // plan["width"], []).append((row["step"], row["value"]))
        out[run] = []
        for _, points in sorted(buckets.items()):
            values = [v for _, v in points]
            finite = [v for v in values if not math.isnan(v)]
            out[run].append({"step_from": points[0][0], "step_to": points[-1][0],
                             "min": min(finite) if finite else math.nan, "max": max(finite) if finite else math.nan,
                             "avg": math.fsum(finite) / len(finite) if finite else math.nan, "last": values[-1],
                             "nan_count": sum(math.isnan(v) for v in values),
                             "inf_count": sum(math.isinf(v) for v in values)})
    return out


def close(page: dict[str, list[dict[str, Any]]], want: dict[str, list[dict[str, Any]]]) -> bool:
    """Equal, floats within rounding (a sum in another order), NaN equal to NaN."""
    def eq(a: Any, b: Any) -> bool:
        if isinstance(a, float) and isinstance(b, float):
            return (math.isnan(a) and math.isnan(b)) or a == b or math.isclose(a, b, rel_tol=1e-12)
        return bool(a == b)

    return page.keys() == want.keys() and all(
        len(page[r]) == len(want[r]) and all(x.keys() == y.keys() and all(eq(x[k], y[k]) for k in x)
                                             for x, y in zip(page[r], want[r], strict=True)) for r in page)


@pytest.mark.parametrize("points", [1, 7, 50])
def test_live_buckets_equal_a_fresh_curves_call(service: QueryService, points: int) -> None:
    writer = Writer(service.backend)
    writer.log("r1", range(0, 300))
    writer.log("r2", range(0, 40))
    live = LiveView(service, project=PROJECT, metric="loss", runs=["r1", "r2", "r3"], points=points,
                    entity_type="run")
    page: dict[str, list[dict[str, Any]]] = {}
    first = live.curve_events()
    assert [event for event, _ in first] == ["curves"]
    for event, data in first:
        apply(page, event, data)
    assert same(dict(sorted(page.items())), service.curves(PROJECT, ["r1", "r2"], "loss", points=points))
    assert live.curve_events() == []  # nothing new, nothing sent
    # a run logging on (NaN and inf included), a new run, an overwrite: each poll's events keep the page exact
    for chunk in (range(300, 310), range(310, 900), range(900, 901)):
        writer.log("r1", chunk, special={305: math.nan, 600: math.inf})
        writer.log("r3", range(chunk.start - 300, chunk.stop - 300))
        for event, data in live.curve_events():
            apply(page, event, data)
        assert close(page, expected(service, live)), (chunk, page, expected(service, live))
        assert all(len(buckets) <= 2 * points for buckets in page.values())  # past that, a run is re-planned
    writer.log("r2", range(0, 5), generation=1)
    events = live.curve_events()
    assert [event for event, _ in events] == ["curves"]  # the overwrite re-sends r2 whole
    for event, data in events:
        apply(page, event, data)
    assert close(page, expected(service, live))
    assert page["r2"] == service.curves(PROJECT, "r2", "loss", points=points)["r2"]
    assert sum(b["nan_count"] for b in page["r1"]) == 1
    assert sum(b["inf_count"] for b in page["r1"]) == 1


def test_run_states_are_sent_when_they_change(service: QueryService) -> None:
    writer = Writer(service.backend)
    writer.state("r1", "running")
    live = LiveView(service, project=PROJECT, metric=None, runs=[], points=10, entity_type="run")
    changed, new = live.changed_runs()
    assert ([row["status"] for row in changed], new) == (["running"], [])  # the first read: every run, none new
    assert live.changed_runs() == ([], [])
    writer.state("r1", "crashed")
    writer.state("r2", "running")
    changed, new = live.changed_runs()
    assert sorted((row["id"], row["status"]) for row in changed) == [("r1", "crashed"), ("r2", "running")]
    assert new == ["r2"]


def test_a_changes_only_view_sends_no_first_listing(service: QueryService) -> None:
    writer = Writer(service.backend)
    live = LiveView(service, project=PROJECT, metric=None, runs=[], points=10, entity_type="run",
                    changes_only=True)
    assert live.changed_runs() == ([], [])  # an empty project: the first run to start is still new
    writer.state("r1", "running")
    changed, new = live.changed_runs()
    assert ([row["id"] for row in changed], new) == (["r1"], ["r1"])
    writer.state("r2", "running")
    writer.state("r1", "completed")
    changed, new = live.changed_runs()
    assert sorted((row["id"], row["status"]) for row in changed) == [("r1", "completed"), ("r2", "running")]
    assert new == ["r2"]


def test_runs_started_since_the_page_read_its_rows_are_new_on_the_first_read(service: QueryService) -> None:
    writer = Writer(service.backend)
    writer.state("old", "running")  # started at the writer's clock: see Writer.state
    started = {row["id"]: row["started_at"] for row in service.entities(PROJECT)}
    since_ms = int(datetime.fromisoformat(started["old"].replace("Z", "+00:00")).timestamp() * 1000) + 1
    live = LiveView(service, project=PROJECT, metric=None, runs=[], points=10, entity_type="run",
                    changes_only=True, since_ms=since_ms)
    assert live.changed_runs() == ([], [])  # "old" started before the page read its rows
    later = LiveView(service, project=PROJECT, metric=None, runs=[], points=10, entity_type="run",
                     changes_only=True, since_ms=since_ms - 1)
    changed, new = later.changed_runs()
    assert ([row["id"] for row in changed], new) == (["old"], ["old"])


def read_events(url: str, path: str, cookie: str, count: int) -> list[tuple[str, Any]]:
    """The first ``count`` events of an SSE stream (the connection is closed after them)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
    try:
        connection.request("GET", path, headers={"Cookie": cookie})
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("content-type", "").startswith("text/event-stream")
        events: list[tuple[str, Any]] = []
        name = None
        while len(events) < count:
            line = response.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: ") and name is not None:
                events.append((name, orjson.loads(line.removeprefix("data: "))))
    finally:
        connection.close()
    return events


def test_the_page_needs_the_token_and_trades_it_for_a_cookie(served: Served, service: QueryService,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    writer = Writer(service.backend)
    writer.log("r1", range(0, 20))
    writer.state("r1", "running")
    url, token = served.url, served.token
    port = urlsplit(url).port
    assert request(url, "GET", "/").status == 401
    assert request(url, "GET", "/?token=wrong-token-of-the-right-length-xxxxxxxxxx").status == 401
    login = request(url, "GET", urlsplit(page_url(url, token)).path + "?" + urlsplit(page_url(url, token)).query)
    assert login.status == 303
    assert login.headers["location"] == "/"
    cookie = login.headers["set-cookie"]
    assert cookie.startswith(f"trackstream_token_{port}={token};")
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    jar = cookie.split(";")[0]
    page = request(url, "GET", "/", headers={"Cookie": jar})
    assert page.status == 200
    assert not missing_assets()
    assert b"<html" in page.body
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert request(url, "GET", "/", headers={"Cookie": f"trackstream_token_1={token}"}).status == 401  # other port
    assert request(url, "GET", "/api/v1/health", headers={"Cookie": jar}).status == 200
    # a token in the URL is judged by itself, cookie or not: a wrong one is refused, never left in the address bar
    assert request(url, "GET", "/?token=wrong", headers={"Cookie": jar}).status == 401
    assert request(url, "GET", f"/?token={token}", headers={"Cookie": jar}).status == 303
    # a cookie-authenticated request with a body must still be JSON, and a foreign origin is refused
    assert request(url, "POST", "/api/v1/projects", body=b"{}", headers={"Cookie": jar}).status == 403
    assert request(url, "POST", "/api/v1/projects", body=b"{}",
                   headers={"Cookie": jar, "Content-Type": "application/json",
                            "Origin": "http://evil.example"}).status == 403
    projects = request(url, "POST", "/api/v1/projects", body=b"{}",
                       headers={"Cookie": jar, "Content-Type": "application/json"})
    assert projects.json() == {"result": [PROJECT]}
    events = read_events(url, f"/api/v1/events?project={PROJECT}&metric=loss&runs=r1&points=5", jar, 2)
    assert {name for name, _ in events} == {"runs", "curves"}
    curves = dict(events)["curves"]["curves"]["r1"]
    assert curves["plan"] == {"origin": 0, "width": 4}
    assert len(curves["buckets"]) == 5
    assert request(url, "GET", f"/api/v1/events?project={PROJECT}").status == 401
    assert token not in caplog.text
