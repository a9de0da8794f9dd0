"""The re-keying stage: inputs partitioned any way -> the internal topic keyed by user.

It reads ``posts`` and ``objections`` (any partitioner, any partition count), checks
each record, and forwards its unchanged bytes to the internal topic on the partition
of the ``user_id`` in its value (murmur2, the worker's partition count), with the
original coordinates in headers; anything unreadable goes to the DLQ with a reason.

It runs on confluent-kafka (librdkafka) in its own thread, in batches: consume a
batch, produce it, wait until the broker has every record (``flush``), then commit
the batch's offsets. A crash re-forwards at most the last batch (at-least-once; the
gate is idempotent per post and per event). A record that cannot be delivered stops
the process before its offset is committed.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from .codec import OBJECTION, POST, Codec, DecodeError
from .metrics import Metrics
from .outputs import producer_config
from .records import (
    KIND,
    KIND_OBJECTION,
    KIND_POST,
    SRC_OFFSET,
    SRC_PARTITION,
    SRC_TOPIC,
    check_objection,
    check_post,
    partition_for_user,
)
from .settings import Settings

log = logging.getLogger("streams.rekey")

BATCH = 5000


def rekey_consumer_config(settings: Settings) -> dict[str, Any]:
    """The re-keying consumer: its own group, committing only what was delivered."""
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "group.id": f"{settings.app_id}-rekey",
        "group.instance.id": f"{settings.instance_id}-rekey",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "fetch.wait.max.ms": 10,
        "queued.min.messages": 20000,
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": 30000,
        "log_level": 3,
    }


class Rekeyer(threading.Thread):
    """The re-keying loop, in a thread of the worker process."""

    def __init__(self, settings: Settings, codec: Codec, metrics: Metrics) -> None:
        super().__init__(name="rekey", daemon=True)
        self.settings = settings
        self.codec = codec
        self.metrics = metrics
        self.stopping = threading.Event()
        self.assigned = threading.Event()
        self._kinds = {
            settings.posts_topic: (POST, KIND_POST, check_post),
            settings.objections_topic: (OBJECTION, KIND_OBJECTION, check_objection),
        }
        self._failure: str | None = None

    def run(self) -> None:
        """Consume, forward, flush, commit; until stopped."""
        try:
            self._loop()
        except Exception:
            log.critical("the re-keying stage failed; exiting", exc_info=True)
            logging.shutdown()
            os._exit(70)

    def _loop(self) -> None:
        s = self.settings
        consumer = Consumer(rekey_consumer_config(s))
        producer = Producer(producer_config(s))
        consumer.subscribe(s.input_topics, on_assign=lambda c, ps: self.assigned.set())
        internal, partitions = s.user_events_topic, s.partitions

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None and self._failure is None:
                self._failure = err.str()

        try:
            while not self.stopping.is_set():
                # consume(n, timeout) waits for n records or the timeout: at low rates that
                # is pure latency. Wait for the first record only, then take what is there.
                first = consumer.poll(0.1)
                if first is None:
                    continue
                batch = [first, *consumer.consume(BATCH - 1, timeout=0)]
                for msg in batch:
                    if msg.error():
                        if msg.error().code() != KafkaError._PARTITION_EOF:
                            log.warning("consumer error: %s", msg.error().str())
                        continue
                    self._forward(msg, producer, internal, partitions, delivered)
                if producer.flush(60) or self._failure:
                    raise KafkaException(f"records not delivered: {self._failure or 'timeout'}")
                try:
                    consumer.commit(asynchronous=False)
                except KafkaException as exc:  # e.g. a rebalance: the batch is re-forwarded
                    log.warning("commit failed (%s); records may be forwarded again", exc)
        finally:
            producer.flush(30)
            consumer.close()

    def _forward(
        self, msg: Message, producer: Producer, internal: str, partitions: int, delivered: Any
    ) -> None:
        topic, value = msg.topic(), msg.value()
        source = [
            (SRC_TOPIC, topic.encode()),
            (SRC_PARTITION, str(msg.partition()).encode()),
            (SRC_OFFSET, str(msg.offset()).encode()),
        ]
        expected, kind, check = self._kinds[topic]
        try:
            if value is None:
                raise DecodeError("null value")
            _, datum = self.codec.decode(value, expected)
            check(datum)
        except DecodeError as exc:
            self._dlq(msg, producer, str(exc), source, delivered)
            return
        except Exception as exc:  # never let one record stop the worker
            self._dlq(msg, producer, f"cannot read record: {type(exc).__name__}", source, delivered)
            return
        self.metrics.inputs[kind.decode()] += 1
        key = datum["user_id"].encode("utf-8")
        _, timestamp = msg.timestamp()
        self._produce(
            producer,
            internal,
            value,
            key,
            partition_for_user(key, partitions),
            [(KIND, kind), *source],
            delivered,
            timestamp,
        )

    def _dlq(
        self, msg: Message, producer: Producer, reason: str, source: list, delivered: Any
    ) -> None:
        self.metrics.dlq[msg.topic()] += 1
        log.warning("DLQ %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(), reason)
        error = ("error", reason.encode("utf-8", "replace"))
        headers = [*(msg.headers() or []), error, *source]
        self._produce(
            producer,
            self.settings.dlq_topic,
            msg.value(),
            msg.key(),
            None,
            headers,
            delivered,
            None,
        )

    @staticmethod
    def _produce(
        producer: Producer,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int | None,
        headers: list,
        delivered: Any,
        timestamp: int | None,
    ) -> None:
        kwargs: dict[str, Any] = {"headers": headers, "on_delivery": delivered}
        if partition is not None:
            kwargs["partition"] = partition
        if timestamp and timestamp > 0:
            kwargs["timestamp"] = timestamp
        while True:
            try:
                producer.produce(topic, value, key, **kwargs)
                return
            except BufferError:
                producer.poll(0.05)
