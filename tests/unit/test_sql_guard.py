"""sinks/sql_guard.py without an engine: the EXPLAIN AST dump parser and checker over dumps printed by chDB 26.9."""

from __future__ import annotations

import pytest

from trackstream.sinks.errors import QueryError
from trackstream.sinks.sql_guard import (
    DENIED_FUNCTIONS,
    SYSTEM_TABLES,
    TABLE_FUNCTIONS,
    analyse,
    parse_dump,
    prepare,
    readonly_statement,
    statement_kind,
)

DB = "store"

SELECT_1 = """\
SelectWithUnionQuery (children 1)
 ExpressionList (children 1)
  SelectQuery (children 1)
   ExpressionList (children 1)
    Literal UInt64_1
"""


def select_from(table_line: str, where: str = "") -> str:
    """The dump of ``SELECT * FROM <table_line>`` (one line at depth 6), with an optional WHERE subtree at depth 3."""
    children = 3 if where else 2
    return (f"SelectWithUnionQuery (children 1)\n ExpressionList (children 1)\n  SelectQuery (children {children})\n"
            "   ExpressionList (children 1)\n    Asterisk\n   TablesInSelectQuery (children 1)\n"
            "    TablesInSelectQueryElement (children 1)\n     TableExpression (children 1)\n"
            f"      {table_line}\n{where}")


def table_function(name: str) -> str:
    return select_from(f"Function {name} (children 1)\n       ExpressionList (children 1)\n        Literal 'x'")


def in_identifier(name: str) -> str:
    return select_from("TableIdentifier points", "   Function in (children 1)\n    ExpressionList (children 2)\n"
                       f"     Identifier x\n     Identifier {name}\n")


# SELECT `a (children 1)\n     Function file` FROM t: the backquoted name prints a consistent fake subtree.
FAKE_SUBTREE = """\
SelectWithUnionQuery (children 1)
 ExpressionList (children 1)
  SelectQuery (children 2)
   ExpressionList (children 1)
    Identifier a (children 1)
     Function file
   TablesInSelectQuery (children 1)
    TablesInSelectQueryElement (children 1)
     TableExpression (children 1)
      TableIdentifier t
"""
# SELECT 1 AS `x (children 1)\n Function file`: the fake line breaks the tree.
FAKE_BROKEN = """\
SelectWithUnionQuery (children 1)
 ExpressionList (children 1)
  SelectQuery (children 1)
   ExpressionList (children 1)
    Literal UInt64_1 (alias x (children 1)
 Function file)
"""
EXPLAIN_OPTIONS = """\
Explain EXPLAIN (children 2)
 Set
 SelectWithUnionQuery (children 1)
  ExpressionList (children 1)
   SelectQuery (children 1)
    ExpressionList (children 1)
     Literal UInt64_1
"""
EXPLAIN_FORMAT = EXPLAIN_OPTIONS.replace("(children 2)", "(children 3)", 1) + " Identifier JSON\n"
EXPLAIN_OVERRIDE = """\
Explain EXPLAIN TABLE OVERRIDE (children 2)
 Function mysql (children 1)
  ExpressionList (children 1)
   Literal 'a'
 TableOverride  (children 1)
  Storage definition (children 1)
   Identifier x
"""
EXPLAIN_SHOW = "Explain EXPLAIN AST (children 1)\n ShowTables\n"
FORMAT_JSON = SELECT_1.replace("(children 1)", "(children 2)", 1) + " Identifier JSON\n"
OUTFILE = SELECT_1.replace("(children 1)", "(children 2)", 1) + " Literal '/tmp/x'\n"
SETTINGS = SELECT_1.replace("  SelectQuery (children 1)", "  SelectQuery (children 2)") + "   Set\n"
DESCRIBE_URL = """\
DescribeQuery (children 1)
 TableExpression (children 1)
  Function url (children 1)
   ExpressionList (children 2)
    Literal 'http://127.0.0.1:9/'
    Literal 'LineAsString'
"""
DESCRIBE_POINTS = "DescribeQuery (children 1)\n TableExpression (children 1)\n  TableIdentifier points\n"
DESCRIBE_SETTINGS = ("DescribeQuery (children 2)\n TableExpression (children 1)\n  TableIdentifier points\n Set\n")
SCALARS = """\
SelectWithUnionQuery (children 1)
 ExpressionList (children 1)
  SelectQuery (children 1)
   ExpressionList (children 1)
    Function {name} (children 1)
     ExpressionList (children 1)
      Literal 'x'
"""


def test_parse_dump_reads_depths_and_children() -> None:
    nodes = parse_dump(SELECT_1)
    assert [(n.depth, n.body, n.children) for n in nodes] == [
        (0, "SelectWithUnionQuery", 1), (1, "ExpressionList", 1), (2, "SelectQuery", 1), (3, "ExpressionList", 1),
        (4, "Literal UInt64_1", 0)]


@pytest.mark.parametrize("dump", [
    "", "\n", SELECT_1.replace("    Literal", "\tLiteral"), SELECT_1 + "\n    Literal UInt64_2",
    SELECT_1.replace("   ExpressionList (children 1)", "   ExpressionList (children 2)"),
    SELECT_1.replace("    Literal", "     Literal"), SELECT_1 + "SelectWithUnionQuery\n", " " + SELECT_1, FAKE_BROKEN,
], ids=["empty", "blank", "tab", "blank-line", "count-mismatch", "depth-jump", "second-root", "indented-root",
        "fake-line-breaks-tree"])
def test_inconsistent_dumps_are_refused(dump: str) -> None:
    with pytest.raises(QueryError, match="could not analyse"):
        parse_dump(dump)
    with pytest.raises(QueryError, match="could not analyse"):
        analyse(dump, "SELECT 1", DB)


def test_fake_lines_only_add_refusals() -> None:
    parse_dump(FAKE_SUBTREE)  # consistent: the fake Function line is a child of the real Identifier
    with pytest.raises(QueryError, match="refuses function file"):
        analyse(FAKE_SUBTREE, "SELECT `a ...` FROM t", DB)


def test_plain_select_is_accepted() -> None:
    assert analyse(SELECT_1, "SELECT 1", DB).kind == "select"
    assert analyse(SELECT_1, "-- c\n/* d */ (SELECT 1)", DB).kind == "select"


@pytest.mark.parametrize("name", ["file", "FILE", "url", "s3", "remote", "mysql", "executable", "dictGetString",
                                  "dictHas", "joinGet", "joinGetOrNull", "hasColumnInTable", "__getScalar",
                                  "icebergS3", "azureBlobStorageCluster", "getMacro", "python"])
def test_denied_functions_anywhere(name: str) -> None:
    with pytest.raises(QueryError, match=f"refuses function {name}"):
        analyse(SCALARS.format(name=name), "SELECT 1", DB)


@pytest.mark.parametrize("name", ["url", "file", "merge", "view", "remote", "zeros", "format", "Python", "loop",
                                  "mergeTreeIndex", "fancyNewStorage"])
def test_table_functions_outside_the_allow_list(name: str) -> None:
    with pytest.raises(QueryError, match=f"refuses table function {name}"):
        analyse(table_function(name), "SELECT 1", DB)


@pytest.mark.parametrize("name", ["numbers", "numbers_mt", "values", "VALUES", "generate_series", "generateSeries",
                                  "generateRandom", "null", "SQLStandardValues"])
def test_allowed_table_functions(name: str) -> None:
    assert name.lower() in TABLE_FUNCTIONS
    assert analyse(table_function(name), "SELECT 1", DB).kind == "select"


def test_table_function_is_read_from_the_line_after_table_expression() -> None:
    with pytest.raises(QueryError, match="refuses table function url"):
        analyse(DESCRIBE_URL, "DESCRIBE url('x')", DB)
    unknown = select_from("ArrayJoin")
    with pytest.raises(QueryError, match="could not analyse"):
        analyse(unknown, "SELECT 1", DB)


@pytest.mark.parametrize(("table", "allowed"), [
    ("points", True), ("store.points", True), ("system.tables", True), ("system.one", True),
    ("INFORMATION_SCHEMA.TABLES", True), ("system.users", False), ("system.named_collections", False),
    ("system.processes", False), ("system.query_log", False), ("system.grants", False), ("other.points", False),
    ("information_schema.character_sets", False), ("default.points", False), ("a.b.c", False),
])
def test_table_identifiers(table: str, allowed: bool) -> None:
    dump = select_from(f"TableIdentifier {table} (alias t)")
    if allowed:
        assert analyse(dump, "SELECT 1", DB).heads == frozenset()
    else:
        with pytest.raises(QueryError, match="refuses"):
            analyse(dump, "SELECT 1", DB)


def test_qualified_names_without_a_store_database() -> None:
    with pytest.raises(QueryError, match=r"refuses table store\.points"):
        analyse(select_from("TableIdentifier store.points"), "SELECT 1", None)
    analyse(select_from("TableIdentifier system.one"), "SELECT 1", None)


def test_in_identifiers() -> None:
    with pytest.raises(QueryError, match=r"refuses system\.users"):
        analyse(in_identifier("system.users"), "SELECT 1", DB)
    analyse(in_identifier("system.tables"), "SELECT 1", DB)
    # otherdb.t and alias.column look alike: the heads go to check_statement, which refuses existing databases
    assert analyse(in_identifier("other.points"), "SELECT 1", DB).heads == {"other"}
    assert analyse(in_identifier("store.points"), "SELECT 1", DB).heads == frozenset()


@pytest.mark.parametrize("dump", [FORMAT_JSON, OUTFILE, SETTINGS, DESCRIBE_SETTINGS, EXPLAIN_FORMAT])
def test_clauses_are_refused(dump: str) -> None:
    kind = {"D": "DESCRIBE points", "E": "EXPLAIN SELECT 1"}.get(dump[0], "SELECT 1")
    with pytest.raises(QueryError, match=r"FORMAT|SETTINGS"):
        analyse(dump, kind, DB)


def test_explain() -> None:
    assert analyse(EXPLAIN_OPTIONS, "EXPLAIN PLAN header = 1 SELECT 1", DB).kind == "explain"
    explain = "Explain EXPLAIN QUERY TREE (children 1)\n" + "".join(f" {line}\n" for line in SELECT_1.splitlines())
    assert analyse(explain, "EXPLAIN QUERY TREE SELECT 1", DB).kind == "explain"
    with pytest.raises(QueryError, match="TABLE OVERRIDE"):
        analyse(EXPLAIN_OVERRIDE, "EXPLAIN TABLE OVERRIDE mysql('a')", DB)
    with pytest.raises(QueryError, match="of a SELECT only"):
        analyse(EXPLAIN_SHOW, "EXPLAIN AST SHOW TABLES", DB)
    nested = select_from("Subquery (children 1)\n       Explain EXPLAIN (children 1)\n"
                         + "".join(f"        {line}\n" for line in SELECT_1.splitlines()))
    with pytest.raises(QueryError, match="could not analyse"):
        analyse(nested, "SELECT * FROM (EXPLAIN SELECT 1)", DB)


def test_describe() -> None:
    assert analyse(DESCRIBE_POINTS, "DESCRIBE TABLE points", DB).kind == "describe"
    with pytest.raises(QueryError, match=r"refuses system\.users"):
        analyse(DESCRIBE_POINTS.replace("points", "system.users"), "DESC system.users", DB)


@pytest.mark.parametrize(("dump", "text", "ok"), [
    ("ShowTables\n", "SHOW TABLES", True),
    ("ShowTables\n", "show full tables like 'p%' limit 3", True),
    ("ShowTables (children 1)\n Identifier system\n", "SHOW TABLES FROM system LIKE 'o%'", True),
    ("ShowTables (children 1)\n Identifier other\n", "SHOW TABLES FROM other", False),
    ("ShowTables\n", "SHOW DATABASES", True),
    ("ShowTables\n", "SHOW SETTINGS LIKE 'x'", False),
    ("ShowTables\n", "SHOW DICTIONARIES", False),
    ("ShowTables\n", "SHOW TABLES -- c", False),
    ("ShowColumns\n", "SHOW COLUMNS FROM points", True),
    ("ShowColumns\n", "SHOW COLUMNS FROM users FROM system", False),
    ("ShowColumns\n", "SHOW COLUMNS FROM system.tables", True),
    ("ShowCreateTableQuery  points (children 1)\n Identifier points\n", "SHOW CREATE TABLE points", True),
    ("ShowCreateTableQuery system users (children 2)\n Identifier system\n Identifier users\n",
     "SHOW CREATE TABLE system.users", False),
    ("ExistsTableQuery  points (children 1)\n Identifier points\n", "EXISTS TABLE points", True),
    ("ExistsDatabaseQuery system  (children 1)\n Identifier system\n", "EXISTS DATABASE system", True),
    ("ShowGrantsQuery\n", "SHOW GRANTS", False),
    ("SHOW USERS query\n", "SHOW USERS", False),
    ("ShowProcesslistQuery\n", "SHOW PROCESSLIST", False),
    ("ShowCreateDatabaseQuery system  (children 1)\n Identifier system\n", "SHOW CREATE DATABASE system", False),
])
def test_show_and_exists(dump: str, text: str, ok: bool) -> None:
    if ok:
        assert analyse(dump, text, DB).kind in ("show", "exists")
    else:
        with pytest.raises(QueryError, match="refuses"):
            analyse(dump, text, DB)


def test_first_word_must_match_the_parse() -> None:
    # ClickHouse nests comments: this is a SELECT to it, an EXPLAIN to a non-nesting reader
    with pytest.raises(QueryError, match="could not analyse"):
        analyse(SELECT_1, "/* a /* b */ EXPLAIN */ SELECT 1", DB)


def test_unknown_elements_are_refused() -> None:
    with pytest.raises(QueryError, match="could not analyse"):
        analyse(SELECT_1.replace("Literal UInt64_1", "FancyNode x"), "SELECT 1", DB)


@pytest.mark.parametrize("query", [
    "SELECT 1", "  select 1;", "WITH x AS (SELECT 1) SELECT * FROM x", "-- c\nSHOW TABLES", "/* c */ DESCRIBE points",
    "EXPLAIN SELECT 1", "# c\nSELECT 1", "(SELECT 1) UNION ALL (SELECT 2)", "FROM points SELECT count()",
])
def test_prepare_accepts(query: str) -> None:
    text, kind = prepare(query)
    assert text == query.strip().rstrip(";")
    assert kind in ("select", "explain", "describe", "show", "exists")


@pytest.mark.parametrize(("query", "message"), [
    ("INSERT INTO points VALUES (1)", "not allowed"), ("DROP TABLE points", "not allowed"),
    ("SELECT 1; DROP TABLE points", "one statement"), ("ALTER TABLE x DELETE WHERE 1", "not allowed"),
    ("/* SELECT */ DELETE FROM points WHERE 1", "not allowed"), ("SELECTX 1", "not allowed"),
    ("OPTIMIZE TABLE points", "not allowed"), ("SELECT ';'", "one statement"), ("", "not allowed"),
    ("SET readonly = 0", "not allowed"), ("USE system", "not allowed"), ("(EXPLAIN SELECT 1)", "not allowed"),
    ("SYSTEM FLUSH LOGS", "not allowed"), ("KILL QUERY WHERE 1", "not allowed"), ("#x\nSELECT 1", "not allowed"),
])
def test_prepare_refuses(query: str, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        prepare(query)


_SETTINGS = "SETTINGS max_execution_time = 30, max_memory_usage = 4294967296, readonly = 1"


def test_readonly_statement() -> None:
    # the limits come before readonly = 1, after which no setting can change
    assert readonly_statement("SELECT 1 -- c") == f"SELECT * FROM (\nSELECT 1 -- c\n) {_SETTINGS}"
    assert readonly_statement("(SELECT 1)").startswith("SELECT * FROM (\n(SELECT 1)")
    for text in ("EXPLAIN SELECT 1 -- c", "DESC points", "SHOW TABLES", "/* x */ EXISTS points"):
        assert readonly_statement(text) == f"{text}\n{_SETTINGS}"
    # unknown kinds are wrapped: a wrapped statement that is no SELECT fails instead of running without readonly
    assert readonly_statement("KILL QUERY").startswith("SELECT * FROM (")
    assert statement_kind("/* a */ -- b\n ( ( select 1))") == "select"


def test_lists_keep_secrets_out() -> None:
    assert not {"users", "roles", "grants", "quotas", "row_policies", "settings_profiles", "named_collections",
                "dictionaries", "processes", "query_log", "clusters", "macros", "disks", "server_settings",
                "zookeeper", "errors", "stack_trace", "user_directories"} & SYSTEM_TABLES
    assert {"file", "url", "s3", "remote", "mysql", "postgresql", "executable", "input"} <= set(DENIED_FUNCTIONS)
    assert not set(DENIED_FUNCTIONS) & TABLE_FUNCTIONS


class FakeClient:
    """Stands in for clickhouse-connect's client: records what ServerBackend.query sends."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.calls: list[tuple[str, str, dict[str, object], dict[str, object]]] = []

    def raw_query(self, sql: str, parameters: dict[str, object], settings: dict[str, object]) -> bytes:
        self.calls.append(("raw_query", sql, parameters, settings))
        return self.raw

    def query(self, sql: str, parameters: dict[str, object], settings: dict[str, object]) -> object:
        self.calls.append(("query", sql, parameters, settings))

        class Result:
            column_names = ("x",)
            result_rows = [(1,)]
        return Result()


def test_server_backend_sends_the_parse_without_a_format_and_reads_its_lines() -> None:
    from trackstream.sinks.server_backend import ServerBackend

    backend = ServerBackend.__new__(ServerBackend)
    backend._client = FakeClient(b"SelectWithUnionQuery (children 1)\n Literal 'a\\\\nb\\tc'\n")
    assert backend.query("-- c\nEXPLAIN AST optimize = 0 SELECT {p:String}", {"p": "x"}) == (
        ["explain"], [("SelectWithUnionQuery (children 1)",), (" Literal 'a\\nb\tc'",)])
    assert backend.query("SELECT 1", readonly=True) == (["x"], [(1,)])
    assert backend.query("SELECT 2") == (["x"], [(1,)])
    assert backend._client.calls == [
        ("raw_query", "-- c\nEXPLAIN AST optimize = 0 SELECT {p:String}", {"p": "x"}, {"readonly": 1}),
        ("query", "SELECT 1", {}, {"max_execution_time": 30, "max_memory_usage": 4 * 1024**3, "readonly": 1}),
        ("query", "SELECT 2", {}, {})]


class CountingBackend:
    """Answers EXPLAIN AST with a fixed dump and counts the statements it is sent."""

    database = DB

    def __init__(self, dump: str) -> None:
        self.dump, self.sent = dump, []  # type: list[str]

    def query(self, sql: str, params: object = None, *, readonly: bool = False) -> tuple[list[str], list[tuple[str]]]:
        self.sent.append(sql)
        return ["explain"], [(line,) for line in self.dump.splitlines()]


def test_a_statement_is_parsed_once_whatever_its_parameter_values() -> None:
    from trackstream.sinks.sql_guard import check_statement

    backend = CountingBackend(SELECT_1)
    text = "SELECT 1 WHERE 1 = {x:UInt8} -- cached"
    for value in range(3):
        assert check_statement(backend, text, {"x": value}).kind == "select"  # type: ignore[arg-type]
    assert len(backend.sent) == 1
    identifier = "SELECT 1 WHERE 1 = {x:UInt8} AND 1 IN {t: identifier} -- a table named by a parameter"
    for value in ("points", "entities"):
        check_statement(backend, identifier, {"x": 1, "t": value})  # type: ignore[arg-type]
    assert len(backend.sent) == 3  # parsed every time: its tables depend on the value
