"""The ``trackstream`` command line: workers, the embedded runner, the demo and queries.

All wiring of components to commands lives here; each command imports its component only when it runs, so
``trackstream --help`` stays instant and a missing extra names itself.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trackstream.cli_args import csv, describe, param, tag

if TYPE_CHECKING:
    from trackstream.schemas.settings import KafkaSettings, StoreSettings

log = logging.getLogger("trackstream")

Command = Callable[[argparse.Namespace], int]


def _kafka_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Kafka (each also from its TRACKSTREAM_KAFKA_* variable)")
    group.add_argument("--bootstrap",
                       help="Kafka bootstrap servers host:port[,...] (default: $TRACKSTREAM_KAFKA_BOOTSTRAP)")
    group.add_argument("--topic-prefix", help="topic prefix (default: $TRACKSTREAM_TOPIC_PREFIX or trackstream)")
    group.add_argument("--security-protocol", choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
                       help="default: $TRACKSTREAM_KAFKA_SECURITY_PROTOCOL or PLAINTEXT")
    group.add_argument("--sasl-mechanism", choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
                       help="default: $TRACKSTREAM_KAFKA_SASL_MECHANISM")
    group.add_argument("--sasl-username", help="default: $TRACKSTREAM_KAFKA_SASL_USERNAME; the password is only "
                       "read from $TRACKSTREAM_KAFKA_SASL_PASSWORD, never from the command line")
    group.add_argument("--ssl-cafile", help="CA bundle (PEM) that signed the brokers' certificates "
                       "(default: $TRACKSTREAM_KAFKA_SSL_CAFILE, else the system CAs)")
    group.add_argument("--ssl-certfile", help="client certificate (PEM) (default: $TRACKSTREAM_KAFKA_SSL_CERTFILE)")
    group.add_argument("--ssl-keyfile", help="client key (PEM) (default: $TRACKSTREAM_KAFKA_SSL_KEYFILE)")


def _kafka(args: argparse.Namespace) -> KafkaSettings:
    from trackstream.schemas.settings import KafkaSettings

    return KafkaSettings.resolve(
        bootstrap=args.bootstrap, topic_prefix=args.topic_prefix, security_protocol=args.security_protocol,
        sasl_mechanism=args.sasl_mechanism, sasl_username=args.sasl_username, ssl_cafile=args.ssl_cafile,
        ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
    )


def _serve_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("query API (served while this process owns a chDB store)")
    group.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1, this machine only). Any other address is "
                            "reachable from the network; every request needs the token in <data-dir>/api.token")
    group.add_argument("--port", type=int, default=0, help="port to listen on (default: 0, a free port; the "
                       "address is recorded in <data-dir>/owner.json)")


def _store_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("store (each also from its TRACKSTREAM_* variable)")
    group.add_argument("--clickhouse-url", help="ClickHouse server URL http[s]://host:port[/database] (default: "
                       "$TRACKSTREAM_CLICKHOUSE_URL; unset = the embedded chDB store). User and password come from "
                       "$TRACKSTREAM_CLICKHOUSE_USER / $TRACKSTREAM_CLICKHOUSE_PASSWORD")
    group.add_argument("--data-dir", type=Path, help="chDB store directory (default: $TRACKSTREAM_DATA_DIR "
                       "or ~/.trackstream/data)")


def _store(args: argparse.Namespace) -> StoreSettings:
    """The store the options name; ``--data-dir`` alone means the embedded store, whatever the environment says.

    Raises ConfigError for a password inside ``--clickhouse-url``: a command line is visible to every user
    of the machine (``ps``), so passwords come only from ``TRACKSTREAM_CLICKHOUSE_PASSWORD``.
    """
    from trackstream.schemas.errors import ConfigError
    from trackstream.schemas.settings import StoreSettings

    settings = StoreSettings.resolve(url=args.clickhouse_url, data_dir=args.data_dir)
    if args.clickhouse_url and settings.password is not None and \
            StoreSettings.resolve(url=args.clickhouse_url, environ={}).password is not None:
        raise ConfigError("--clickhouse-url carries a password, which every user of this machine can read in the "
                          "process list: remove it from the URL and set TRACKSTREAM_CLICKHOUSE_PASSWORD instead")
    return settings


def _reader(args: argparse.Namespace) -> Any:
    from trackstream import _query

    return _query.reader(_store(args))


def _cmd_streams_worker(args: argparse.Namespace) -> int:
    from trackstream.streams.app import run_worker

    options = {"partitions": args.partitions, "step_timeout_ms": args.step_timeout_ms,
               "heartbeat_timeout_ms": args.heartbeat_timeout_ms,
               "data_dir": None if args.data_dir is None else str(args.data_dir)}
    run_worker(kafka=_kafka(args), **{key: value for key, value in options.items() if value is not None})
    return 0


def _cmd_sink_worker(args: argparse.Namespace) -> int:
    """The sink worker; writing to a chDB store it owns, it also serves the query API (docs/architecture.md)."""
    from trackstream.sinks.worker import run_sink_worker

    kafka, store = _kafka(args), _store(args)
    kafka.require_bootstrap("the sink worker")
    # One consumer group per topic family, like the stream worker's: deployments never rebalance each other.
    group_id = args.group_id or f"trackstream-sink-{kafka.topic_prefix}"
    if store.url:
        run_sink_worker(kafka=kafka, store=store, group_id=group_id)
        return 0
    from trackstream.api.server import QueryServer
    from trackstream.sinks.query import QueryService
    from trackstream.store import owning_store

    data_dir = store.data_path
    with owning_store(data_dir):  # a reader holding the store lets go; another runner: StoreBusyError
        service = QueryService(store)
        server = QueryServer(service, data_dir, host=args.host, port=args.port)
        from trackstream.ui.serve import announce

        announce(server.start(), data_dir)
        try:
            run_sink_worker(kafka=kafka, store=store, group_id=group_id)
        finally:
            server.stop()
            service.close()
    return 0


def _cmd_sync(args: argparse.Namespace) -> int:
    from trackstream.producers.sync import sync_spool

    report = sync_spool(args.spool_dir, discard_damaged=args.discard_damaged, kafka=_kafka(args))
    for gone in report.discarded:  # stdout: what an operator asked to delete, one line per segment
        ranges = " ".join(f"[{start},{end})" for start, end in gone.ranges)
        sys.stdout.write(f"discarded {gone.path} ({gone.size} bytes; damaged {ranges})\n")
    log.info("sync finished: %d producer(s), %d envelope(s), %d bytes sent; %d damaged range(s) skipped; %d damaged "
             "segment(s) discarded, %d kept; %d live producer(s) skipped", report.producers, report.envelopes,
             report.bytes, len(report.damaged), len(report.discarded), len(report.kept_damaged),
             len(report.skipped_live))
    if report.kept_damaged and not args.discard_damaged:
        log.warning("damaged spool segments are kept: %s; remove them with `trackstream sync --discard-damaged`",
                    ", ".join(str(path) for path in report.kept_damaged))
    return 0


def _cmd_local(args: argparse.Namespace) -> int:
    from trackstream.local import data_path
    from trackstream.local_serve import run_local
    from trackstream.ui.serve import announce

    run_local(spool_dir=args.spool_dir, data_dir=args.data_dir, heartbeat_timeout_ms=args.heartbeat_timeout_ms,
              host=args.host, port=args.port, on_ready=lambda url: announce(url, data_path(args.data_dir)))
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from trackstream.ui.serve import run_ui

    return run_ui(_store(args), host=args.host, port=args.port)


def _cmd_migrate(args: argparse.Namespace) -> int:
    """Create the store's database and tables (idempotent); the query path never does (docs/operations.md)."""
    import contextlib

    from trackstream.sinks.connect import open_backend
    from trackstream.sinks.schema import migrate

    store = _store(args)
    owning: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if not store.url:
        from trackstream.api.owner import read_owner
        from trackstream.store import StoreBusyError, owning_store

        owner = read_owner(store.data_path)
        if owner is not None:
            raise StoreBusyError(f"process {owner.pid} owns the store {store.data_path} (serving {owner.url}); it "
                                 "creates the tables itself as it writes: stop it to migrate, or leave it be")
        owning = owning_store(store.data_path)
    with owning:
        backend = open_backend(store)
        try:
            migrate(backend)
        finally:
            backend.close()
    log.info("migrated %r", backend)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from trackstream.demo import run_demo

    return int(run_demo(args))


def _cmd_compare(args: argparse.Namespace) -> int:
    from trackstream import render

    rows = _reader(args).compare(args.project, args.metric, agg=args.agg, by=args.by, runs=args.runs,
                          entity_type=args.entity_type)
    rows = render.best_first(rows, "mean" if args.by else "value", descending=args.desc)
    if not args.json:
        rows = render.compare_rows(rows)
    render.emit_rows(rows, as_json=args.json, title=f"{args.metric} ({args.agg}) in {args.project}")
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    from trackstream import render

    filters = {"status": args.status, "params": dict(args.param) if args.param else None,
               "tags": dict(args.tag) if args.tag else None, "order_by": args.order_by, "limit": args.limit}
    rows = _reader(args).runs(args.project, **{k: v for k, v in filters.items() if v is not None})
    if not args.json:
        rows = render.runs_rows(rows, params=args.params, metrics=args.metrics or ())
    render.emit_rows(rows, as_json=args.json, title=f"runs in {args.project}")
    return 0


def _cmd_curves(args: argparse.Namespace) -> int:
    from trackstream import render

    reader = _reader(args)
    curves = reader.curves(args.project, args.runs, args.metric, points=args.points or 1000)
    names = {} if args.json else {row["id"]: row["name"] for row in reader.runs(args.project)}
    if args.plot:
        render.plot_curves(curves, metric=args.metric, path=args.plot, labels=names)
        log.info("wrote %s", args.plot)
    if args.json or args.points:
        render.emit_curves(curves, as_json=args.json)
    elif not args.plot:
        render.print_table(render.curve_summaries(curves, names), title=f"{args.metric} in {args.project}")
    return 0


def _cmd_sql(args: argparse.Namespace) -> int:
    from trackstream import render

    result = _reader(args).sql_table(args.query, dict(args.param or []))
    render.emit_records(result["columns"], result["rows"], as_json=args.json)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``trackstream`` argument parser: subcommands streams worker, sink worker, sync, local, migrate, demo,
    compare, runs, curves and sql; each sets ``run`` to the function that executes it.
    """
    from trackstream import __version__

    parser = argparse.ArgumentParser(prog="trackstream", description="Streaming metrics ingestion for ML training.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"trackstream {__version__}")
    # the global flags work after the subcommand too (``trackstream runs p -v``): every subcommand has them, and
    # leaves the top-level value alone unless given
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging, tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    streams = commands.add_parser("streams", parents=[common],
                                  help="stream processing").add_subparsers(dest="sub", required=True)
    worker = streams.add_parser("worker", parents=[common], help="validate, deduplicate and aggregate <prefix>.metrics")
    _kafka_options(worker)
    worker.add_argument("--partitions", type=int, default=None, help="partitions of the topics it creates")
    worker.add_argument("--data-dir", type=Path, help="local state directory")
    worker.add_argument("--step-timeout-ms", type=int, default=None, help="emit cross-rank steps after this wait")
    worker.add_argument("--heartbeat-timeout-ms", type=int, default=None,
                        help="a run rank silent this long becomes crashed (default 60000)")
    worker.set_defaults(run=_cmd_streams_worker)

    sink = commands.add_parser("sink", parents=[common],
                               help="ClickHouse sink").add_subparsers(dest="sub", required=True)
    sink_worker = sink.add_parser("worker", parents=[common], help="write the processed topics into ClickHouse")
    _kafka_options(sink_worker)
    _store_options(sink_worker)
    sink_worker.add_argument("--group-id", default=None, help="consumer group (default: trackstream-sink-<prefix>)")
    _serve_options(sink_worker)
    sink_worker.set_defaults(run=_cmd_sink_worker)

    sync = commands.add_parser("sync", parents=[common], help="send spools left by dead processes to Kafka")
    _kafka_options(sync)
    sync.add_argument("--spool-dir", type=Path, help="default: $TRACKSTREAM_SPOOL_DIR or ~/.trackstream/spool")
    sync.add_argument("--discard-damaged", action="store_true",
                      help="delete the damaged spool segments that have been read past (their intact frames are "
                           "delivered), printing each one; works without Kafka")
    sync.set_defaults(run=_cmd_sync)

    local = commands.add_parser("local", parents=[common],
                                help="embedded pipeline: spool -> processing -> chDB, serving queries")
    local.add_argument("--spool-dir", type=Path, help="default: $TRACKSTREAM_SPOOL_DIR or ~/.trackstream/spool")
    local.add_argument("--data-dir", type=Path, help="default: $TRACKSTREAM_DATA_DIR or ~/.trackstream/data")
    local.add_argument("--heartbeat-timeout-ms", type=int, default=None,
                       help="a run rank silent this long becomes crashed (default 60000)")
    _serve_options(local)
    local.set_defaults(run=_cmd_local)

    ui = commands.add_parser("ui", parents=[common], help="serve the live page: runs, curves, compare (prints its URL)",
                             description="Serve the live page of a store and print its URL with the access token. "
                                         "An embedded store's owner (trackstream local) serves it already: then "
                                         "this prints that address.")
    _store_options(ui)
    _serve_options(ui)
    ui.set_defaults(run=_cmd_ui)

    migrate = commands.add_parser("migrate", parents=[common],
                                  help="create the store's database and tables (readers never do)")
    _store_options(migrate)
    migrate.set_defaults(run=_cmd_migrate)

    demo = commands.add_parser("demo", parents=[common],
                               help="simulate a hyperparameter sweep through the whole pipeline")
    from trackstream.demo_options import add_demo_options

    add_demo_options(demo)
    demo.set_defaults(run=_cmd_demo)

    compare = commands.add_parser("compare", parents=[common],
                                  help="one row per run (or per group of runs sharing params)")
    compare.add_argument("project", help="the project's name")
    compare.add_argument("metric", help="the metric to compare")
    compare.add_argument("--agg", default="last", choices=("last", "min", "max", "mean", "first"),
                         help="what value of each run's series")
    compare.add_argument("--by", type=csv, help="comma-separated param names to group runs by")
    compare.add_argument("--runs", type=csv, help="comma-separated run ids")
    compare.add_argument("--entity-type", default="run", choices=("run", "model"), help="compare runs or models")
    compare.add_argument("--desc", action="store_true",
                         help="higher is better: the highest value first (default: the lowest first)")
    compare.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _store_options(compare)
    compare.set_defaults(run=_cmd_compare)

    runs = commands.add_parser("runs", parents=[common], help="runs with status, params, tags")
    runs.add_argument("project", help="the project's name")
    runs.add_argument("--status", type=csv, help="only runs with one of these comma-separated statuses")
    runs.add_argument("--param", type=param, action="append",
                      help="only runs whose param NAME equals VALUE (JSON or text), repeatable")
    runs.add_argument("--tag", type=tag, action="append", help="only runs whose tag NAME is VALUE, repeatable")
    runs.add_argument("--order-by", help="a metric summary: loss.min; descending: --order-by=-loss.last")
    runs.add_argument("--limit", type=int, help="at most this many runs")
    runs.add_argument("--params", type=csv, help="params to show (default: those that differ across the runs)")
    runs.add_argument("--metrics", type=csv, help="metrics to show the last and min of, comma-separated")
    runs.add_argument("--json", action="store_true", help="print the full rows as JSON instead of a table")
    _store_options(runs)
    runs.set_defaults(run=_cmd_runs)

    curves = commands.add_parser("curves", parents=[common], help="downsampled curves (min/max/avg/last per bucket)")
    curves.add_argument("project", help="the project's name")
    curves.add_argument("metric", help="the series to read")
    curves.add_argument("--runs", type=csv, required=True, help="comma-separated run ids")
    curves.add_argument("--points", type=int, default=None,
                        help="print every bucket, at most this many per run (default: one summary line per run; "
                             "1000 buckets for --plot and --json)")
    curves.add_argument("--plot", type=Path, help="write a PNG chart here")
    curves.add_argument("--json", action="store_true", help="print the buckets as JSON")
    _store_options(curves)
    curves.set_defaults(run=_cmd_curves)

    sql = commands.add_parser("sql", parents=[common],
                              help="read-only SQL with bound parameters: {name:Type} placeholders")
    sql.add_argument("query", help="one read-only statement, values as {name:Type} placeholders")
    sql.add_argument("--param", type=param, action="append", help="NAME=VALUE (JSON or text), repeatable")
    sql.add_argument("--json", action="store_true", help="print one {column: value} object per row as JSON")
    _store_options(sql)
    sql.set_defaults(run=_cmd_sql)
    from trackstream.cli_alerts import add_alerts_parser
    add_alerts_parser(commands, common, store_options=_store_options, store=_store, reader=_reader)
    describe(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``trackstream`` command; returns the exit code (0 ok, 1 failure, 2 configuration error or a project,
    run, metric or param that does not exist)."""
    from trackstream.schemas.errors import ConfigError, NotFoundError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130
    except (ConfigError, NotFoundError) as exc:
        log.error("%s", exc)
        return 2
    except Exception as exc:
        if args.verbose:
            raise
        log.error("%s (run with -v for the traceback)", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
