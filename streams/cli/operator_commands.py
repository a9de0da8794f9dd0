"""Operator sub-commands: ``generate``, ``replay``, ``audit``, ``verify`` and ``demo``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from streams.cli.demo import run_demo
from streams.kafka.registry import make_codec
from streams.settings import CliError, Settings, SettingsError, add_common_arguments
from streams.traffic.produce import make_generator


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the operator sub-commands."""
    gen = sub.add_parser("generate", help="produce synthetic posts and objection events")
    add_common_arguments(gen)
    add_generator_arguments(gen)
    gen.add_argument("--count", type=int, default=10_000, help="records to produce (default 10000)")
    gen.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="records per second (default 0: as fast as possible)",
    )
    gen.add_argument(
        "--objections-first",
        action="store_true",
        help="start with one OBJECT event for every objector",
    )

    replay = sub.add_parser(
        "replay",
        help="re-decide past posts under the current consent "
        "state and policy of the running worker",
    )
    add_common_arguments(replay)
    replay.add_argument(
        "--from",
        dest="start",
        default="0",
        help="first post time, ISO 8601 or epoch millis (default: the beginning)",
    )
    replay.add_argument(
        "--to",
        dest="end",
        default=None,
        help="last post time, ISO 8601 or epoch millis (default: now)",
    )
    replay.add_argument("--users", default=None, help="only these user ids, comma-separated")
    replay.add_argument(
        "--users-file", default=None, help="only the user ids in this file, one per line"
    )
    replay.add_argument(
        "--dry-run", action="store_true", help="print what would change without writing anything"
    )
    replay.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds to wait for the worker's answers (default 300)",
    )

    audit = sub.add_parser(
        "audit", help="one user's objections, receipts, decisions and exposure windows"
    )
    add_common_arguments(audit)
    audit.add_argument("--user", required=True, help="the user id")
    audit.add_argument("--from", dest="start", default="0", help="ISO 8601 or epoch millis")
    audit.add_argument("--to", dest="end", default=None, help="ISO 8601 or epoch millis")
    audit.add_argument("--format", choices=("text", "json"), default="text")

    verify = sub.add_parser(
        "verify",
        help="independently check the topics: every input accounted for, no post of an "
        "objecting user published, every published post eligible",
    )
    add_common_arguments(verify)
    verify.add_argument("--from", dest="start", default="0", help="ISO 8601 or epoch millis")
    verify.add_argument("--to", dest="end", default=None, help="ISO 8601 or epoch millis")
    verify.add_argument(
        "--follow", action="store_true", help="check continuously; serve /metrics on --web-port"
    )
    verify.add_argument("--report", default=None, help="write an HTML report to this file")
    verify.add_argument(
        "--grace",
        type=float,
        default=60.0,
        help="seconds an input may wait for its record before it is a violation (default 60)",
    )
    verify.add_argument(
        "--known-policy",
        action="append",
        default=[],
        help="a policy file of an earlier version that published posts (repeatable)",
    )
    verify.add_argument(
        "--interval", type=float, default=10.0, help="seconds between passes with --follow"
    )

    demo = sub.add_parser(
        "demo",
        help="the embedded demo: a local broker, the topics, a worker "
        "and synthetic traffic, with a live view",
    )
    add_common_arguments(demo)
    add_generator_arguments(demo, users=2000, bad_ratio=0.005)
    demo.add_argument(
        "--duration", type=float, default=0.0, help="seconds to run (default: until Ctrl-C)"
    )
    demo.add_argument(
        "--rate", type=float, default=1000.0, help="synthetic records per second (default 1000)"
    )


def add_generator_arguments(
    parser: argparse.ArgumentParser, users: int = 1000, bad_ratio: float = 0.0
) -> None:
    """Flags shared by ``generate`` and ``demo``."""
    g = parser.add_argument_group("traffic")
    g.add_argument(
        "--users",
        dest="gen_users",
        type=int,
        default=users,
        help=f"distinct users (default {users})",
    )
    g.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    g.add_argument(
        "--bad-ratio",
        type=float,
        default=bad_ratio,
        help=f"share of malformed records (default {bad_ratio})",
    )
    g.add_argument(
        "--objector-share", type=float, default=0.1, help="share of users who object (default 0.1)"
    )
    g.add_argument(
        "--objection-rate",
        type=float,
        default=0.03,
        help="share of records that are objection events (default 0.03)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run an operator sub-command."""
    if args.command == "generate":
        return cmd_generate(args, settings)
    if args.command == "replay":
        return cmd_replay(args, settings)
    if args.command == "audit":
        return cmd_audit(args, settings)
    if args.command == "verify":
        return cmd_verify(args, settings)
    return run_demo(args, settings)


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    """Produce synthetic traffic to the input topics."""
    from streams.kafka.topics import preflight
    from streams.traffic.produce import produce_traffic

    gen = make_generator(args, settings)
    if args.count < 0 or args.rate < 0:
        raise SettingsError("--count and --rate must not be negative")
    preflight(settings, "generate")
    counts = produce_traffic(
        settings, gen, args.count, args.rate, objections_first=args.objections_first
    )
    print(" ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    """Run an operator replay and print its summary."""
    from streams.cli.replay import (
        ReplayError,
        ReplayPlan,
        format_report,
        now_ms,
        parse_time,
        run_replay,
    )

    users: set[str] | None = None
    if args.users:
        users = {u.strip() for u in args.users.split(",") if u.strip()}
    if args.users_file:
        try:
            lines = Path(args.users_file).read_text().splitlines()
        except OSError as exc:
            raise SettingsError(f"cannot read --users-file: {exc.strerror or exc}") from None
        users = (users or set()) | {line.strip() for line in lines if line.strip()}
    plan = ReplayPlan(
        start_ms=parse_time(args.start, "--from"),
        end_ms=parse_time(args.end, "--to") if args.end else now_ms(),
        users=frozenset(users) if users is not None else None,
        dry_run=args.dry_run,
        timeout=args.timeout,
    )
    started = time.monotonic()
    try:
        report = run_replay(settings, plan, make_codec(settings))
    except ReplayError as exc:
        raise CliError(str(exc)) from None
    print(format_report(report, plan.dry_run))
    print(f"took {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    """Print one user's timeline (``cli/audit.py``)."""
    from streams.cli.audit import as_json, as_text, audit
    from streams.cli.replay import parse_time

    start = parse_time(args.start, "--from")
    end = parse_time(args.end, "--to") if args.end else None
    line = audit(settings, make_codec(settings), args.user, start, end)
    print(as_json(line) if args.format == "json" else as_text(line))
    return 0


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    """Check the topics (``verify/checker.py``): exit 0 when nothing is violated, 1 otherwise."""
    from streams.cli.replay import parse_time
    from streams.verify.checker import run

    if args.grace < 0 or args.interval <= 0:
        raise SettingsError("--grace must not be negative and --interval must be positive")
    return run(
        settings,
        parse_time(args.start, "--from"),
        parse_time(args.end, "--to") if args.end else None,
        args.grace,
        args.known_policy,
        args.report,
        args.follow,
        args.interval,
    )
