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


def is_forwarded(headers: Any) -> bool:
    """True when an internal record's headers end with the re-keying stage's: an input
    forwarded by it, which carries its own headers first, then ``KIND``, ``SRC_TOPIC``,
    ``SRC_PARTITION``, ``SRC_OFFSET`` and ``SRC_KEY``, read by position."""
    return (
        isinstance(headers, list | tuple)
        and len(headers) >= 5
        and headers[-1][0] == SRC_KEY
        and headers[-5][0] == KIND
        and headers[-4][0] == SRC_TOPIC
        and headers[-3][0] == SRC_PARTITION
        and headers[-2][0] == SRC_OFFSET
    )


def _check_id(datum: Mapping[str, Any], field: str, kind: str) -> None:
    _check_id_value(datum.get(field), field, kind)


def _check_id_value(value: Any, field: str, kind: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise DecodeError(f"{kind} has an empty {field}")
    if len(value) > MAX_ID_BYTES // 4 and len(value.encode("utf-8")) > MAX_ID_BYTES:
        raise DecodeError(f"{kind} {field} is longer than {MAX_ID_BYTES} bytes")


def check_user_id(user_id: Any, kind: str) -> None:
    """Reject a user id that cannot route a record (what re-keying checks)."""
    _check_id({"user_id": user_id}, "user_id", kind)


def check_post(post: Mapping[str, Any]) -> None:
    """Reject a decoded Post that cannot be enforced."""
    check_post_fields(post.get("post_id"), post.get("user_id"), post["author_country"])


def check_post_fields(post_id: Any, user_id: Any, author_country: str) -> None:
    """``check_post`` from the fields it reads."""
    _check_id_value(user_id, "user_id", "Post")
    _check_id_value(post_id, "post_id", "Post")
    if not _COUNTRY.match(author_country):
        raise DecodeError("Post author_country is not an ISO 3166-1 alpha-2 code")


def check_objection(event: Mapping[str, Any]) -> None:
    """Reject a decoded ObjectionEvent that cannot be enforced."""
    _check_id(event, "user_id", "ObjectionEvent")
    _check_id(event, "event_id", "ObjectionEvent")


def partition_for_user(user_key: bytes, partitions: int) -> int:
    """The internal partition of a user: ``murmur2(key) & 0x7fffffff % partitions``."""
    return (murmur2(user_key) & 0x7FFFFFFF) % partitions
