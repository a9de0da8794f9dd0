"""Operator sub-commands: ``generate``, ``replay`` and ``demo``."""

from __future__ import annotations

import argparse

from .settings import Settings, add_common_arguments


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the operator sub-commands."""
    for name, text in (("generate", "produce synthetic traffic"),
                       ("replay", "re-decide past posts under the current state and policy"),
                       ("demo", "run the embedded demo")):
        parser = sub.add_parser(name, help=text)
        add_common_arguments(parser)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run an operator sub-command."""
    raise SystemExit(f"enforcer: error: {args.command} is not implemented yet")
