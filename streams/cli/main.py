"""The ``enforcer`` command: ``worker``, ``topics create``, ``generate``, ``replay``, ``demo``.

Configuration problems stop a command at start with one line on stderr
(``enforcer: error: ...``) and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException

from streams.cli import operator_commands as operator_cli
from streams.core.policy import PolicyError, load_policy
from streams.kafka.connection import kafka_failure
from streams.kafka.registry import make_codec, register_output_schemas
from streams.settings import CliError, Settings, SettingsError, add_common_arguments, from_args

EXIT_CONFIG = 2


def _fail(message: str) -> int:
    print(f"enforcer: error: {message}", file=sys.stderr, flush=True)
    return EXIT_CONFIG


def _check_data_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SettingsError(f"data dir {path} is not writable: {exc.strerror or exc}") from None


def _check_port(host: str, port: int) -> None:
    if port == 0:
        return
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise SettingsError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def cmd_worker(settings: Settings) -> int:
    """Run the stream processor until SIGTERM/SIGINT."""
    from streams import faust_compat  # Faust is imported by the commands that run it only

    try:  # before anything else: the Faust internals the worker relies on are there
        faust_compat.require()
    except faust_compat.MissingInternals as exc:
        raise CliError(str(exc)) from None
    from streams.kafka.topics import (
        admin_client,
        check_record_limit,
        ensure_topics,
        preflight,
        replication_factor,
    )
    from streams.runtime.app import build

    policy = load_policy(settings.policy_path)
    codec = make_codec(settings)
    _check_data_dir(settings.data_dir)
    _check_port(settings.web_host, settings.web_port)
    preflight(settings, "worker")  # the cluster answers, and grants the worker's ACLs
    ensure_topics(settings, create_inputs=False)
    check_record_limit(settings)  # every record that passes the size checks is accepted
    rf = replication_factor(admin_client(settings), settings)
    register_output_schemas(codec, settings)
    enforcer = build(settings, policy, codec, rf)
    from streams.runtime.worker import EnforcerWorker

    print(
        f"enforcer: worker {settings.app_id} on {settings.bootstrap_servers}, policy "
        f"{policy.version}, {settings.partitions} partitions, http://{settings.web_host}:"
        f"{settings.web_port}/ready",
        file=sys.stderr,
        flush=True,
    )
    EnforcerWorker(enforcer.app, settings.log_level).execute_from_commandline()
    return 0


def cmd_topics_create(settings: Settings) -> int:
    """Create every topic of the contract and the internal ones (idempotent)."""
    from streams.kafka.topics import ensure_topics, topic_specs

    created = ensure_topics(settings, create_inputs=True)
    for spec in topic_specs(settings):
        state = "created" if spec.name in created else "exists"
        print(f"{spec.name}\t{spec.role}\t{state}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(prog="enforcer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help="run the stream processor")
    add_common_arguments(worker)
    topics = sub.add_parser("topics", help="topic administration")
    topics_sub = topics.add_subparsers(dest="topics_command", required=True)
    create = topics_sub.add_parser("create", help="create every topic (idempotent)")
    add_common_arguments(create)
    operator_cli.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``enforcer`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = from_args(args)
        if args.command == "worker":
            return cmd_worker(settings)
        if args.command == "topics":
            return cmd_topics_create(settings)
        return operator_cli.run(args, settings)
    except (SettingsError, PolicyError, CliError) as exc:
        return _fail(str(exc))
    # a client call failed: one line, no trace (KafkaError is raisable, though not typed so)
    except (KafkaException, KafkaError) as exc:  # type: ignore[misc]
        return _fail(kafka_failure(exc, settings))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
