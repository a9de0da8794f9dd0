"""Every record the gate writes goes through one confluent-kafka (librdkafka) producer.

aiokafka's producer costs tens of microseconds a record in Python; librdkafka
batches in C. Faust owns consuming, assignment and table recovery; the gate commits
its input offsets itself, and flushes this producer first, so no input offset is
committed before its outputs are on the broker (at-least-once; ``app.wire_offsets``).

A record the broker refuses after every retry stops the process before the next
commit, so that the input is processed again after restart.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from .settings import Settings

log = logging.getLogger("streams.outputs")


def producer_config(settings: Settings) -> dict[str, Any]:
    """Every producer of the worker (outputs and re-keying): idempotent, acknowledged by
    all replicas, lightly batched, uncompressed (the gate's aiokafka consumer reads the
    internal topic without extra codec libraries)."""
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": settings.linger_ms,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 500000,
        "queue.buffering.max.kbytes": 262144,
        "compression.type": "none",
        # records are checked against this before anything is produced (agents, rekey)
        "message.max.bytes": settings.max_record_bytes,
        "log_level": 3,
    }


class OutputProducer:
    """The gate's producer: synchronous ``produce``, ``flush`` before commits."""

    def __init__(self, settings: Settings) -> None:
        # one delivery callback for the producer rather than one object per record
        self.producer = Producer({**producer_config(settings), "on_delivery": self._delivered})
        # librdkafka's produce, positional (topic, value, key[, partition]); it raises
        # BufferError when its queue is full (then: produce_when_room)
        self.raw_produce = self.producer.produce
        self.changelog_offsets: dict[tuple[str, int], int] = {}
        # (topic, partition) -> [first, last, count] of the offsets this producer wrote
        # since the table last persisted its offset (TableState.persist_offsets): a run
        # that is not contiguous from the persisted offset has records of another writer
        self.changelog_runs: dict[tuple[str, int], list[int]] = {}
        self._changelogs: set[str] = set()

    def track_changelog(self, topic: str) -> None:
        """Remember the highest delivered offset of this topic's partitions."""
        self._changelogs.add(topic)

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            log.critical(
                "could not deliver a record to %s (%s); exiting so that the input "
                "is processed again",
                msg.topic(),
                err.str(),
            )
            logging.shutdown()
            os._exit(70)
        topic = msg.topic()
        if topic in self._changelogs:
            key = (topic, msg.partition())
            offset = msg.offset()
            if offset > self.changelog_offsets.get(key, -1):
                self.changelog_offsets[key] = offset
            run = self.changelog_runs.get(key)
            if run is None:
                self.changelog_runs[key] = [offset, offset, 1]
            else:
                run[0] = min(run[0], offset)
                run[1] = max(run[1], offset)
                run[2] += 1

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: list | None = None,
    ) -> None:
        """Queue one record (blocks briefly only when librdkafka's queue is full)."""
        try:
            # positional arguments: a keyword one (headers=) costs confluent-kafka about
            # a microsecond more per record
            if headers is not None:
                self.producer.produce(
                    topic, value, key, -1 if partition is None else partition, headers=headers
                )
            elif partition is None:
                self.producer.produce(topic, value, key)
            else:
                self.producer.produce(topic, value, key, partition)
        except BufferError:
            self.produce_when_room(topic, key, value, partition, headers)

    def produce_when_room(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        headers: list | None,
    ) -> None:
        """``produce`` for a full queue: serve delivery reports until there is room."""
        while True:
            self.producer.poll(0.05)
            try:
                self.producer.produce(
                    topic, value, key, -1 if partition is None else partition, headers=headers
                )
                return
            except BufferError:
                continue

    def poll(self) -> None:
        """Serve delivery reports."""
        self.producer.poll(0)

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until the broker has every queued record; exit if it cannot."""
        remaining = self.producer.flush(timeout)
        if remaining:
            log.critical("%d records not delivered within %.0fs; exiting", remaining, timeout)
            logging.shutdown()
            os._exit(70)
