"""``trackstream alerts``: alert rules (add, rules, remove) and the alerts they fired (list); docs/alerts.md.

Where the rules live follows where the data streams: on a Kafka deployment (``--bootstrap``, else
``$TRACKSTREAM_KAFKA_BOOTSTRAP`` unless ``--data-dir`` names an embedded store) the ``<prefix>.alert_rules`` topic
that the stream workers follow (:mod:`trackstream.alert_topic`); else the embedded store's ``alert_rules.jsonl``,
which the local runner follows (:mod:`trackstream.alert_rules`). A ClickHouse server store without Kafka settings
is a configuration error: its rules are on Kafka. Fired alerts are read from the store (``QueryService.alerts``).

The store options and readers are ``trackstream.cli``'s, passed to :func:`add_alerts_parser` (no import cycle);
each command imports what it needs when it runs. A webhook is shown as its scheme and host only: its path, query
and user info may hold its secret.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trackstream.schemas.alerts import WHENS

if TYPE_CHECKING:
    from trackstream.schemas.alerts import AlertRule
    from trackstream.schemas.settings import KafkaSettings, StoreSettings

log = logging.getLogger("trackstream")

StoreOptions = Callable[[argparse.ArgumentParser], None]
StoreFn = Callable[[argparse.Namespace], "StoreSettings"]
ReaderFn = Callable[[argparse.Namespace], Any]


def add_alerts_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser],
                      common: argparse.ArgumentParser, *, store_options: StoreOptions, store: StoreFn,
                      reader: ReaderFn) -> None:
    """Register ``trackstream alerts add | rules | remove | list`` on ``commands`` (the ``trackstream`` parser's
    subcommands).

    ``common``: the parent parser of every subcommand (global flags); ``store_options(parser)`` adds the store
    options (``--clickhouse-url``, ``--data-dir``), ``store(args)`` resolves them to ``StoreSettings`` and
    ``reader(args)`` opens a reader (the query API's methods) on that store.
    """
    alerts = commands.add_parser("alerts", parents=[common], help="alert rules, and the alerts they fired",
                                 description="Alert rules watch a project's metrics where the data streams "
                                             "(docs/alerts.md): add, list and remove them, list fired alerts.")
    sub = alerts.add_subparsers(dest="sub", required=True, metavar="ACTION")

    add = sub.add_parser("add", parents=[common], help="add an alert rule (the same rule added again keeps its id "
                                                       "and takes the new webhook)")
    add.add_argument("project", help="the project whose runs (or models) the rule watches")
    add.add_argument("--metric", required=True,
                     help="the metric to watch; '*' watches every metric (nan, inf and stalled only)")
    add.add_argument("--when", required=True, choices=WHENS,
                     help="nan: a NaN value; inf: +-inf; diverge: above --value x the run's running minimum; "
                          "stalled: a running run silent --value seconds; above / below: past the threshold --value")
    add.add_argument("--value", type=float, default=None,
                     help="the threshold (above, below; required), the factor k (diverge; default 2), seconds "
                          "(stalled; default 300); nan and inf take none")
    add.add_argument("--after-steps", type=int, default=None,
                     help="diverge only: finite points seen before it may fire (default 10)")
    add.add_argument("--webhook", default=None, help="http(s) URL to POST each firing and resolved alert to "
                                                     "(default: none; alerts are stored either way)")
    add.add_argument("--slack", action="store_true",
                     help="the webhook is a Slack incoming webhook: POST {\"text\": ...} (default: the alert JSON)")
    add.add_argument("--entity-type", default="run", choices=("run", "model"), help="watch runs or models")
    add.add_argument("--json", action="store_true", help="print the rule as JSON instead of a table")
    _rules_options(add, store_options)
    add.set_defaults(run=lambda args: _cmd_add(args, store))

    rules = sub.add_parser("rules", parents=[common], help="the alert rules in force in a project")
    rules.add_argument("project", help="the project's name")
    rules.add_argument("--json", action="store_true", help="print JSON objects instead of a table")
    _rules_options(rules, store_options)
    rules.set_defaults(run=lambda args: _cmd_rules(args, store))

    remove = sub.add_parser("remove", parents=[common], help="remove an alert rule (a firing alert of it is not "
                                                             "resolved: its transitions stop)")
    remove.add_argument("project", help="the project the rule belongs to")
    remove.add_argument("rule_id", help="the rule's id, as `trackstream alerts rules` lists it, or a unique start "
                                        "of it")
    _rules_options(remove, store_options)
    remove.set_defaults(run=lambda args: _cmd_remove(args, store))

    fired = sub.add_parser("list", parents=[common], help="alerts fired and resolved, newest first (firing in red)")
    fired.add_argument("project", help="the project's name")
    fired.add_argument("--run", action="append", default=None, dest="runs", metavar="ID",
                       help="only the alerts of this run id, repeatable (default: every run)")
    fired.add_argument("--firing", action="store_true",
                       help="only the rules firing now: the newest transition per rule and run (default: every "
                            "transition)")
    fired.add_argument("--limit", type=int, default=1000, help="at most this many alerts, the newest")
    fired.add_argument("--entity-type", default="run", choices=("run", "model"), help="alerts of runs or models")
    fired.add_argument("--json", action="store_true", help="print the full rows as JSON objects instead of a table")
    store_options(fired)
    fired.set_defaults(run=lambda args: _cmd_list(args, reader))


def _rules_options(parser: argparse.ArgumentParser, store_options: StoreOptions) -> None:
    group = parser.add_argument_group("Kafka deployment (its rules are on the <prefix>.alert_rules topic)")
    group.add_argument("--bootstrap", help="Kafka bootstrap servers host:port[,...] of the deployment whose stream "
                       "workers evaluate the rules (default: $TRACKSTREAM_KAFKA_BOOTSTRAP unless --data-dir is given; "
                       "unset: the embedded store's rules file). TLS and SASL settings come from the "
                       "TRACKSTREAM_KAFKA_* variables")
    group.add_argument("--topic-prefix", help="topic prefix (default: $TRACKSTREAM_TOPIC_PREFIX or trackstream)")
    store_options(parser)


def _home(args: argparse.Namespace, store: StoreFn) -> KafkaSettings | Path:
    """Where the rules of the options' deployment live: Kafka settings, or an embedded store's directory.

    Raises :class:`~trackstream.schemas.errors.ConfigError` for a ClickHouse server store without Kafka settings.
    """
    from trackstream.schemas.errors import ConfigError
    from trackstream.schemas.settings import KafkaSettings

    if args.bootstrap or args.data_dir is None:
        kafka = KafkaSettings.resolve(bootstrap=args.bootstrap, topic_prefix=args.topic_prefix)
        if kafka.bootstrap:
            return kafka
    settings = store(args)
    if settings.url:
        raise ConfigError("the store is a ClickHouse server: the alert rules of such a deployment are on its Kafka "
                          "topic <prefix>.alert_rules, which the stream workers follow. Pass --bootstrap HOST:PORT "
                          "(and --topic-prefix when the deployment has one) or set TRACKSTREAM_KAFKA_BOOTSTRAP")
    return settings.data_path


def _where(home: KafkaSettings | Path) -> str:
    if isinstance(home, Path):
        from trackstream.alert_rules import rules_path

        return str(rules_path(home))
    from trackstream.schemas.topics import Topics

    return f"Kafka topic {Topics(home.topic_prefix).alert_rules} at {home.bootstrap}"


def _in_force(home: KafkaSettings | Path, project: str) -> list[AlertRule]:
    if isinstance(home, Path):
        from trackstream.alert_rules import load_rules

        return load_rules(home, project=project)
    from trackstream.alert_topic import topic_rules

    return topic_rules(home, project=project)


def rule_row(rule: AlertRule) -> dict[str, Any]:
    """What the CLI shows of a rule: id, project, entity_type, metric, when, value, after_steps, webhook (scheme and
    host only, ``…`` for the rest), slack, version."""
    from trackstream.streams.webhooks import redact_url

    return {"id": rule.id, "project": rule.project, "entity_type": rule.entity_type, "metric": rule.metric,
            "when": rule.when, "value": rule.value, "after_steps": rule.after_steps,
            "webhook": None if rule.webhook is None else redact_url(rule.webhook), "slack": rule.slack,
            "version": rule.version}


def _shown(row: dict[str, Any], as_json: bool) -> dict[str, Any]:
    """A rule's row as printed: whole in JSON; in a table without the entity type (unless a model's) and version."""
    if as_json:
        return row
    return {key: value for key, value in row.items()
            if key != "version" and (key != "entity_type" or value != "run")}


def _cmd_add(args: argparse.Namespace, store: StoreFn) -> int:
    from trackstream import render
    from trackstream.schemas.alerts import make_rule
    from trackstream.schemas.errors import ConfigError

    try:
        rule = make_rule(args.project, args.metric, args.when, value=args.value, after_steps=args.after_steps,
                         webhook=args.webhook, slack=args.slack, entity_type=args.entity_type)
    except ValueError as exc:
        raise ConfigError(f"invalid alert rule: {exc}") from None
    home = _home(args, store)
    if isinstance(home, Path):
        from trackstream.alert_rules import save_rule

        saved = save_rule(home, rule)
    else:
        from trackstream.alert_topic import publish_rule

        saved = publish_rule(home, rule)
    log.info("alert rule %s (version %d) saved to %s", saved.id, saved.version, _where(home))
    render.emit_rows([_shown(rule_row(saved), args.json)], as_json=args.json, title=f"alert rule of {args.project}")
    return 0


def _cmd_rules(args: argparse.Namespace, store: StoreFn) -> int:
    from trackstream import render

    home = _home(args, store)
    rows = [_shown(rule_row(rule), args.json) for rule in _in_force(home, args.project)]
    if args.json:
        render.emit_rows(rows, as_json=True)
    elif rows:
        from rich.console import Console

        table = render.table(rows, title=f"alert rules of {args.project}")
        table.columns[0].no_wrap = True  # the id, whole: `alerts remove` takes it (or a unique start of it)
        table.columns[0].min_width = max(len(row["id"]) for row in rows)
        Console().print(table)
    else:
        log.info("no alert rule in project %s (%s)", args.project, _where(home))
    return 0


def _cmd_remove(args: argparse.Namespace, store: StoreFn) -> int:
    from trackstream.schemas.errors import NotFoundError

    home = _home(args, store)
    ids = [rule.id for rule in _in_force(home, args.project)]
    if args.rule_id not in ids:
        starting = [rule_id for rule_id in ids if args.rule_id and rule_id.startswith(args.rule_id)]
        if len(starting) == 1:  # a unique start of an id, as git takes a short hash
            args.rule_id = starting[0]
        else:
            known = (f"{len(starting)} of its rules start so: {', '.join(starting)}" if starting else
                     f"its rules: {', '.join(ids)}" if ids else "it has none")
            raise NotFoundError(f"no alert rule {args.rule_id!r} in project {args.project!r} ({known}; "
                                f"{_where(home)})")
    if isinstance(home, Path):
        from trackstream.alert_rules import delete_rule

        removed = delete_rule(home, args.rule_id)
    else:
        from trackstream.alert_topic import retract_rule

        removed = retract_rule(home, args.rule_id)
    if removed is None:  # removed by someone else in between
        raise NotFoundError(f"no alert rule {args.rule_id!r} in project {args.project!r} any more")
    sys.stdout.write(f"removed alert rule {removed.id}: {removed.when} {removed.metric} of project "
                     f"{removed.project}\n")
    return 0


def alert_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """What ``trackstream alerts list`` shows of ``QueryService.alerts`` rows: time, run, rule (when and metric),
    metric, step, value, state and message."""
    return [{"time": row["time"], "run": row["run"], "rule": f"{row['when']} {row['metric'] or '*'}",
             "metric": row["metric"], "step": row["step"], "value": row["value"], "state": row["state"],
             "message": row["message"]} for row in rows]


def _cmd_list(args: argparse.Namespace, reader: ReaderFn) -> int:
    from trackstream import render

    rows = reader(args).alerts(args.project, entity_type=args.entity_type, runs=args.runs,
                               state="firing" if args.firing else None, limit=args.limit)
    title = f"{'firing ' if args.firing else ''}alerts in {args.project}"
    if args.json:
        render.emit_rows(rows, as_json=True)
    elif not rows:
        log.info("no %s", title)
    else:
        from rich.console import Console

        table = render.table(alert_rows(rows), title=title)
        for line, row in zip(table.rows, rows, strict=True):  # firing in red, bold while it still fires
            if row["state"] == "firing":
                line.style = "bold red" if row["active"] else "red"
        Console().print(table)
    return 0
