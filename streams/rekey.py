"""The re-keying stage: inputs partitioned any way -> the internal topic keyed by user.

It reads ``posts`` and ``objections`` (any partitioner, any partition count), reads
each record's value as far as its ``user_id``, and forwards its unchanged bytes to the
internal topic on the partition of that user (murmur2, the worker's partition count),
with the input's own headers, then its kind, coordinates and key in one header of ours
(``records.SOURCE``). A record whose user cannot be read goes to the DLQ with a reason
here; one that is damaged further on, from the gate, which decodes the whole record
anyway.

It runs on confluent-kafka (librdkafka) in a child process of the worker (its own
interpreter, so it does not compete with the gate for the GIL and can use a second
core). It forwards records as they come (librdkafka batches them, ``linger.ms``) and
commits every ``COMMIT_INTERVAL``: wait until the broker has every forwarded record
(``flush``), then commit the positions consumed so far. A crash re-forwards at most the
last interval (at-least-once; the gate is idempotent per post and per event). A record
that cannot be delivered stops the stage before its offset is committed, and the worker
stops with it; the stage dies with the worker (``PR_SET_PDEATHSIG``).

Committing per interval rather than per consumed batch matters on a shared broker: at
2,000 posts/s a flush and a synchronous commit per batch were hundreds of small
requests a second, and the broker's CPU for them showed in every hop's latency.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import time
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from .codec import OBJECTION, POST, Codec, DecodeError
from .outputs import producer_config
from .records import (
    KIND_OBJECTION,
    KIND_POST,
    SOURCE,
    SRC_OFFSET,
    SRC_PARTITION,
    SRC_TOPIC,
    check_user_id,
    pack_source,
    source_prefix,
)
from .settings import Settings

log = logging.getLogger("streams.rekey")

BATCH = 5000
COMMIT_INTERVAL = 1.0  # seconds between flush-and-commit


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
        "fetch.min.bytes": settings.fetch_min_bytes,
        # librdkafka fetches a partition again only once its local queue is below this;
        # at 20,000 the stage waited for input 60% of the time with a backlog (py-spy):
        # 100,000 took the worker from 46,000 to 74,000-78,000 posts/s (A/B). The queue
        # stays bounded by queued.max.messages.kbytes (64 MiB, librdkafka's default).
        "queued.min.messages": 100000,
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": 30000,
        "log_level": 3,
    }


# shared counters of the stage, read by the worker's /metrics
INPUT_POSTS, INPUT_OBJECTIONS, DLQ_POSTS, DLQ_OBJECTIONS = range(4)


class RekeyStage:
    """The re-keying stage as seen from the worker: a child process to start, watch
    and stop, whose readiness and counters the worker reports."""

    def __init__(self, settings: Settings) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self.settings = settings
        self.stopping = ctx.Event()
        self.assigned = ctx.Event()
        self.counts = ctx.Array("q", 4, lock=False)  # written by the child only
        self.process = ctx.Process(
            target=run_stage,
            args=(settings, self.stopping, self.assigned, self.counts),
            name="enforcer-rekey",
            daemon=True,
        )

    def start(self) -> None:
        """Start the child process."""
        self.process.start()

    def is_alive(self) -> bool:
        """Whether the child process runs."""
        return self.process.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the stage to finish its batch and stop; kill it after ``timeout``."""
        self.stopping.set()
        if self.process.pid is None:
            return
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)

    def inputs(self) -> dict[str, int]:
        """Input records forwarded, by kind."""
        return {"post": self.counts[INPUT_POSTS], "objection": self.counts[INPUT_OBJECTIONS]}

    def dlq(self) -> dict[str, int]:
        """Input records sent to the DLQ, by source topic."""
        s = self.settings
        return {
            s.posts_topic: self.counts[DLQ_POSTS],
            s.objections_topic: self.counts[DLQ_OBJECTIONS],
        }


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the worker that started it dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_stage(settings: Settings, stopping: Any, assigned: Any, counts: Any) -> None:
    """The child process: log like the worker, then run the loop until stopped."""
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # the worker died before the line above
        os._exit(70)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    level = settings.log_level.upper()
    logging.basicConfig(
        level=logging.DEBUG if level == "DEBUG" else getattr(logging, level, logging.INFO),
        format="[%(asctime)s] [%(process)s] [%(levelname)s] [rekey] %(message)s",
        stream=sys.stderr,
    )
    from .cli import make_codec

    Rekeyer(settings, make_codec(settings), stopping, assigned, counts).run()


class Rekeyer:
    """The re-keying loop (in the stage's process)."""

    def __init__(
        self, settings: Settings, codec: Codec, stopping: Any, assigned: Any, counts: Any
    ) -> None:
        self.settings = settings
        self.codec = codec
        self.stopping = stopping
        self.assigned = assigned
        self.counts = counts
        # per input topic: record name, kind, counter slot
        self._kinds = {
            topic: (name, kind, slot)
            for topic, name, kind, slot in (
                (settings.posts_topic, POST, KIND_POST, INPUT_POSTS),
                (settings.objections_topic, OBJECTION, KIND_OBJECTION, INPUT_OBJECTIONS),
            )
        }
        # per input (topic, partition): the start of its SOURCE header (source_prefix)
        self._source_prefixes: dict[tuple[str, int], tuple[bytes, bytes, bytes]] = {}
        self._counted = [0, 0, 0, 0]  # this batch's counts, added to ``counts`` after it
        self._dlq_slot = {
            settings.posts_topic: DLQ_POSTS,
            settings.objections_topic: DLQ_OBJECTIONS,
        }
        self._failure: str | None = None

    def run(self) -> None:
        """Consume and forward until stopped, flushing and committing every
        ``COMMIT_INTERVAL``. Any failure ends the process with exit code 70 (the worker
        sees it and stops too)."""
        try:
            self._loop()
        except Exception:
            log.critical("the re-keying stage failed; exiting", exc_info=True)
            logging.shutdown()
            os._exit(70)

    def _loop(self) -> None:
        s = self.settings
        consumer = Consumer(rekey_consumer_config(s))

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None and self._failure is None:
                self._failure = err.str()

        # librdkafka's "murmur2" partitioner is Java's default, the same function as
        # records.partition_for_user (which replay requests use), computed in C.
        # Delivery reports only for failures: success needs no Python call per record
        # (flush still waits for every record).
        producer = Producer(
            {
                **producer_config(s),
                "partitioner": "murmur2",
                "on_delivery": delivered,
                "delivery.report.only.error": True,
            }
        )
        internal = s.user_events_topic

        def commit(partitions: list | None = None) -> None:
            # only what the broker has: every record consumed so far was forwarded
            if producer.flush(60) or self._failure:
                raise KafkaException(f"records not delivered: {self._failure or 'timeout'}")
            try:
                if partitions is None:
                    consumer.commit(asynchronous=False)
                else:
                    known = [tp for tp in consumer.position(partitions) if tp.offset >= 0]
                    if known:
                        consumer.commit(offsets=known, asynchronous=False)
            except KafkaException as exc:  # e.g. nothing consumed yet, or a rebalance
                if exc.args[0].code() != KafkaError._NO_OFFSET:
                    log.warning("commit failed (%s); records may be forwarded again", exc)

        def on_revoke(_consumer: Consumer, revoked: list) -> None:
            commit(revoked)  # the next owner starts after what was forwarded

        consumer.subscribe(
            s.input_topics, on_assign=lambda c, ps: self.assigned.set(), on_revoke=on_revoke
        )
        next_commit = time.monotonic() + COMMIT_INTERVAL
        clean = False
        try:
            while not self.stopping.is_set():
                # consume(n, timeout) waits for n records or the timeout: at low rates that
                # is pure latency. Wait for the first record only, then take what is there.
                first = consumer.poll(0.1)
                if first is not None:
                    for msg in (first, *consumer.consume(BATCH - 1, timeout=0)):
                        if msg.error():
                            if msg.error().code() != KafkaError._PARTITION_EOF:
                                log.warning("consumer error: %s", msg.error().str())
                            continue
                        self._forward(msg, producer, internal)
                    producer.poll(0)
                    self._publish_counts()
                if self._failure:
                    raise KafkaException(f"records not delivered: {self._failure}")
                if time.monotonic() >= next_commit:
                    commit()
                    next_commit = time.monotonic() + COMMIT_INTERVAL
            commit()  # a clean stop: a restart does not forward the last interval again
            clean = True
        finally:
            if not clean:
                producer.flush(30)
            consumer.close()

    def _forward(self, msg: Message, producer: Producer, internal: str) -> None:
        topic, value = msg.topic(), msg.value()
        expected, kind, slot = self._kinds[topic]
        try:
            if value is None:
                raise DecodeError("null value")
            # only as far as the user id: the gate decodes and checks the whole record
            # (and sends it to the DLQ with the input's key and headers, which it gets
            # from the internal record's headers)
            user_id = self.codec.user_id_of(value, expected)
            check_user_id(user_id, expected)
        except DecodeError as exc:
            self._dlq(msg, producer, str(exc))
            return
        except Exception as exc:  # never let one record stop the worker
            self._dlq(msg, producer, f"cannot read record: {type(exc).__name__}")
            return
        self._counted[slot] += 1
        partition = msg.partition()
        prefix = self._source_prefixes.get((topic, partition))
        if prefix is None:
            prefix = self._source_prefixes[(topic, partition)] = source_prefix(
                kind, topic, partition
            )
        header = (SOURCE, pack_source(prefix, msg.offset(), msg.key()))
        own = msg.headers()
        # the input's own headers first, ours last (records.forwarded)
        headers = [*own, header] if own else [header]
        _, timestamp = msg.timestamp()
        # the key is the user: the producer's murmur2 partitioner picks its partition
        self._produce(producer, internal, value, user_id.encode(), headers, timestamp)

    def _publish_counts(self) -> None:
        """Add this batch's counts to the counters the worker reads."""
        for slot, n in enumerate(self._counted):
            if n:
                self.counts[slot] += n
                self._counted[slot] = 0

    def _dlq(self, msg: Message, producer: Producer, reason: str) -> None:
        self._counted[self._dlq_slot[msg.topic()]] += 1
        log.warning("DLQ %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(), reason)
        headers = [
            *(msg.headers() or []),
            ("error", reason.encode("utf-8", "replace")),
            (SRC_TOPIC, msg.topic().encode()),
            (SRC_PARTITION, str(msg.partition()).encode()),
            (SRC_OFFSET, str(msg.offset()).encode()),
        ]
        self._produce(producer, self.settings.dlq_topic, msg.value(), msg.key(), headers, None)

    @staticmethod
    def _produce(
        producer: Producer,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: list,
        timestamp: int | None,
    ) -> None:
        while True:
            try:
                if timestamp and timestamp > 0:
                    producer.produce(topic, value, key, headers=headers, timestamp=timestamp)
                else:
                    producer.produce(topic, value, key, headers=headers)
                return
            except BufferError:
                producer.poll(0.05)
