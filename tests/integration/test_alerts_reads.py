"""Fired alerts read back from a real chDB store: ``read_alerts`` / ``QueryService.alerts`` (order, the ``active``
flag, ``state``, ``since_ns``, ``runs``, NaN and ±inf values, replays), ``POST /api/v1/alerts`` and the owner
client over a real QueryServer, and the live page's ``alerts`` event (LiveView and the SSE stream).

Alert rows are written as the sink writes them (``Sink.write(alerts=...)``).
"""

from __future__ import annotations

import http.client
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import test_ui_serving
from conftest import unique_name
from test_api_auth import Served, post, same

from trackstream.api.client import owner_client
from trackstream.api.events import ALERTS_FIRST, ALERTS_LOOKBACK_NS, LiveView
from trackstream.api.wire import from_wire, to_wire
from trackstream.schemas.alerts import Alert
from trackstream.sinks.alert_reads import read_alerts
from trackstream.sinks.chdb_backend import ChdbBackend
from trackstream.sinks.errors import QueryError
from trackstream.sinks.query import QueryService
from trackstream.sinks.schema import migrate
from trackstream.sinks.sink import Sink

PROJECT = "watched"
S = 10**9
T0 = time.time_ns() - 600 * S  # ten minutes ago: what the live view polls is recent

# The fixtures: a query service on a fresh database of the session's chDB store, and its owner's API served
service = test_ui_serving.service
served = test_ui_serving.served


def alert(rule: str, run: str, state: str, at: int, *, step: int | None = 1, value: float | None = 1.0,
          when: str = "nan", metric: str = "loss", threshold: float | None = None, project: str = PROJECT,
          rank: int | None = 0) -> Alert:
    return Alert(rule_id=rule, when=when, project=project, entity_type="run", entity_id=run, metric=metric,
                 state=state, step=step, value=value, rank=rank, time_ns=at, message=f"{rule} {state} for {run}",
                 threshold=threshold)


# r1 (nan) fired and resolved for run a, fires for run b; r2 (above 5) fires for a; r3 (stalled) fired and
# resolved then fired again for c.
HISTORY = [
    alert("r1", "a", "firing", T0 + 1 * S, step=3, value=math.nan),
    alert("r2", "a", "firing", T0 + 2 * S, step=4, value=9.5, when="above", threshold=5.0),
    alert("r1", "a", "resolved", T0 + 3 * S, step=5, value=0.5),
    alert("r3", "c", "firing", T0 + 4 * S, step=None, value=301.0, when="stalled", metric="", threshold=300.0,
          rank=None),
    alert("r1", "b", "firing", T0 + 5 * S, step=7, value=-math.inf),
    alert("r3", "c", "resolved", T0 + 6 * S, step=None, value=None, when="stalled", metric="", threshold=300.0,
          rank=None),
    alert("r3", "c", "firing", T0 + 7 * S, step=None, value=302.5, when="stalled", metric="", threshold=300.0,
          rank=None),
    alert("r1", "a", "firing", T0 + 7 * S, step=2, value=math.nan, project="elsewhere"),
]


def write(service: QueryService, alerts: list[Alert]) -> None:
    Sink(service.backend).write(alerts=alerts)


def iso(ns: int) -> str:
    return datetime.fromtimestamp(ns // 1000 / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def keys(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(row["rule_id"], row["run"], row["state"]) for row in rows]


def test_rows_come_newest_first_with_their_fields_and_the_active_flag(service: QueryService) -> None:
    write(service, HISTORY)
    write(service, HISTORY[:3])  # a replay of transitions lands once (FINAL)
    rows = service.alerts(PROJECT)
    assert keys(rows) == [("r3", "c", "firing"), ("r3", "c", "resolved"), ("r1", "b", "firing"),
                          ("r3", "c", "firing"), ("r1", "a", "resolved"), ("r2", "a", "firing"),
                          ("r1", "a", "firing")]
    assert [row["active"] for row in rows] == [True, False, True, False, False, True, False]
    newest, _, inf, _, _, above, nan = rows
    assert list(above) == ["rule_id", "when", "project", "entity_type", "run", "metric", "state", "step", "value",
                           "rank", "threshold", "time", "time_ns", "message", "active"]
    assert above == {"rule_id": "r2", "when": "above", "project": PROJECT, "entity_type": "run", "run": "a",
                     "metric": "loss", "state": "firing", "step": 4, "value": 9.5, "rank": 0, "threshold": 5.0,
                     "time": iso(T0 + 2 * S), "time_ns": T0 + 2 * S, "message": "r2 firing for a", "active": True}
    assert math.isnan(nan["value"])
    assert inf["value"] == -math.inf
    assert nan["threshold"] is None
    assert (newest["step"], newest["rank"], newest["value"], newest["metric"]) == (None, None, 302.5, "")
    assert rows[1]["value"] is None
    assert newest["time"].endswith("Z")
    parsed = datetime.fromisoformat(newest["time"].replace("Z", "+00:00"))  # whole microseconds: compared exactly
    assert (int(parsed.timestamp()) * 10**6 + parsed.microsecond) * 1000 == (T0 + 7 * S) // 1000 * 1000


def test_filters_firing_since_runs_limit(service: QueryService) -> None:
    write(service, HISTORY)
    firing = service.alerts(PROJECT, state="firing")
    assert keys(firing) == [("r3", "c", "firing"), ("r1", "b", "firing"), ("r2", "a", "firing")]
    assert all(row["active"] for row in firing)
    assert keys(service.alerts(PROJECT, state="resolved")) == [("r1", "a", "resolved")]
    # since_ns: strictly after; the flag still compares with every transition of the pair
    since = service.alerts(PROJECT, since_ns=T0 + 4 * S)
    assert keys(since) == [("r3", "c", "firing"), ("r3", "c", "resolved"), ("r1", "b", "firing")]
    assert keys(service.alerts(PROJECT, since_ns=T0 + 4 * S, state="firing")) == [("r3", "c", "firing"),
                                                                                   ("r1", "b", "firing")]
    assert keys(service.alerts(PROJECT, runs=["a"])) == [("r1", "a", "resolved"), ("r2", "a", "firing"),
                                                         ("r1", "a", "firing")]
    assert keys(service.alerts(PROJECT, runs=["a"], state="firing")) == [("r2", "a", "firing")]
    assert keys(service.alerts(PROJECT, runs=["b", "nobody"])) == [("r1", "b", "firing")]
    assert service.alerts(PROJECT, runs=[]) == []
    limited = service.alerts(PROJECT, limit=2)
    assert keys(limited) == keys(service.alerts(PROJECT))[:2]
    assert [row["active"] for row in limited] == [True, False]
    assert keys(service.alerts("elsewhere")) == [("r1", "a", "firing")]
    assert service.alerts("elsewhere", entity_type="model") == []


def test_an_unknown_project_or_a_store_without_the_table_has_no_alerts(service: QueryService,
                                                                       chdb_store: Path) -> None:
    assert service.alerts("never-logged") == []
    older = ChdbBackend(chdb_store, database=unique_name("older"))
    try:
        migrate(older)
        older.command("DROP TABLE alerts")
        assert QueryService(backend=older).alerts(PROJECT) == []
        assert read_alerts(lambda sql, params: older.query(sql, params)[1], PROJECT) == []
    finally:
        older.close()


@pytest.mark.parametrize(("keywords", "message"), [({"state": "fired"}, "state must be"), ({"limit": 0}, "limit"),
                                                   ({"limit": True}, "limit"), ({"since_ns": 1.5}, "since_ns")])
def test_bad_arguments_raise_query_error(service: QueryService, keywords: dict[str, Any], message: str) -> None:
    with pytest.raises(QueryError, match=message):
        service.alerts(PROJECT, **keywords)


def test_values_are_bound_never_formatted(service: QueryService) -> None:
    tricky = "a' OR 1=1 --"
    write(service, [alert("r1", tricky, "firing", T0, value=math.nan, project="p'q")])
    assert keys(service.alerts("p'q", runs=[tricky])) == [("r1", tricky, "firing")]
    assert service.alerts("p' OR 1=1 --") == []


# --- through the owner's API -----------------------------------------------------------------------------------


def test_the_api_route_and_the_client_return_the_services_rows(served: Served, service: QueryService) -> None:
    write(service, HISTORY)
    answer = post(served, "alerts", {"project": PROJECT})
    assert answer.status == 200, answer
    assert answer.json() == {"result": orjson.loads(orjson.dumps(to_wire(service.alerts(PROJECT))))}
    firing = post(served, "alerts", {"project": PROJECT, "state": "firing", "runs": ["a", "b"], "limit": 1})
    assert keys(from_wire(firing.json()["result"])) == [("r1", "b", "firing")]
    assert from_wire(firing.json()["result"])[0]["value"] == -math.inf
    assert post(served, "alerts", {"project": PROJECT, "state": "fired"}).status == 422
    assert post(served, "alerts", {"project": PROJECT, "limit": 0}).status == 422
    assert post(served, "alerts", {"project": PROJECT}, token=None).status == 401
    client = owner_client(served.data_dir)
    assert client is not None
    assert same(client.alerts(PROJECT), service.alerts(PROJECT))
    nan = client.alerts(PROJECT, runs=["a"], since_ns=T0)[-1]
    assert math.isnan(nan["value"])
    assert same(client.alerts(PROJECT, since_ns=T0 + 4 * S, state="firing"),
                service.alerts(PROJECT, since_ns=T0 + 4 * S, state="firing"))


# --- the live page's alerts event --------------------------------------------------------------------------------


def test_the_live_view_sends_active_and_recent_alerts_then_each_new_one_once(service: QueryService) -> None:
    old_active = alert("r0", "z", "firing", T0 - 60 * S, value=math.nan)
    flapping = [alert(f"f{i:02d}", "b", state, T0 + i * S + (j * S // 2), value=float(i))
                for i in range(30) for j, state in enumerate(("firing", "resolved"))]
    write(service, [old_active, *flapping])
    live = LiveView(service, project=PROJECT, metric=None, runs=[], points=10, entity_type="run")
    first = live.new_alerts()
    assert len(first) == ALERTS_FIRST + 1
    assert [row["time_ns"] for row in first] == sorted((row["time_ns"] for row in first), reverse=True)
    assert first[-1]["rule_id"] == "r0"
    assert first[-1]["active"]
    assert keys(first[:-1]) == keys(service.alerts(PROJECT, limit=ALERTS_FIRST))
    assert live.new_alerts() == []
    newest = max(row["time_ns"] for row in first)
    late = alert("late", "d", "firing", newest - 5 * S, value=math.inf)  # stored after, with an older time
    fresh = alert("f00", "b", "firing", newest + S)
    write(service, [late, fresh])
    assert keys(live.new_alerts()) == [("f00", "b", "firing"), ("late", "d", "firing")]
    assert live.new_alerts() == []
    write(service, [alert("ancient", "d", "firing", newest - ALERTS_LOOKBACK_NS - S)])
    assert live.new_alerts() == []  # older than the look-back: the page gets it on its next first event
    assert ("ancient", "d", "firing") in keys(LiveView(service, project=PROJECT, metric=None, runs=[], points=10,
                                                       entity_type="run").new_alerts())


class EventStream:
    """An open SSE stream of the owner's API: :meth:`next` reads the next event (blocking, 60 s at most)."""

    def __init__(self, served: Served, path: str) -> None:
        parts = urlsplit(served.url)
        self.connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
        self.connection.request("GET", path, headers={"Authorization": f"Bearer {served.token}"})
        self.response = self.connection.getresponse()
        assert self.response.status == 200

    def next(self) -> tuple[str, Any]:
        name = None
        while True:
            line = self.response.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: ") and name is not None:
                return name, from_wire(orjson.loads(line.removeprefix("data: ")))

    def close(self) -> None:
        self.connection.close()


def test_the_event_stream_pushes_alerts(served: Served, service: QueryService) -> None:
    write(service, HISTORY)
    stream = EventStream(served, f"/api/v1/events?project={PROJECT}")
    try:
        name, data = stream.next()
        assert name == "alerts"
        assert keys(data["alerts"]) == keys(service.alerts(PROJECT))  # fewer than 50: all of them
        assert math.isnan(data["alerts"][-1]["value"])
        write(service, [alert("r2", "a", "resolved", T0 + 8 * S, value=4.0, when="above", threshold=5.0)])
        name, data = stream.next()
        assert name == "alerts"
        assert keys(data["alerts"]) == [("r2", "a", "resolved")]
        assert data["alerts"][0]["active"] is False
    finally:
        stream.close()
