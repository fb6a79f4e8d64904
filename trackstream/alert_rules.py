"""Alert rules of an embedded store: ``<data_dir>/alert_rules.jsonl``, an append-only log of rule versions.

``trackstream alerts add`` appends a rule (and ``alerts remove`` a tombstone) under an exclusive ``flock``; the
local runner re-reads the file when it changes, so a rule takes effect on the next ingest pass without a restart,
whether or not the runner is up when it is added. Each line is one rule as :func:`trackstream.schemas.alerts.
encode_rule` writes it; per rule id the highest ``version`` wins (later lines break ties), and a ``deleted`` one
removes the rule. A damaged line is skipped with a warning (the file is written by appends, a crash can tear the
last one). On Kafka, the same rules travel on the ``<prefix>.alert_rules`` topic instead (docs/alerts.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from trackstream.schemas.alerts import AlertRule, decode_rule, encode_rule

log = logging.getLogger(__name__)

RULES_FILE: Final = "alert_rules.jsonl"


def rules_path(data_dir: Path) -> Path:
    """``<data_dir>/alert_rules.jsonl``."""
    return Path(data_dir) / RULES_FILE


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def _versions(path: Path) -> dict[str, AlertRule]:
    """The newest version of every rule id in the file, tombstones included."""
    newest: dict[str, AlertRule] = {}
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return newest
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rule = decode_rule(line)
        except ValueError as exc:
            log.warning("%s line %d skipped: %s", path, number, exc)
            continue
        if rule.id not in newest or rule.version >= newest[rule.id].version:
            newest[rule.id] = rule
    return newest


def load_rules(data_dir: Path, *, project: str | None = None) -> list[AlertRule]:
    """The rules in force (newest versions, tombstones left out), of ``project`` or all, sorted by project and id."""
    rules = [rule for rule in _versions(rules_path(data_dir)).values()
             if not rule.deleted and (project is None or rule.project == project)]
    return sorted(rules, key=lambda rule: (rule.project, rule.id))


def save_rule(data_dir: Path, rule: AlertRule) -> AlertRule:
    """Append ``rule`` as the next version of its id (a rule added again replaces its webhook); returns it."""
    path = rules_path(data_dir)
    with _locked(path) as fd:
        previous = _versions(path).get(rule.id)
        saved = dataclasses.replace(rule, version=0 if previous is None else previous.version + 1)
        os.write(fd, encode_rule(saved) + b"\n")
    return saved


def delete_rule(data_dir: Path, rule_id: str) -> AlertRule | None:
    """Append a tombstone for ``rule_id``; returns the removed rule, or None when no such rule is in force."""
    path = rules_path(data_dir)
    with _locked(path) as fd:
        previous = _versions(path).get(rule_id)
        if previous is None or previous.deleted:
            return None
        os.write(fd, encode_rule(dataclasses.replace(previous, version=previous.version + 1, deleted=True)) + b"\n")
    return previous


class RulesFile:
    """Follows the rules file of a store: :meth:`poll` returns the rules when the file changed since the last call
    (the first call always), else None. Cheap: one ``stat`` per call."""

    def __init__(self, data_dir: Path) -> None:
        self.path = rules_path(data_dir)
        self._seen: tuple[int, int] | None = None
        self._first = True

    def poll(self) -> list[AlertRule] | None:
        try:
            stat = self.path.stat()
            seen = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            seen = (0, 0)
        if seen == self._seen and not self._first:
            return None
        self._seen, self._first = seen, False
        return load_rules(self.path.parent)
