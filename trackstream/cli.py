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
from typing import Any

import orjson

log = logging.getLogger("trackstream")

Command = Callable[[argparse.Namespace], int]


def _csv(value: str) -> list[str]:
    return [item for item in (part.strip() for part in value.split(",")) if item]


def _param(value: str) -> tuple[str, Any]:
    key, sep, raw = value.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {value!r}")
    try:
        return key, orjson.loads(raw)
    except orjson.JSONDecodeError:
        return key, raw


def _kafka_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: $TRACKSTREAM_KAFKA_BOOTSTRAP)")
    parser.add_argument("--topic-prefix", help="topic prefix (default: $TRACKSTREAM_TOPIC_PREFIX or trackstream)")


def _store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clickhouse-url", help="ClickHouse server URL (default: $TRACKSTREAM_CLICKHOUSE_URL; "
                        "unset = the embedded chDB store)")
    parser.add_argument("--data-dir", type=Path, help="chDB store directory (default: $TRACKSTREAM_DATA_DIR "
                        "or ~/.trackstream/data)")


def _bootstrap(value: str | None) -> str:
    from schemas.topics import setting

    bootstrap = setting(value, "TRACKSTREAM_KAFKA_BOOTSTRAP")
    if not bootstrap:
        raise SystemExit("no Kafka configured: pass --bootstrap or set TRACKSTREAM_KAFKA_BOOTSTRAP "
                         "(for the embedded pipeline without Kafka, run `trackstream local`)")
    return bootstrap


def _cmd_streams_worker(args: argparse.Namespace) -> int:
    from streams.app import run_worker

    options = {"partitions": args.partitions, "step_timeout_ms": args.step_timeout_ms,
               "data_dir": None if args.data_dir is None else str(args.data_dir)}
    run_worker(bootstrap=_bootstrap(args.bootstrap), topic_prefix=args.topic_prefix,
               **{key: value for key, value in options.items() if value is not None})
    return 0


def _cmd_sink_worker(args: argparse.Namespace) -> int:
    """The sink worker; writing to a chDB store it owns, it also serves the query API (DESIGN §1)."""
    from schemas.topics import Topics, setting
    from sinks.worker import run_sink_worker

    prefix = Topics.from_env(args.topic_prefix).prefix
    # One consumer group per topic family, like the stream worker's: deployments never rebalance each other.
    bootstrap, group_id = _bootstrap(args.bootstrap), args.group_id or f"trackstream-sink-{prefix}"
    url = setting(args.clickhouse_url, "TRACKSTREAM_CLICKHOUSE_URL")
    if url:
        run_sink_worker(bootstrap=bootstrap, topic_prefix=prefix, group_id=group_id, clickhouse_url=url)
        return 0
    from sinks.query import QueryService
    from trackstream._query import data_dir_from, store_lock
    from trackstream.http_api import QueryServer
    from trackstream.local import StoreBusyError

    data_dir = data_dir_from(args.data_dir)
    with store_lock(data_dir, blocking=False) as acquired:
        if not acquired:
            raise StoreBusyError(f"another process owns the store {data_dir}; stop it or use another --data-dir")
        service = QueryService(data_dir=data_dir)
        server = QueryServer(service, data_dir)
        server.start()
        try:
            run_sink_worker(bootstrap=bootstrap, topic_prefix=prefix, group_id=group_id, data_dir=data_dir)
        finally:
            server.stop()
            service.close()
    return 0


def _cmd_sync(args: argparse.Namespace) -> int:
    from producers.sync import sync_spool

    report = sync_spool(args.spool_dir, kafka_bootstrap=args.bootstrap, topic_prefix=args.topic_prefix)
    log.info("sync finished: %s", report)
    return 0


def _cmd_local(args: argparse.Namespace) -> int:
    from trackstream.local import run_local

    run_local(spool_dir=args.spool_dir, data_dir=args.data_dir)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from trackstream.demo import run_demo

    return int(run_demo(args))


def _cmd_compare(args: argparse.Namespace) -> int:
    from trackstream import _query, render

    rows = _query.compare(args.project, args.metric, agg=args.agg, by=args.by, runs=args.runs,
                          entity_type=args.entity_type)
    render.emit_rows(rows, as_json=args.json, title=f"{args.metric} ({args.agg}) in {args.project}")
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    from trackstream import _query, render

    render.emit_rows(_query.runs(args.project), as_json=args.json, title=f"runs in {args.project}")
    return 0


def _cmd_curves(args: argparse.Namespace) -> int:
    from trackstream import _query, render

    curves = _query.curves(args.project, args.runs, args.metric, points=args.points)
    if args.plot:
        render.plot_curves(curves, metric=args.metric, path=args.plot)
        log.info("wrote %s", args.plot)
    if args.json or not args.plot:
        render.emit_curves(curves, as_json=args.json)
    return 0


def _cmd_sql(args: argparse.Namespace) -> int:
    from trackstream import _query, render

    rows = _query.sql(args.query, dict(args.param or []))
    render.emit_tuples(rows, as_json=args.json)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trackstream", description="Streaming metrics ingestion for ML training.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    streams = commands.add_parser("streams", help="stream processing").add_subparsers(dest="sub", required=True)
    worker = streams.add_parser("worker", help="validate, deduplicate and aggregate <prefix>.metrics")
    _kafka_options(worker)
    worker.add_argument("--partitions", type=int, default=None, help="partitions of the topics it creates")
    worker.add_argument("--data-dir", type=Path, help="local state directory")
    worker.add_argument("--step-timeout-ms", type=int, default=None, help="emit cross-rank steps after this wait")
    worker.set_defaults(run=_cmd_streams_worker)

    sink = commands.add_parser("sink", help="ClickHouse sink").add_subparsers(dest="sub", required=True)
    sink_worker = sink.add_parser("worker", help="write the processed topics into ClickHouse")
    _kafka_options(sink_worker)
    _store_options(sink_worker)
    sink_worker.add_argument("--group-id", default=None, help="consumer group (default: trackstream-sink-<prefix>)")
    sink_worker.set_defaults(run=_cmd_sink_worker)

    sync = commands.add_parser("sync", help="send spools left by dead processes to Kafka")
    _kafka_options(sync)
    sync.add_argument("--spool-dir", type=Path, help="default: $TRACKSTREAM_SPOOL_DIR or ~/.trackstream/spool")
    sync.set_defaults(run=_cmd_sync)

    local = commands.add_parser("local", help="embedded pipeline: spool -> processing -> chDB, serving queries")
    local.add_argument("--spool-dir", type=Path, help="default: $TRACKSTREAM_SPOOL_DIR or ~/.trackstream/spool")
    local.add_argument("--data-dir", type=Path, help="default: $TRACKSTREAM_DATA_DIR or ~/.trackstream/data")
    local.set_defaults(run=_cmd_local)

    demo = commands.add_parser("demo", help="simulate a hyperparameter sweep through the whole pipeline")
    from trackstream.demo_options import add_demo_options

    add_demo_options(demo)
    demo.set_defaults(run=_cmd_demo)

    compare = commands.add_parser("compare", help="one row per run (or per group of runs sharing params)")
    compare.add_argument("project")
    compare.add_argument("metric")
    compare.add_argument("--agg", default="last", choices=("last", "min", "max", "mean", "first"))
    compare.add_argument("--by", type=_csv, help="comma-separated param names to group runs by")
    compare.add_argument("--runs", type=_csv, help="comma-separated run ids")
    compare.add_argument("--entity-type", default="run", choices=("run", "model"))
    compare.add_argument("--json", action="store_true", help="print JSON instead of a table")
    compare.set_defaults(run=_cmd_compare)

    runs = commands.add_parser("runs", help="runs with status, params, tags")
    runs.add_argument("project")
    runs.add_argument("--json", action="store_true")
    runs.set_defaults(run=_cmd_runs)

    curves = commands.add_parser("curves", help="downsampled curves (min/max/avg/last per bucket)")
    curves.add_argument("project")
    curves.add_argument("metric")
    curves.add_argument("--runs", type=_csv, required=True, help="comma-separated run ids")
    curves.add_argument("--points", type=int, default=1000, help="buckets per run")
    curves.add_argument("--plot", type=Path, help="write a PNG chart here")
    curves.add_argument("--json", action="store_true")
    curves.set_defaults(run=_cmd_curves)

    sql = commands.add_parser("sql", help="read-only SQL with bound parameters: {name:Type} placeholders")
    sql.add_argument("query")
    sql.add_argument("--param", type=_param, action="append", help="NAME=VALUE (JSON or text), repeatable")
    sql.add_argument("--json", action="store_true")
    sql.set_defaults(run=_cmd_sql)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.verbose:
            raise
        log.error("%s (run with -v for the traceback)", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
