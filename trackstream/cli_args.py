"""Argument types and help formatting of the ``trackstream`` command line (argparse)."""

from __future__ import annotations

import argparse
from typing import Any

import orjson


def csv(value: str) -> list[str]:
    return [item for item in (part.strip() for part in value.split(",")) if item]


def param(value: str) -> tuple[str, Any]:
    key, sep, raw = value.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {value!r}")
    try:
        return key, orjson.loads(raw)
    except orjson.JSONDecodeError:
        return key, raw


def tag(value: str) -> tuple[str, str]:
    key, sep, raw = value.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {value!r}")
    return key, raw


class HelpFormatter(argparse.HelpFormatter):
    """Adds ``(default: X)`` to a flag's help when it has a default worth saying and its help does not say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def describe(parser: argparse.ArgumentParser) -> None:
    """Every subcommand gets its one-line help as its description and the defaults formatter."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                sub.description = sub.description or helps.get(name)
                sub.formatter_class = HelpFormatter
                describe(sub)
