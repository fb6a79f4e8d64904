"""The guard of ``QueryService.sql``: one read-only statement, checked against an allow-list by ClickHouse's own parser.

How: the statement is parsed by the engine that will run it, ``EXPLAIN AST optimize = 0 <statement>`` with the
same bound parameters (a pure parse: nothing is evaluated, no table or file is touched; ``optimize = 0`` is
spelled out so the statement cannot smuggle in EXPLAIN options of its own), and the text dump is checked here.
The dump prints identifiers raw, so a backquoted name holding a line break can add fake lines: the dump must form
a consistent tree (depth grows by one at most, every ``(children N)`` matches), and every check is either
context-free (applied to each line, so fake lines can only add refusals) or looks at the line right after one
that holds no user text. Then the statement runs with ``readonly = 1`` whatever its kind
(:func:`readonly_statement` on chDB; the ``readonly`` setting of the request on a server).

Allowed:

- ``SELECT`` / ``WITH`` (also ``UNION``, ``INTERSECT``, ``EXCEPT``, subqueries, CTEs, joins) over this store's
  tables (``points``, ``series_stats``, ``series_blocks``, ``entities``, ``params``,
  ``ingested``, ``sink_chunks``): unqualified names, or qualified by the store's own database;
- the system tables in :data:`SYSTEM_TABLES` and the ``information_schema`` views in :data:`INFORMATION_SCHEMA`;
- scalar and aggregate functions, except :data:`DENIED_FUNCTIONS` and names starting with :data:`DENIED_PREFIXES`;
- the table functions in :data:`TABLE_FUNCTIONS` (generated rows: ``numbers``, ``values``, ``generate_series``...);
- ``EXPLAIN`` of any kind (``PLAN``, ``AST``, ``SYNTAX``, ``QUERY TREE``, ``PIPELINE``, ``ESTIMATE``) of an allowed
  ``SELECT``; ``DESCRIBE`` of an allowed table, subquery or table function; ``SHOW TABLES`` (of the store, system
  or information_schema), ``SHOW DATABASES``, ``SHOW COLUMNS`` of an allowed table, ``SHOW CREATE TABLE`` of the
  store's tables, ``EXISTS [TABLE|DATABASE]``;
- ``{name:Type}`` query parameters; comments.

Refused (:class:`QueryError` naming what and why): any other statement (writes, DDL, ``SET``, ``USE``, ``SYSTEM``,
``KILL``, other ``SHOW`` kinds: grants, users, processes, settings...); more than one statement (any ``;`` but a
trailing one); ``SETTINGS``, ``FORMAT`` and ``INTO OUTFILE`` clauses; table functions outside the allow-list (they
read files, the network, other servers, processes or dictionaries); functions that do so from a scalar position
(``file``, ``dictGet*``, ``joinGet*``, ``ai*``...); ``* APPLY(f)`` (the dump hides ``f``); tables of other
databases; system tables outside the allow-list; dotted identifiers whose head names another existing database
(``x IN otherdb.t``); dumps that do not form a consistent tree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from trackstream.sinks.errors import QueryError

if TYPE_CHECKING:
    from trackstream.sinks.backend import Backend

Kind = Literal["select", "explain", "describe", "show", "exists"]

TABLE_FUNCTIONS: Final = frozenset({
    "numbers", "numbers_mt", "values", "sqlstandardvalues", "generate_series", "generateseries", "generaterandom",
    "null", "primes",
})
SYSTEM_TABLES: Final = frozenset({
    "one", "numbers", "numbers_mt", "primes", "databases", "tables", "columns", "parts", "parts_columns",
    "projection_parts", "projections", "data_skipping_indices", "merges", "mutations", "functions", "table_functions",
    "aggregate_function_combinators", "formats", "data_type_families", "table_engines", "database_engines",
    "time_zones", "collations", "keywords", "settings", "merge_tree_settings",
})
INFORMATION_SCHEMA: Final = frozenset({
    "tables", "columns", "schemata", "views", "key_column_usage", "referential_constraints", "statistics",
})
_REACH = "reads files, the network, other servers or processes"
# Lower-cased names refused in any position (scalar or table), with the reason. Table positions are allow-listed
# anyway: these also cover the scalar forms and whatever position a future syntax gives them.
DENIED_FUNCTIONS: Final = {
    **dict.fromkeys((
        "file", "filecluster", "filesystem", "url", "urlcluster", "s3", "s3cluster", "gcs", "cosn", "oss", "hdfs",
        "hdfscluster", "remote", "remotesecure", "cluster", "clusterallreplicas", "mysql", "postgresql", "mongodb",
        "redis", "sqlite", "jdbc", "odbc", "executable", "input", "arrowstream", "arrowflight", "bigquery",
        "ytsaurus", "hive", "meilisearch", "eval", "hudi", "hudicluster", "hascolumnintable",
    ), _REACH),
    "python": "reads objects of the Python process (chDB)",
    **dict.fromkeys(("merge", "view", "viewexplain", "viewifpermitted", "loop", "joinget", "joingetornull"),
                    "reads tables chosen by name, outside the checks of sql()"),
    **dict.fromkeys(("dictionary", "dicthas", "dictisin"), "reads dictionaries, whose sources can be files, URLs, "
                    "other databases or processes"),
    **dict.fromkeys(("catboostevaluate", "getmacro", "getserversetting", "showcertificate", "getclienthttpheader",
                     "addresstoline", "addresstolinewithinlines", "addresstosymbol", "demangle", "fuzzjson",
                     "fuzzquery"), "reads server files, configuration or request data"),
}
DENIED_PREFIXES: Final = {
    "dictget": "reads dictionaries, whose sources can be files, URLs, other databases or processes",
    "azureblobstorage": _REACH, "iceberg": _REACH, "deltalake": _REACH, "paimon": _REACH, "prometheus": _REACH,
    "timeseries": "reads tables chosen by name, outside the checks of sql()",
    "mergetree": "reads tables chosen by name, outside the checks of sql()",
    "__": "is internal to ClickHouse",
    "ai": "sends data to an external AI provider",
    "naivebayesclassifier": "reads models from server files",
}
_ALLOWED = ("sql() accepts one SELECT / WITH statement (UNION, INTERSECT and EXCEPT included), EXPLAIN of one, "
            "DESCRIBE, SHOW TABLES / DATABASES / COLUMNS / CREATE TABLE, or EXISTS")
# Node types a statement may contain. ``ColumnsApplyTransformer`` (``* APPLY(f)``) is left out on purpose: the
# dump shows nothing of the function or lambda it applies, so nothing in it could be checked.
_NODE_TYPES: Final = frozenset({
    "SelectWithUnionQuery", "SelectIntersectExceptQuery", "SelectQuery", "ExpressionList", "TablesInSelectQuery",
    "TablesInSelectQueryElement", "TableExpression", "TableJoin", "ArrayJoin", "TableIdentifier", "Identifier",
    "Function", "Literal", "Asterisk", "QualifiedAsterisk", "ColumnsRegexpMatcher", "ColumnsListMatcher",
    "QualifiedColumnsRegexpMatcher", "QualifiedColumnsListMatcher", "ColumnsTransformerList",
    "ColumnsExceptTransformer", "ColumnsReplaceTransformer",
    "ColumnsReplaceTransformer::Replacement", "Subquery", "WithElement", "OrderByElement", "InterpolateElement",
    "WindowDefinition", "WindowListElement", "SampleRatio", "Set",
})
# Statement roots: the dump's first line -> the statement kind (and ShowTables prints SHOW DATABASES too).
_ROOTS: Final[dict[str, Kind]] = {
    "SelectWithUnionQuery": "select", "Explain": "explain", "DescribeQuery": "describe", "ShowTables": "show",
    "ShowColumns": "show", "ShowCreateTableQuery": "show", "ExistsTableQuery": "exists",
    "ExistsDatabaseQuery": "exists",
}
_EXPLAIN_KINDS: Final = frozenset({"EXPLAIN", "EXPLAIN AST", "EXPLAIN SYNTAX", "EXPLAIN QUERY TREE", "EXPLAIN PIPELINE",
                                   "EXPLAIN ESTIMATE"})
_KEYWORDS: Final[dict[str, Kind]] = {
    "SELECT": "select", "WITH": "select", "FROM": "select", "EXPLAIN": "explain", "DESCRIBE": "describe",
    "DESC": "describe", "SHOW": "show", "EXISTS": "exists",
}
# Leading comments, whitespace and opening parentheses, then the first word. A nested or odd comment that this
# reads differently from ClickHouse yields a kind that disagrees with the parsed root, which is refused.
_LEADING = re.compile(r"(?:\s|--[^\n]*(?:\n|$)|#[ !][^\n]*(?:\n|$)|/\*.*?\*/|(?P<paren>\())*(?P<word>[A-Za-z]+)",
                      re.DOTALL)
_LINE = re.compile(r"( *)(\S.*)")
_CHILDREN = re.compile(r"(.*) \(children (\d+)\)")

# SHOW and EXISTS print (almost) nothing of their arguments: their text must match one of these exactly.
_ID = r"(?:[A-Za-z_][A-Za-z0-9_]*|`[A-Za-z_][A-Za-z0-9_]*`)"
_TAIL = r"(?:\s+(?:NOT\s+)?I?LIKE\s+'[^'\\\n]*')?(?:\s+LIMIT\s+\d+)?"
_RAW: Final = (
    ("ShowTables", re.compile(rf"SHOW\s+(?:FULL\s+)?(?:TEMPORARY\s+)?TABLES(?:\s+(?:FROM|IN)\s+(?P<db>{_ID}))?{_TAIL}",
                              re.I)),
    ("ShowTables", re.compile(rf"SHOW\s+DATABASES{_TAIL}", re.I)),
    ("ShowColumns", re.compile(rf"SHOW\s+(?:EXTENDED\s+)?(?:FULL\s+)?(?:COLUMNS|FIELDS)\s+(?:FROM|IN)\s+"
                               rf"(?:(?P<db>{_ID})\.)?(?P<table>{_ID})(?:\s+(?:FROM|IN)\s+(?P<db2>{_ID}))?{_TAIL}",
                               re.I)),
    ("ShowCreateTableQuery", re.compile(rf"SHOW\s+CREATE\s+(?:TEMPORARY\s+)?(?:TABLE\s+)?(?:(?P<db>{_ID})\.)?"
                                        rf"(?P<own>{_ID})", re.I)),
    ("ExistsDatabaseQuery", re.compile(rf"EXISTS\s+DATABASE\s+(?P<any>{_ID})", re.I)),
    ("ExistsTableQuery", re.compile(rf"EXISTS\s+(?:TEMPORARY\s+)?(?:TABLE\s+)?(?:(?P<db>{_ID})\.)?(?P<table>{_ID})",
                                    re.I)),
)


@dataclass(frozen=True)
class Checked:
    """An accepted statement: ``text`` (stripped, without trailing ``;``) and its kind."""

    text: str
    kind: Kind


@dataclass(frozen=True)
class Analysis:
    """What :func:`analyse` found: the statement kind, and the heads of dotted identifiers (``head.x``) that are
    not the store's database, system or information_schema: any of them naming an existing database is refused."""

    kind: Kind
    heads: frozenset[str]


@dataclass(frozen=True)
class Node:
    """One line of an ``EXPLAIN AST`` dump: indentation depth, text without ``(children N)``, and that N."""

    depth: int
    body: str
    children: int


def refused(what: str) -> QueryError:
    """The QueryError of a refusal: ``sql() refuses <what>``."""
    return QueryError(f"sql() refuses {what}")


def _unanalysable(why: str) -> QueryError:
    return refused(f"this query: could not analyse it ({why}). Write it plainly: no line breaks in quoted identifiers "
                   "or aliases, values as {name:Type} parameters")


def statement_kind(text: str) -> Kind | None:
    """The kind the statement's first word (after comments and parentheses) announces, else None."""
    match = _LEADING.match(text)
    if match is None:
        return None
    kind = _KEYWORDS.get(match["word"].upper())
    return kind if kind == "select" or not match["paren"] else None


def is_explain_ast(text: str) -> bool:
    """True when ``text`` is an ``EXPLAIN AST`` statement (after comments): it prints the parse, and a FORMAT clause
    appended to it becomes part of the explained query instead of choosing the output format."""
    match = _LEADING.match(text)
    return bool(match and not match["paren"] and match["word"].upper() == "EXPLAIN"
                and re.match(r"\s+AST\b", text[match.end():], re.IGNORECASE))


def prepare(query: str) -> tuple[str, Kind]:
    """``query`` stripped of whitespace and trailing ``;``, and its announced kind.

    Raises QueryError (``not allowed``) for another first word and (``one statement``) for any other ``;``:
    chDB runs ``SELECT 1; INSERT ...`` as two statements, so this check comes before anything is sent.
    """
    text = query.strip().rstrip(";").rstrip()
    if ";" in text:
        raise refused("more than one statement: one statement per query; a ';' inside a literal is refused too, "
                      "pass such values as {name:Type} parameters")
    kind = statement_kind(text)
    if kind is None:
        raise refused(f"this statement: it is not allowed. {_ALLOWED}")
    return text, kind


def parse_dump(dump: str) -> list[Node]:
    """The lines of an ``EXPLAIN AST`` dump as nodes, in order; raises QueryError unless they form one tree whose
    every ``(children N)`` (absent: 0) matches the lines indented one step below it."""
    lines = dump.split("\n")
    while lines and lines[-1] == "":
        lines.pop()
    nodes: list[Node] = []
    actual: list[int] = []
    stack: list[int] = []
    for i, line in enumerate(lines):
        match = _LINE.fullmatch(line)
        if match is None:
            raise _unanalysable(f"line {i + 1} of the parse is blank or not indented with spaces")
        depth = len(match[1])
        if (i == 0) != (depth == 0) or (nodes and depth > nodes[-1].depth + 1):
            raise _unanalysable(f"line {i + 1} of the parse is indented out of place")
        counted = _CHILDREN.fullmatch(match[2])
        body, claimed = (counted[1], int(counted[2])) if counted else (match[2], 0)
        del stack[depth:]
        if stack:
            actual[stack[-1]] += 1
        stack.append(i)
        nodes.append(Node(depth, body, claimed))
        actual.append(0)
    if not nodes:
        raise _unanalysable("the parse is empty")
    for node, count in zip(nodes, actual, strict=True):
        if node.children != count:
            raise _unanalysable(f"{node.body!r} claims {node.children} children and has {count}")
    return nodes


def _plain(name: str | None) -> str | None:
    return name.strip("`") if name else None


def _check_table(name: str, database: str | None) -> None:
    """Refuse a table reference (``t`` or ``db.t``) outside the store's database and the allowed system tables."""
    parts = name.split(".")
    if len(parts) == 1:
        return
    if len(parts) > 2:
        raise refused(f"table {name}: not a table of this store")
    db, table = parts
    if db.lower() == "system":
        if table.lower() not in SYSTEM_TABLES:
            raise refused(f"system.{table}: system tables may hold secrets or server state; visible are "
                          f"system.{', system.'.join(sorted(SYSTEM_TABLES))}")
    elif db.lower() == "information_schema":
        if table.lower() not in INFORMATION_SCHEMA:
            raise refused(f"{name}: visible information_schema views are {', '.join(sorted(INFORMATION_SCHEMA))}")
    elif database is None or db != database:
        raise refused(f"table {name}: sql() reads only this store's tables; name them without a database")


def _check_function(name: str, *, table: bool) -> None:
    lowered = name.lower()
    reason = DENIED_FUNCTIONS.get(lowered) or next(
        (why for prefix, why in DENIED_PREFIXES.items() if lowered.startswith(prefix)), None)
    if reason is None and table and lowered not in TABLE_FUNCTIONS:
        reason = "is not one of the table functions sql() allows"
    if reason is not None:
        kind = "table function" if table else "function"
        raise refused(f"{kind} {name}: it {reason}; sql() reads only this store's tables (for generated rows: "
                      "numbers, numbers_mt, values, generate_series, generateRandom, null, primes)")


def _check_raw(root: str, text: str, database: str | None) -> None:
    """SHOW and EXISTS: the text must match one of the plain forms of :data:`_RAW` for this root."""
    for expected, pattern in _RAW:
        match = pattern.fullmatch(text)
        if match is None or expected != root:
            continue
        groups = {key: _plain(value) for key, value in match.groupdict().items()}
        own = groups.get("own")
        if own is not None:
            if groups["db"] not in (None, database):
                raise refused(f"SHOW CREATE of {groups['db']}.{own}: only this store's tables")
            return
        db = groups.get("db") or groups.get("db2")
        table = groups.get("table")
        if table is not None:
            _check_table(f"{db}.{table}" if db else table, database)
        elif db is not None and db.lower() not in ("system", "information_schema") and db != database:
            raise refused(f"SHOW TABLES FROM {db}: only this store's database, system and information_schema")
        return
    raise refused("this SHOW / EXISTS form: sql() accepts SHOW TABLES [FROM db] [LIKE '...'], SHOW DATABASES, "
                  "SHOW COLUMNS FROM table, SHOW CREATE TABLE table and EXISTS [TABLE|DATABASE] name, written "
                  "plainly (no comments, quoting or settings); other SHOW kinds (grants, users, processes, "
                  "settings...) read server state")


def analyse(dump: str, text: str, database: str | None) -> Analysis:
    """Check the ``EXPLAIN AST`` ``dump`` of statement ``text`` (as :func:`prepare` returned it).

    ``database`` is the store's database (None: the server's default, then only unqualified names are the
    store's). Raises QueryError for anything refused (module docstring); pure: no engine needed.
    """
    announced = statement_kind(text)
    nodes = parse_dump(dump)
    root = nodes[0].body.split(" ", 1)[0]
    kind = _ROOTS.get(root)
    if kind is None:
        raise refused(f"this statement ({nodes[0].body}): it is not allowed. {_ALLOWED}")
    if kind != announced:
        raise _unanalysable("its first word does not match the parsed statement")
    options = -1  # index of the EXPLAIN options' Set node, the one Set allowed
    if kind == "explain":
        if nodes[0].body.removeprefix("Explain ") not in _EXPLAIN_KINDS:
            raise refused(f"{nodes[0].body.removeprefix('Explain ')}: EXPLAIN is allowed of a SELECT only")
        options = 1 if len(nodes) > 1 and nodes[1].body == "Set" else -1
        query = 2 if options == 1 else 1
        if nodes[0].children != query or len(nodes) <= query or nodes[query].body != "SelectWithUnionQuery":
            raise refused(f"this EXPLAIN: FORMAT and INTO OUTFILE are refused, and EXPLAIN is allowed of a SELECT "
                          f"only. {_ALLOWED}")
    elif kind in ("select", "describe") and nodes[0].children != 1:
        raise refused("FORMAT, INTO OUTFILE and SETTINGS clauses: results come back as rows and every statement "
                      "runs with readonly = 1")
    elif kind in ("show", "exists"):
        _check_raw(root, text, database)
    heads: set[str] = set()
    for i, node in enumerate(nodes):
        word, _, rest = node.body.partition(" ")
        name = rest.split(" ", 1)[0]
        if word not in _NODE_TYPES and not (i == 0 and word in _ROOTS):
            raise _unanalysable(f"unexpected element {node.body[:60]!r}")
        if word == "Set" and i != options:
            raise refused("SETTINGS clauses: every statement runs with readonly = 1 and the server's limits")
        if word == "SelectWithUnionQuery" and node.children != 1:
            raise refused("FORMAT and INTO OUTFILE clauses: results come back as rows")
        if word == "Function":
            _check_function(name, table=False)
        elif word == "TableIdentifier":
            _check_table(name, database)
        elif word == "Identifier" and "." in name:
            head = name.split(".", 1)[0]
            if head.lower() in ("system", "information_schema"):
                _check_table(".".join(name.split(".")[:2]), database)
            elif head != database:
                heads.add(head)
        elif word == "TableExpression":
            # The line after TableExpression (which holds no user text) is its first child: the table.
            first = nodes[i + 1] if node.children and i + 1 < len(nodes) else None
            table_word, _, table_rest = first.body.partition(" ") if first else ("", "", "")
            if table_word == "Function":
                _check_function(table_rest.split(" ", 1)[0], table=True)
            elif table_word not in ("TableIdentifier", "Subquery"):
                raise _unanalysable("a table expression of unknown form")
    return Analysis(kind, frozenset(heads))


# The analysis of a statement's tree, by (statement, database): a dashboard or a live page sends the same statement
# every second with other parameter values, and each EXPLAIN AST is a round trip to the store (on chDB, a turn
# of the lock the ingest takes). Parameters other than Identifier are literals in the tree.
_ANALYSES: dict[tuple[str, str | None], Analysis] = {}
_ANALYSES_MAX: Final = 512
_IDENTIFIER_PARAM: Final = re.compile(r"\{\s*\w+\s*:\s*Identifier\s*\}", re.IGNORECASE)


def check_statement(backend: Backend, query: str, params: Mapping[str, Any] | None = None) -> Checked:
    """Check ``query`` (with the ``params`` it will run with) for ``QueryService.sql``; returns the statement to run.

    Sends ``EXPLAIN AST`` (once per statement text and database, unless it has an ``Identifier`` parameter; and,
    when the query has dotted identifiers with an unknown head, a read of the database names) to ``backend``.
    Raises QueryError when the statement is refused or does not parse; the caller runs ``checked.text`` with
    ``readonly=True``.
    """
    text, _ = prepare(query)
    database: str | None = getattr(backend, "database", None)
    key = (text, database)
    analysis = _ANALYSES.get(key)
    if analysis is None:
        _, rows = backend.query(f"EXPLAIN AST optimize = 0 {text}", params)
        analysis = analyse("\n".join(str(row[0]) for row in rows), text, database)
        if not _IDENTIFIER_PARAM.search(text):  # only an Identifier parameter's value can change the tree's tables
            if len(_ANALYSES) >= _ANALYSES_MAX:
                _ANALYSES.clear()
            _ANALYSES[key] = analysis
    if analysis.heads:
        _, names = backend.query("SELECT name FROM system.databases", readonly=True)
        existing = {str(row[0]) for row in names}
        lowered = {name.lower() for name in existing}
        clash = sorted(head for head in analysis.heads if head in existing or head.lower() in lowered)
        if clash:
            raise refused(f"{clash[0]}.*: {clash[0]} is another database; sql() reads only this store's tables "
                          "(rename an alias that has a database's name)")
    return Checked(text, analysis.kind)


# Every statement sql() runs is bounded: a query may not hold the store (and, embedded, every other reader and the
# ingest) for longer than this, nor take more memory. They precede ``readonly = 1``, after which no setting changes.
LIMITS: Final = {"max_execution_time": 30, "max_memory_usage": 4 * 1024**3}


def readonly_statement(text: str) -> str:
    """``text`` (a statement :func:`check_statement` accepted) made to run with ``readonly = 1`` on chDB.

    chDB takes no per-query settings and its connection is shared with the writer, so the setting goes into the
    text: a SELECT / WITH is wrapped, ``SELECT * FROM (\\n...\\n) SETTINGS readonly = 1``; EXPLAIN, DESCRIBE, SHOW and
    EXISTS get ``SETTINGS readonly = 1`` on a line of its own (after a trailing ``-- comment``). Anything else is
    wrapped too, which fails closed (a wrapped EXPLAIN is refused in readonly mode). :data:`LIMITS` come first.
    """
    settings = ", ".join(f"{name} = {int(value)}" for name, value in LIMITS.items())
    if statement_kind(text) in ("explain", "describe", "show", "exists"):
        return f"{text}\nSETTINGS {settings}, readonly = 1"
    return f"SELECT * FROM (\n{text}\n) SETTINGS {settings}, readonly = 1"
