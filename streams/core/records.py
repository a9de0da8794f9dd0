"""What counts as a valid input record beyond its Avro schema, and where a user lives.

``check_post`` / ``check_objection`` raise ``DecodeError`` (the DLQ reason) for values
that decode but cannot be enforced; the codec raises it too, for bytes it cannot read.
``partition_for_user`` is the one partitioner of the internal topics and tables: Java's
default (murmur2 of the UTF-8 user id), so any Kafka client can compute the same
partition. No Kafka here.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any

MAX_ID_BYTES = 1000


class DecodeError(ValueError):
    """Bytes that cannot be read as a known record; the message is the DLQ reason."""


# Headers of the internal user-events topic (and of DLQ records, for source.*)
KIND = "enforcer.kind"
SRC_TOPIC, SRC_PARTITION, SRC_OFFSET = "source.topic", "source.partition", "source.offset"
SRC_KEY = "source.key"  # the input's key (internal records only; null for a null key)
KIND_POST, KIND_OBJECTION, KIND_REPLAY = b"post", b"objection", b"replay"
REPLAY_ID, REPLAY_DRY_RUN = "replay.id", "replay.dry_run"
# on a DLQ record whose input was too large to send again: the input's size in bytes
# (the record then has no key and no value, only its error and source.* headers)
DLQ_REFERENCE = "dlq.reference.bytes"
# what a record takes on the wire besides its key, value and headers, at most
RECORD_FRAMING = 512
_COUNTRY = re.compile(r"[A-Z]{2}\Z")

# The layout of a Post as the gate reads it, the one description both of its paths use:
# the fields it reads from a scanned post, in the order it indexes them (the Python
# path's picker, ``gate/posts.py``; the fast path's picks, ``gate/native.py``, whose C
# code, ``_native.c``, reads them in this order), with the Avro kind of each (the fast
# path requires these kinds, and ``_native.c`` checks them again at set-up: platform
# and visibility index its rules table as enum indexes, the adult flag as a boolean).
POST_LAYOUT: tuple[tuple[str, str], ...] = (
    ("post_id", "string"),
    ("user_id", "string"),
    ("platform", "enum"),
    ("visibility", "enum"),
    ("author_country", "string"),
    ("author_is_adult", "boolean"),
)
POST_FIELDS = tuple(name for name, _ in POST_LAYOUT)
POST_FIELD_KINDS = tuple(kind for _, kind in POST_LAYOUT)


# The re-keying stage's header on a forwarded input, after the input's own headers:
# its kind and where it was read, packed (``pack_source``) into one header, which
# costs each hop less than the five separate headers it replaces (those are still
# read, from records forwarded by an earlier version).
SOURCE = "enforcer.source"
# kind code, whether a key follows the topic, source partition, offset, topic length
_SOURCE_HEAD = struct.Struct(">cBIqH")
_KIND_CODES = {KIND_POST: b"p", KIND_OBJECTION: b"o"}
_KINDS = {code: kind for kind, code in _KIND_CODES.items()}

Forwarded = tuple[Sequence[Any], bytes, str, int, int, bytes | None]


def source_prefix(kind: bytes, topic: str, partition: int) -> tuple[bytes, bytes, bytes]:
    """What a ``SOURCE`` header of one input partition always has: its kind code, its
    partition, and its topic (``pack_source``)."""
    return _KIND_CODES[kind], partition.to_bytes(4, "big"), topic.encode("utf-8")


def pack_source(prefix: tuple[bytes, bytes, bytes], offset: int, key: bytes | None) -> bytes:
    """A ``SOURCE`` header value, from ``source_prefix``, the input's offset and key."""
    code, partition, topic = prefix
    head = (code, b"\x00" if key is None else b"\x01", partition)
    tail = offset.to_bytes(8, "big", signed=True) + len(topic).to_bytes(2, "big") + topic
    return b"".join((*head, tail, key or b""))


def forwarded(headers: Any) -> Forwarded | None:
    """For an input forwarded by the re-keying stage: its own headers, its kind, and
    the topic, partition, offset and key it was read with. None for any other internal
    record (a replay request), and for headers that do not read as either layout."""
    if not isinstance(headers, list | tuple) or not headers:
        return None
    name, value = headers[-1]
    try:
        if name == SOURCE:
            code, has_key, partition, offset, length = _SOURCE_HEAD.unpack_from(value)
            end = _SOURCE_HEAD.size + length
            key = value[end:]
            if has_key > 1 or (not has_key and key) or len(value) < end:
                return None
            topic = value[_SOURCE_HEAD.size : end].decode("utf-8")
            return headers[:-1], _KINDS[code], topic, partition, offset, key if has_key else None
        if (
            name == SRC_KEY
            and len(headers) >= 5
            and headers[-5][0] == KIND
            and headers[-4][0] == SRC_TOPIC
            and headers[-3][0] == SRC_PARTITION
            and headers[-2][0] == SRC_OFFSET
        ):
            return (
                headers[:-5],
                headers[-5][1],
                headers[-4][1].decode("utf-8"),
                int(headers[-3][1]),
                int(headers[-2][1]),
                value,
            )
    except (struct.error, KeyError, TypeError, ValueError, AttributeError):
        pass
    return None


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


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of ``data``, as Java's ``Utils.murmur2`` (the default partitioner)
    computes it; the same code as aiokafka's ``partitioner.murmur2`` (Apache-2.0), here
    so that the core imports no Kafka client."""
    length = len(data)
    seed = 0x9747B28C
    # 'm' and 'r' are mixing constants generated offline
    m = 0x5BD1E995
    r = 24
    h = seed ^ length
    length4 = length // 4
    for i in range(length4):
        i4 = i * 4
        k = (
            (data[i4 + 0] & 0xFF)
            + ((data[i4 + 1] & 0xFF) << 8)
            + ((data[i4 + 2] & 0xFF) << 16)
            + ((data[i4 + 3] & 0xFF) << 24)
        )
        k &= 0xFFFFFFFF
        k *= m
        k &= 0xFFFFFFFF
        k ^= (k % 0x100000000) >> r  # k ^= k >>> r
        k &= 0xFFFFFFFF
        k *= m
        k &= 0xFFFFFFFF
        h *= m
        h &= 0xFFFFFFFF
        h ^= k
        h &= 0xFFFFFFFF
    # the last few bytes of the input
    extra_bytes = length % 4
    if extra_bytes >= 3:
        h ^= (data[(length & ~3) + 2] & 0xFF) << 16
        h &= 0xFFFFFFFF
    if extra_bytes >= 2:
        h ^= (data[(length & ~3) + 1] & 0xFF) << 8
        h &= 0xFFFFFFFF
    if extra_bytes >= 1:
        h ^= data[length & ~3] & 0xFF
        h &= 0xFFFFFFFF
        h *= m
        h &= 0xFFFFFFFF
    h ^= (h % 0x100000000) >> 13  # h >>> 13
    h &= 0xFFFFFFFF
    h *= m
    h &= 0xFFFFFFFF
    h ^= (h % 0x100000000) >> 15  # h >>> 15
    h &= 0xFFFFFFFF
    return h


def dlq_record_size(key: bytes | None, value: bytes | None, headers: Sequence[Any]) -> int:
    """An upper bound of a DLQ record's size as the producer counts it."""
    return (
        RECORD_FRAMING
        + len(key or b"")
        + len(value or b"")
        + sum(len(name) + len(data or b"") + 10 for name, data in headers)
    )
