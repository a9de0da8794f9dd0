"""What counts as a valid input record beyond its Avro schema, and where a user lives.

``check_post`` / ``check_objection`` raise ``DecodeError`` (the DLQ reason) for values
that decode but cannot be enforced. ``partition_for_user`` is the one partitioner of
the internal topics and tables: Java's default (murmur2 of the UTF-8 user id), so
any Kafka client can compute the same partition. No Kafka here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from aiokafka.partitioner import murmur2

from .codec import DecodeError

MAX_ID_BYTES = 1000

# Headers of the internal user-events topic (and of DLQ records, for source.*)
KIND = "enforcer.kind"
SRC_TOPIC, SRC_PARTITION, SRC_OFFSET = "source.topic", "source.partition", "source.offset"
SRC_KEY = "source.key"  # the input's key (internal records only; null for a null key)
KIND_POST, KIND_OBJECTION, KIND_REPLAY = b"post", b"objection", b"replay"
REPLAY_ID, REPLAY_DRY_RUN = "replay.id", "replay.dry_run"
_COUNTRY = re.compile(r"^[A-Z]{2}$")


def _check_id(datum: Mapping[str, Any], field: str, kind: str) -> None:
    value = datum.get(field)
    if not isinstance(value, str) or not value.strip():
        raise DecodeError(f"{kind} has an empty {field}")
    if len(value.encode("utf-8")) > MAX_ID_BYTES:
        raise DecodeError(f"{kind} {field} is longer than {MAX_ID_BYTES} bytes")


def check_user_id(user_id: Any, kind: str) -> None:
    """Reject a user id that cannot route a record (what re-keying checks)."""
    _check_id({"user_id": user_id}, "user_id", kind)


def check_post(post: Mapping[str, Any]) -> None:
    """Reject a decoded Post that cannot be enforced."""
    _check_id(post, "user_id", "Post")
    _check_id(post, "post_id", "Post")
    if not _COUNTRY.match(post["author_country"]):
        raise DecodeError("Post author_country is not an ISO 3166-1 alpha-2 code")


def check_objection(event: Mapping[str, Any]) -> None:
    """Reject a decoded ObjectionEvent that cannot be enforced."""
    _check_id(event, "user_id", "ObjectionEvent")
    _check_id(event, "event_id", "ObjectionEvent")


def partition_for_user(user_key: bytes, partitions: int) -> int:
    """The internal partition of a user: ``murmur2(key) & 0x7fffffff % partitions``."""
    return (murmur2(user_key) & 0x7FFFFFFF) % partitions
