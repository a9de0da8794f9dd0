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
from functools import partial
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from .connection import kafka_failure, registry_config
from .policy import PolicyError, load_policy
from .settings import Settings, SettingsError, add_common_arguments, from_args

EXIT_CONFIG = 2


class CliError(Exception):
    """A one-line reason to stop a command."""


def _fail(message: str) -> int:
    print(f"enforcer: error: {message}", file=sys.stderr, flush=True)
    return EXIT_CONFIG


# seconds a schema registry request may take: the client's default is no limit, and the
# gate's event loop waits for it (see codec.REGISTRY_BUDGET)
REGISTRY_REQUEST_TIMEOUT = 1.0


def make_codec(settings: Settings, registry_errors: Any = None):
    """The codec, with a schema registry client when one is configured. The client
    does not retry by itself (it would wait seconds): the codec retries briefly and
    counts failed requests in ``registry_errors`` (``Codec``)."""
    from .codec import Codec

    if not settings.schema_registry_url:
        return Codec(registry_errors=registry_errors)
    from confluent_kafka.schema_registry import SchemaRegistryClient

    client = SchemaRegistryClient.new_client(
        {**registry_config(settings), "timeout": REGISTRY_REQUEST_TIMEOUT, "max.retries": 0}
    )
    return Codec(client, registry_errors=registry_errors)


def register_output_schemas(codec: Any, settings: Settings) -> None:
    """With a schema registry: register the schemas of the worker's output records now,
    waiting up to ``--registry-timeout`` for a registry that does not answer, so that
    no output waits for the registry later (``CliError`` if it never answers, or
    refuses a schema)."""
    from .codec import (
        CONSENT_RECEIPT,
        DECISION,
        RETRACTION,
        TRAINING_RECORD,
        RegistryUnavailable,
        wait_for_registry,
    )

    if not codec.uses_registry:
        return
    s = settings

    def waiting(exc: Exception, wait: float) -> None:
        print(f"enforcer: {exc}; asking again in {wait:.0f} s", file=sys.stderr, flush=True)

    for name, topic in (
        (TRAINING_RECORD, s.training_topic),
        (RETRACTION, s.retractions_topic),
        (DECISION, s.decisions_topic),
        (CONSENT_RECEIPT, s.receipts_topic),
    ):
        try:
            wait_for_registry(partial(codec.wire_prefix, name, topic), s.registry_timeout, waiting)
        except RegistryUnavailable as exc:
            raise CliError(
                f"{exc} (the schema registry at {s.schema_registry_url} did not answer for "
                f"--registry-timeout {s.registry_timeout:g} s)"
            ) from None
        except Exception as exc:  # a definite refusal by the registry
            raise CliError(
                f"the schema registry at {s.schema_registry_url} refused the {name} schema "
                f"for {topic}-value: {exc}"
            ) from None


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
    from . import faust_compat  # Faust is imported by the commands that run it only

    try:  # before anything else: the Faust internals the worker relies on are there
        faust_compat.require()
    except faust_compat.MissingInternals as exc:
        raise CliError(str(exc)) from None
    from .app import build
    from .topics import admin_client, ensure_topics, preflight, replication_factor

    policy = load_policy(settings.policy_path)
    codec = make_codec(settings)
    _check_data_dir(settings.data_dir)
    _check_port(settings.web_host, settings.web_port)
    preflight(settings, "worker")  # the cluster answers, and grants the worker's ACLs
    ensure_topics(settings, create_inputs=False)
    rf = replication_factor(admin_client(settings), settings)
    register_output_schemas(codec, settings)
    enforcer = build(settings, policy, codec, rf)
    from .worker import EnforcerWorker

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
    from .topics import ensure_topics, topic_specs

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
    from . import operator_cli

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
        from . import operator_cli

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
