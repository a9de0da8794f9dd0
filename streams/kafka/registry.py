"""The schema registry as the commands and the re-keying stage use it: the codec built
from settings (``make_codec``), and the worker's output schemas registered at start
(``register_output_schemas``). Not a command itself: the worker, the re-keying stage,
``generate``, ``replay``, ``audit`` and ``demo`` take their codec from here.
"""

from __future__ import annotations

import sys
from functools import partial
from typing import Any

from streams.kafka.connection import registry_config
from streams.serde.codec import (
    CONSENT_RECEIPT,
    DECISION,
    RETRACTION,
    TRAINING_RECORD,
    Codec,
    RegistryUnavailable,
    wait_for_registry,
)
from streams.settings import CliError, Settings

# seconds a schema registry request may take: the client's default is no limit, and the
# gate's event loop waits for it (see codec.REGISTRY_BUDGET)
REGISTRY_REQUEST_TIMEOUT = 1.0


def make_codec(settings: Settings, registry_errors: Any = None) -> Codec:
    """The codec, with a schema registry client when one is configured. The client
    does not retry by itself (it would wait seconds): the codec retries briefly and
    counts failed requests in ``registry_errors`` (``Codec``)."""
    if not settings.schema_registry_url:
        return Codec(registry_errors=registry_errors)
    # imported only with a registry (it brings an HTTP client along)
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
