"""The store owner's query API over real sockets: who may call it, and what a refused caller gets.

A :class:`QueryServer` serves a real :class:`QueryService` on chDB (this session's store, a database per test)
and keeps ``owner.json`` and ``api.token`` in a separate data directory. Every answer is checked for CORS
headers (there must never be any).
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from conftest import unique_name

from trackstream.api.client import AuthenticationError, HttpQueryClient, owner_client
from trackstream.api.owner import MIN_TOKEN_CHARS, read_owner
from trackstream.api.server import QueryServer
from trackstream.api.wire import to_wire
from trackstream.schemas.alerts import Alert
from trackstream.schemas.envelope import EntityRef, MetricBatch
from trackstream.schemas.errors import ConfigError
from trackstream.schemas.processed import EntityState, PointBlock
from trackstream.sinks.chdb_backend import ChdbBackend
from trackstream.sinks.errors import IngestTimeout, QueryError
from trackstream.sinks.query import QueryService
from trackstream.sinks.schema import migrate
from trackstream.sinks.sink import Sink
from trackstream.store import StoreLock

PROJECT = "api"
ROUTES = ("compare", "curves", "runs", "sql", "sql_table", "entity_metrics", "entity", "history", "wait_ingested",
          "projects", "alerts", "runs_table")


# --- fixtures shared with test_api_schema.py --------------------------------------------------------------------


def write_runs(backend: Any) -> None:
    """Two runs of ``loss`` (run-b with a NaN, which fired a ``nan`` alert) and their lifecycle records, through
    the sink."""
    sink = Sink(backend)
    blocks = [
        PointBlock(EntityRef(PROJECT, "run", "run-a"), 0, "producer-a", 0,
                   [MetricBatch("loss", "series", [0, 1, 2], [1, 2, 3], [3.0, 2.0, 1.5])], [0]),
        PointBlock(EntityRef(PROJECT, "run", "run-b"), 0, "producer-b", 0,
                   [MetricBatch("loss", "series", [0, 1, 2], [1, 2, 3], [4.0, math.nan, 0.5])], [0]),
    ]
    sink.write(blocks)
    sink.write(entity_states=[
        EntityState(EntityRef(PROJECT, "run", run), f"name {run}", "completed", {"lr": lr}, {}, 1, 2, [], 0, 1)
        for run, lr in (("run-a", 0.1), ("run-b", 0.01))
    ])
    sink.write(alerts=[Alert("rule-nan", "nan", PROJECT, "run", "run-b", "loss", "firing", 1, math.nan, 0, 2,
                             "loss is NaN at step 1 (rank 0) in run run-b of project api", None)])


def open_service(store: Path) -> QueryService:
    """A query service on a fresh database of the session's chDB store, with :func:`write_runs`' data."""
    backend = ChdbBackend(store, database=unique_name("api"))
    migrate(backend)  # the query service never creates tables
    write_runs(backend)
    return QueryService(backend=backend)


@pytest.fixture(scope="module")
def service(chdb_store: Path) -> Iterator[QueryService]:
    """Read-only for every test of the module: one database, made once (its DDL takes about a second)."""
    query = open_service(chdb_store)
    yield query
    query.close()


@dataclass
class Served:
    server: QueryServer
    url: str
    data_dir: Path

    @property
    def token(self) -> str:
        return (self.data_dir / "api.token").read_text().strip()


@pytest.fixture(autouse=True)
def _owner_lock(tmp_path: Path) -> Iterator[None]:
    """The store lock a real owner holds while it serves (``owning_store``): clients trust owner.json only then."""
    lock = StoreLock(tmp_path / "owner")
    assert lock.acquire()
    yield
    lock.release()


@pytest.fixture
def served(service: QueryService, tmp_path: Path) -> Iterator[Served]:
    data_dir = tmp_path / "owner"
    server = QueryServer(service, data_dir)
    url = server.start()
    try:
        yield Served(server, url, data_dir)
    finally:
        server.stop()


# --- raw HTTP, every header under the test's control ----------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def request(url: str, method: str, path: str, *, body: bytes | None = None, host: str | None = None,
            headers: dict[str, str] | None = None) -> Answer:
    """One request with exactly these headers (``Host`` defaults to the URL's); never a CORS header back."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", parts.netloc if host is None else host)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        answer = Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()
    cors = [name for name in answer.headers if name.startswith("access-control-")]
    assert not cors, f"{method} {path} answered CORS headers {cors}"
    return answer


def post(served: Served, route: str, payload: Any, *, token: str | None = "", **options: Any) -> Answer:
    """POST JSON to ``/api/v1/<route>``; ``token=""`` sends the right token, None sends none."""
    headers = {"Content-Type": "application/json", **options.pop("headers", {})}
    bearer = served.token if token == "" else token
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    return request(served.url, "POST", f"/api/v1/{route}", body=orjson.dumps(payload), headers=headers, **options)


def same(a: Any, b: Any) -> bool:
    """Equal bit for bit (NaN included), tuples and lists alike."""
    return orjson.dumps(to_wire(a)) == orjson.dumps(to_wire(b))


VALID_BODIES: dict[str, Any] = {
    "compare": {"project": PROJECT, "metric": "loss", "agg": "min"},
    "curves": {"project": PROJECT, "runs": ["run-a", "run-b"], "metric": "loss", "points": 2},
    "runs": {"project": PROJECT},
    "sql": {"query": "SELECT {x:Float64} AS x", "parameters": {"x": 1.5}},
    "sql_table": {"query": "SELECT {x:Float64} AS x", "parameters": {"x": 1.5}},
    "entity_metrics": {"entity": {"project": PROJECT, "type": "run", "id": "run-a"}},
    "entity": {"project": PROJECT, "entity_id": "run-a"},
    "history": {"project": PROJECT, "entity_id": "run-b", "metric": "loss"},
    "wait_ingested": {"entity": {"project": PROJECT, "type": "run", "id": "run-a"}, "producer_id": "producer-a",
                      "seq": 0, "timeout_s": 5},
    "projects": {},
    "alerts": {"project": PROJECT, "state": "firing"},
    "runs_table": {"project": PROJECT, "search": "run-b", "sort": [{"field": "metric:loss:min", "dir": "asc"}]},
}


# --- authentication --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("authorization", [None, "Bearer ", "Bearer wrong-token-wrong-token-wrong", "Basic abc",
                                           "right-token-without-scheme", "Bearer right-token-plus-x"])
def test_a_call_without_the_right_token_is_401(served: Served, route: str, authorization: str | None) -> None:
    headers = {} if authorization is None else {
        "Authorization": authorization.replace("right-token", served.token)}
    answer = post(served, route, VALID_BODIES[route], token=None, headers=headers)
    assert answer.status == 401, answer
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert answer.json()["error"]["type"] == "AuthenticationError"
    assert served.token not in answer.body.decode()


@pytest.mark.parametrize("path", ["/api/v1/health", "/api/v1/openapi.json", "/", "/docs", "/api/v1/no-such-route"])
def test_every_get_needs_the_token_too(served: Served, path: str) -> None:
    assert request(served.url, "GET", path).status == 401
    with_token = request(served.url, "GET", path, headers={"Authorization": f"Bearer {served.token}"})
    assert with_token.status == (200 if path in ("/api/v1/health", "/api/v1/openapi.json", "/") else 404)
    if path == "/api/v1/health":
        assert with_token.json() == {"status": "ok"}


def test_the_right_token_gets_the_services_results(served: Served, service: QueryService) -> None:
    expected = {
        "compare": service.compare(PROJECT, "loss", agg="min"),
        "curves": service.curves(PROJECT, ["run-a", "run-b"], "loss", points=2),
        "runs": service.runs(PROJECT),
        "sql": [list(row) for row in service.sql("SELECT {x:Float64} AS x", {"x": 1.5})],
        "sql_table": {"columns": ["x"], "rows": [[1.5]]},
        "entity_metrics": service.entity_metrics(EntityRef(PROJECT, "run", "run-a")),
        "entity": service.entity(PROJECT, "run-a"),
        "history": service.history(PROJECT, "run-b", "loss"),
        "wait_ingested": None,
        "projects": [PROJECT],
        "alerts": service.alerts(PROJECT, state="firing"),
        "runs_table": service.runs_table(PROJECT, search="run-b", sort=[{"field": "metric:loss:min", "dir": "asc"}]),
    }
    for route in ROUTES:
        answer = post(served, route, VALID_BODIES[route])
        assert answer.status == 200, (route, answer)
        assert answer.headers["content-type"] == "application/json"
        got, want = answer.json()["result"], orjson.loads(orjson.dumps(to_wire(expected[route])))
        if route == "runs_table":  # each read has its own listing token and time
            for result in (got, want):
                result.pop("listing")
                result.pop("read_at")
        assert got == want, route
    rows = {row["id"]: row["value"] for row in expected["compare"]}
    assert rows == {"run-a": 1.5, "run-b": 0.5}
    assert [(row["run"], row["active"], math.isnan(row["value"])) for row in expected["alerts"]] == [
        ("run-b", True, True)]


def test_owner_client_needs_no_configuration_and_matches_the_service(served: Served, service: QueryService) -> None:
    client = owner_client(served.data_dir)
    assert client is not None
    assert client.url == served.url
    assert same(client.compare(PROJECT, "loss", agg="last"), service.compare(PROJECT, "loss", agg="last"))
    assert same(client.runs(PROJECT), service.runs(PROJECT))
    assert same(client.runs(PROJECT, runs=["run-b", "run-c"]), service.runs(PROJECT, runs=["run-b"]))
    page = client.runs_table(PROJECT, filters=[{"field": "id", "value": "-A"}], size=1)
    assert [row["id"] for row in page.pop("data")] == ["run-a"]
    assert (page["last_row"], page["total"], page["listing"] != "") == (1, 2, True)
    assert same(client.curves(PROJECT, ["run-b"], "loss", points=3),
                service.curves(PROJECT, ["run-b"], "loss", points=3))
    assert math.isnan(client.entity_metrics(EntityRef(PROJECT, "run", "run-b"))["loss"][1])
    assert client.sql("SELECT {v:Float64} + 1", {"v": math.inf}) == [[math.inf]]
    client.wait_ingested(EntityRef(PROJECT, "run", "run-a"), "producer-a", 0, timeout_s=5)
    with pytest.raises(IngestTimeout) as timed_out:
        client.wait_ingested(EntityRef(PROJECT, "run", "run-a"), "producer-a", 99, timeout_s=0.2)
    assert timed_out.value.retriable
    with pytest.raises(QueryError, match="agg must be one of"):
        client.compare(PROJECT, "loss", agg="median")
    with pytest.raises(TypeError, match="no_such_keyword"):
        client.compare(PROJECT, "loss", no_such_keyword=1)
    with pytest.raises(TypeError, match="positional"):
        client.runs(PROJECT, "extra")


def test_a_wrong_token_raises_a_clear_non_retriable_error(served: Served) -> None:
    wrong = HttpQueryClient(served.url, token="x" * 43, token_file=served.data_dir / "api.token")
    with pytest.raises(AuthenticationError) as refused:
        wrong.runs(PROJECT)
    assert not refused.value.retriable
    assert str(served.data_dir / "api.token") in str(refused.value)
    assert "readable only by" in str(refused.value)
    without = HttpQueryClient(served.url, token=None)
    with pytest.raises(AuthenticationError, match="cannot read its token file"):
        without.runs(PROJECT)


# --- browsers: origin, host, content type, CORS --------------------------------------------------------------------


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "https://127.0.0.1", "http://127.0.0.1"])
def test_a_foreign_origin_is_403_even_with_the_token(served: Served, origin: str) -> None:
    answer = post(served, "runs", {"project": PROJECT}, headers={"Origin": origin})
    assert answer.status == 403, answer
    assert "cross-origin" in answer.json()["error"]["message"]


def test_the_servers_own_origin_is_accepted(served: Served) -> None:
    port = urlsplit(served.url).port
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        assert post(served, "runs", {"project": PROJECT}, headers={"Origin": origin}).status == 200


@pytest.mark.parametrize("host", ["evil.example:{port}", "evil.example", "127.0.0.1:1", "127.0.0.1.evil.example:{port}",
                                  ""])
def test_a_foreign_host_is_403_dns_rebinding(served: Served, host: str) -> None:
    answer = post(served, "runs", {"project": PROJECT}, host=host.format(port=urlsplit(served.url).port))
    assert answer.status == 403, answer
    assert "DNS rebinding" in answer.json()["error"]["message"]


def test_loopback_aliases_are_accepted_as_host(served: Served) -> None:
    port = urlsplit(served.url).port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
        assert post(served, "runs", {"project": PROJECT}, host=host).status == 200, host


@pytest.mark.parametrize("content_type", ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
def test_a_body_that_is_not_json_is_403(served: Served, content_type: str | None) -> None:
    headers = {"Authorization": f"Bearer {served.token}"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    answer = request(served.url, "POST", "/api/v1/runs", body=orjson.dumps({"project": PROJECT}), headers=headers)
    assert answer.status == 403, answer
    assert "application/json" in answer.json()["error"]["message"]
    charset = post(served, "runs", {"project": PROJECT}, headers={"Content-Type": "application/json; charset=utf-8"})
    assert charset.status == 200


def test_a_cors_preflight_is_never_granted(served: Served) -> None:
    port = urlsplit(served.url).port
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    foreign = request(served.url, "OPTIONS", "/api/v1/sql", headers={"Origin": "http://evil.example", **preflight})
    assert foreign.status == 403
    unauthenticated = request(served.url, "OPTIONS", "/api/v1/sql",
                              headers={"Origin": f"http://127.0.0.1:{port}", **preflight})
    assert unauthenticated.status == 401
    own = request(served.url, "OPTIONS", "/api/v1/sql", headers={
        "Origin": f"http://127.0.0.1:{port}", "Authorization": f"Bearer {served.token}", **preflight})
    assert own.status == 405  # no CORS middleware: OPTIONS is not a method of any route (request() checked headers)


@pytest.mark.parametrize("body", [b"{", b"[]", b"null", b'{"project": 5}', b'{"project": "p", "x": 1}',
                                  b"\xff\xfe", b'{"query": "SELECT 1", "parameters": {"x": {"$f64": -1}}}',
                                  b'{"query": "SELECT 1", "parameters": {"x": {"$entity": [1]}}}'])
def test_malformed_bodies_are_4xx_never_500(served: Served, body: bytes) -> None:
    for route in ("runs", "sql"):
        answer = request(served.url, "POST", f"/api/v1/{route}", body=body, headers={
            "Authorization": f"Bearer {served.token}", "Content-Type": "application/json"})
        assert answer.status in (400, 422), (route, body, answer)
        error = answer.json()["error"]
        assert set(error) == {"type", "message", "retriable", "code"}


# --- the files ---------------------------------------------------------------------------------------------------


def test_owner_file_and_token_are_private_and_the_token_is_long(served: Served) -> None:
    for name in ("owner.json", "api.token"):
        mode = stat.S_IMODE((served.data_dir / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))
    assert len(served.token) >= 43 > MIN_TOKEN_CHARS  # token_urlsafe(32): 256 bits, 43 base64url characters
    owner = json.loads((served.data_dir / "owner.json").read_text())
    assert set(owner) == {"url", "pid", "host", "port"}
    assert owner["url"] == served.url
    assert owner["pid"] == os.getpid()
    assert owner["host"] == "127.0.0.1"
    assert served.token not in (served.data_dir / "owner.json").read_text()


def test_the_token_is_reused_across_a_restart(service: QueryService, tmp_path: Path) -> None:
    data_dir = tmp_path / "owner"
    first = QueryServer(service, data_dir)
    first.start()
    token = (data_dir / "api.token").read_text()
    first.stop()
    assert read_owner(data_dir) is None
    assert owner_client(data_dir) is None
    second = QueryServer(service, data_dir)
    url = second.start()
    try:
        assert (data_dir / "api.token").read_text() == token
        assert HttpQueryClient(url, token=token.strip()).runs(PROJECT)[0]["id"] == "run-a"
    finally:
        second.stop()
    assert not (data_dir / "owner.json").exists()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_token_file_others_can_read_is_refused(service: QueryService, tmp_path: Path, mode: int) -> None:
    data_dir = tmp_path / "owner"
    data_dir.mkdir(exist_ok=True)
    token = data_dir / "api.token"
    token.write_text("t" * 43)
    token.chmod(mode)
    with pytest.raises(ConfigError, match=f"chmod 600 {token}"):
        QueryServer(service, data_dir).start()
    assert not (data_dir / "owner.json").exists()


def test_a_token_file_of_another_account_is_refused(service: QueryService, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file to another account")
    data_dir = tmp_path / "owner"
    data_dir.mkdir(exist_ok=True)
    token = data_dir / "api.token"
    token.write_text("t" * 43)
    token.chmod(0o600)
    nobody = pwd.getpwnam("nobody")
    os.chown(token, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(ConfigError, match="belongs to uid"):
        QueryServer(service, data_dir).start()


def _python_for(uid: int, gid: int) -> str | None:
    """An interpreter the account can run (the test's own may live under a private home)."""
    for candidate in (sys.executable, shutil.which("python3"), "/usr/bin/python3"):
        if not candidate:
            continue
        try:
            probe = subprocess.run([candidate, "-I", "-c", "pass"], preexec_fn=_as(uid, gid),
                                   capture_output=True, timeout=60, check=False)
        except OSError:
            continue  # not executable by that account
        if probe.returncode == 0:
            return candidate
    return None


def _as(uid: int, gid: int) -> Any:
    def switch() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    return switch


ANOTHER_ACCOUNT = r"""
import json, sys, urllib.error, urllib.request
data, url = sys.argv[1], sys.argv[2]
report = {}
for name in ("api.token", "owner.json"):
    try:
        open(f"{data}/{name}", "rb").read()
        report[name] = "read"
    except PermissionError:
        report[name] = "PermissionError"
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
for route, body in (("runs", b'{"project": "api"}'), ("sql", b'{"query": "SELECT 1"}')):
    request = urllib.request.Request(f"{url}/api/v1/{route}", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        report[route] = opener.open(request, timeout=30).status
    except urllib.error.HTTPError as exc:
        report[route] = exc.code
print(json.dumps(report))
"""


def test_another_account_can_neither_read_the_files_nor_query(service: QueryService) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a process as another account")
    nobody = pwd.getpwnam("nobody")
    python = _python_for(nobody.pw_uid, nobody.pw_gid)
    if python is None:
        pytest.skip("no Python interpreter that the account nobody can run")
    # A directory others may enter: only the files' own modes keep them out.
    data_dir = Path(tempfile.mkdtemp(prefix="trackstream-api-"))
    try:
        data_dir.chmod(0o755)
        server = QueryServer(service, data_dir)
        url = server.start()
        try:
            result = subprocess.run([python, "-I", "-c", ANOTHER_ACCOUNT, str(data_dir), url],
                                    preexec_fn=_as(nobody.pw_uid, nobody.pw_gid),
                                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                                    capture_output=True, text=True, timeout=120, check=False)
        finally:
            server.stop()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"api.token": "PermissionError", "owner.json": "PermissionError",
                                         "runs": 401, "sql": 401}


def test_a_token_of_another_account_is_never_sent(served: Served) -> None:
    """owner.json and api.token written by different accounts: the client does not use that token."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file to another account")
    nobody = pwd.getpwnam("nobody")
    os.chown(served.data_dir / "owner.json", nobody.pw_uid, nobody.pw_gid)
    owner = read_owner(served.data_dir)
    assert owner is not None
    assert owner.token is None
    client = owner_client(served.data_dir)
    assert client is not None
    with pytest.raises(AuthenticationError, match="cannot read its token file"):
        client.runs(PROJECT)


# --- secrecy and exposure ----------------------------------------------------------------------------------------


def test_the_token_never_appears_in_logs_or_reprs(service: QueryService, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    data_dir = tmp_path / "owner"
    server = QueryServer(service, data_dir)
    url = server.start()
    token = (data_dir / "api.token").read_text().strip()
    try:
        served = Served(server, url, data_dir)
        client = owner_client(data_dir)
        assert client is not None
        client.runs(PROJECT)
        with pytest.raises(QueryError):
            client.sql("SELECT * FROM file('/etc/passwd')")
        with pytest.raises(IngestTimeout):
            client.wait_ingested(EntityRef(PROJECT, "run", "run-a"), "nobody", 5, timeout_s=0.1)
        post(served, "runs", {"project": PROJECT}, token="wrong")
        post(served, "runs", {"project": PROJECT}, headers={"Origin": "http://evil.example"})
        post(served, "sql", {"query": 5})
        owner = read_owner(data_dir)
        texts = [repr(server), repr(client), repr(owner), str(owner)]
        with pytest.raises(AuthenticationError) as refused:
            HttpQueryClient(url, token="y" * 43).runs(PROJECT)
        texts.append(str(refused.value))
    finally:
        server.stop()
    texts.append(caplog.text)
    texts.extend(str(record.args) for record in caplog.records)
    assert caplog.records, "nothing was logged: the check would prove nothing"
    leaks = [text for text in texts if token in text]
    assert not leaks, leaks


def test_binding_all_interfaces_warns_and_keeps_the_rules(service: QueryService, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="trackstream.api.server")
    data_dir = tmp_path / "owner"
    server = QueryServer(service, data_dir, host="0.0.0.0")
    url = server.start()
    try:
        served = Served(server, url, data_dir)
        assert urlsplit(url).hostname == "127.0.0.1"
        assert post(served, "runs", {"project": PROJECT}).status == 200
        assert post(served, "runs", {"project": PROJECT}, token=None).status == 401
        assert post(served, "runs", {"project": PROJECT}, host="evil.example").status == 403
        assert owner_client(data_dir) is not None
    finally:
        server.stop()
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "reachable from the network" in warnings[0]
    assert "every request needs the token" in warnings[0]
    assert str(data_dir / "api.token") in warnings[0]
    assert served.token not in warnings[0]


def test_loopback_binding_does_not_warn(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("trackstream.api")]


def test_the_cli_takes_host_and_port_for_every_serving_command() -> None:
    from trackstream.cli import build_parser

    parser = build_parser()
    local = parser.parse_args(["local", "--host", "0.0.0.0", "--port", "8765"])
    assert (local.host, local.port) == ("0.0.0.0", 8765)
    sink = parser.parse_args(["sink", "worker", "--host", "::1", "--port", "0"])
    assert (sink.host, sink.port) == ("::1", 0)
    default = parser.parse_args(["local"])
    assert (default.host, default.port) == ("127.0.0.1", 0)


def test_a_stale_owner_record_gets_no_token(tmp_path: Path) -> None:
    """owner.json left by a killed owner names a live pid (maybe anyone's now): without the store lock held, no
    client trusts it, so the token is never sent to whatever listens on that port."""
    data_dir = tmp_path / "stale"
    data_dir.mkdir()
    (data_dir / "owner.json").write_bytes(orjson.dumps({"url": "http://127.0.0.1:9", "pid": os.getpid(),
                                                        "host": "127.0.0.1", "port": 9}))
    (data_dir / "owner.json").chmod(0o600)
    assert read_owner(data_dir) is None
    assert owner_client(data_dir) is None
    lock = StoreLock(data_dir)
    assert lock.acquire()
    try:
        assert read_owner(data_dir) is not None  # the same record while the store is held: an owner
    finally:
        lock.release()
