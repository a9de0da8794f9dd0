"""The dead-letter record of an internal record the gate cannot decide: the contract's
headers, and a reference instead of the record when it would be over the producer's
record limit. Formatting only: ``gate/emit.py`` counts and writes it."""

from __future__ import annotations

from typing import Any

from streams.core.records import (
    DLQ_REFERENCE,
    SRC_OFFSET,
    SRC_PARTITION,
    SRC_TOPIC,
    dlq_record_size,
    forwarded,
)


def dlq_record(message: Any, reason: str, max_record_bytes: int) -> tuple[str, Any, Any, list[Any]]:
    """``(input topic, key, value, headers)`` of ``message``'s DLQ record: an input
    forwarded by the re-keying stage goes with its own key, bytes and headers; another
    internal record (a replay request) with where it was read."""
    src = forwarded(message.headers)
    if src is not None:  # an input: its own key, headers and coordinates
        own, _, topic, partition, offset, key = src
        source = [
            (SRC_TOPIC, topic.encode()),
            (SRC_PARTITION, str(partition).encode()),
            (SRC_OFFSET, str(offset).encode()),
        ]
    else:  # another internal record (a replay request): where it was read
        received, own, key = dict(message.headers or ()), (), message.key
        source = [
            (SRC_TOPIC, received.get(SRC_TOPIC, message.topic.encode())),
            (SRC_PARTITION, received.get(SRC_PARTITION, str(message.partition).encode())),
            (SRC_OFFSET, received.get(SRC_OFFSET, str(message.offset).encode())),
        ]
    error = ("error", reason.encode("utf-8", "replace"))
    value, headers = message.value, [*own, error, *source]
    size = dlq_record_size(key, value, headers)
    if size > max_record_bytes:
        key, value, headers = None, None, [error, *source, (DLQ_REFERENCE, str(size).encode())]
    return source[0][1].decode("utf-8", "replace"), key, value, headers
