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
from functools import partial
from typing import Any

from confluent_kafka import (
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import OffsetSpec

from streams.core.records import (
    DLQ_REFERENCE,
    KIND_OBJECTION,
    KIND_POST,
    SOURCE,
    SRC_OFFSET,
    SRC_PARTITION,
    SRC_TOPIC,
    check_user_id,
    dlq_record_size,
    pack_source,
    source_prefix,
)
from streams.kafka.connection import librdkafka_config
from streams.kafka.outputs import producer_config
from streams.kafka.registry import make_codec
from streams.kafka.topics import DataLossError, RenewingAdmin, asked_until_answered
from streams.serde.codec import (
    OBJECTION,
    POST,
    Codec,
    DecodeError,
    RegistryUnavailable,
    wait_for_registry,
)
from streams.settings import Settings

log = logging.getLogger("streams.rekey")

BATCH = 5000
# the packed source header of a forwarded record, at most (its topic name and key vary)
SOURCE_HEADER_BYTES = 2048
OBJECTIONS_WAIT_LOG = 5.0  # seconds between log lines while posts wait for objections
COMMIT_INTERVAL = 1.0  # seconds between flush-and-commit


def rekey_consumer_config(settings: Settings) -> dict[str, Any]:
    """The re-keying consumer: its own group, committing only what was delivered."""
    role = {
        "group.id": f"{settings.app_id}-rekey",
        "group.instance.id": f"{settings.instance_id}-rekey",
        "enable.auto.commit": False,
        # where a partition starts is set on assignment (``Rekeyer._start_positions``); a
        # position that retention deleted while the stage read is reported, not skipped
        "auto.offset.reset": "error",
        "isolation.level": "read_committed",
        "fetch.wait.max.ms": 10,
        "fetch.min.bytes": settings.fetch_min_bytes,
        # librdkafka fetches a partition again only once its local queue is below this;
        # at 20,000 the stage waited for input 60% of the time with a backlog (py-spy):
        # 100,000 took the worker from 46,000 to 74,000-78,000 posts/s (A/B). The queue
        # stays bounded by queued.max.messages.kbytes (64 MiB, librdkafka's default).
        "queued.min.messages": 100000,
        "partition.assignment.strategy": "cooperative-sticky",
        # a killed worker's input partitions wait this long before another stage reads
        # them: 30 s, or the gate's shorter --session-timeout
        "session.timeout.ms": min(30, settings.session_timeout_s) * 1000,
        "log_level": 3,
    }
    return librdkafka_config(settings, role)


# shared counters of the stage, read by the worker's /metrics
INPUT_POSTS, INPUT_OBJECTIONS, DLQ_POSTS, DLQ_OBJECTIONS = range(4)
SKIPPED_POSTS, SKIPPED_OBJECTIONS = range(4, 6)
# then the lag of each assigned input partition (posts, then objections; -1: not
# assigned here), written once per commit interval; partitions past LAG_PARTITIONS
# are not reported
LAG_BASE, LAG_PARTITIONS = 6, 1024


class RekeyStage:
    """The re-keying stage as seen from the worker: a child process to start, watch
    and stop, whose readiness and counters the worker reports."""

    def __init__(self, settings: Settings) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self.settings = settings
        self.stopping = ctx.Event()
        self.assigned = ctx.Event()
        # set while the stage waits for the schema registry (the worker is not ready)
        self.blocked = ctx.Event()
        self.registry_errors = ctx.Value("q", 0, lock=False)  # failed registry requests
        # written by the child only
        self.counts = ctx.Array("q", [0] * LAG_BASE + [-1] * (2 * LAG_PARTITIONS), lock=False)
        self.process = ctx.Process(
            target=run_stage,
            args=(
                settings,
                self.stopping,
                self.assigned,
                self.counts,
                self.blocked,
                self.registry_errors,
            ),
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

    def skipped(self) -> dict[str, int]:
        """Input records deleted by retention before they were forwarded, by topic."""
        s = self.settings
        return {
            s.posts_topic: self.counts[SKIPPED_POSTS],
            s.objections_topic: self.counts[SKIPPED_OBJECTIONS],
        }

    def lags(self) -> list[tuple[str, str, int, int]]:
        """(stage, topic, partition, lag) of each input partition assigned to the stage."""
        topics = (self.settings.posts_topic, self.settings.objections_topic)
        return [
            ("rekey", topics[i // LAG_PARTITIONS], i % LAG_PARTITIONS, lag)
            for i, lag in enumerate(self.counts[LAG_BASE:])
            if lag >= 0
        ]


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the worker that started it dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_stage(
    settings: Settings,
    stopping: Any,
    assigned: Any,
    counts: Any,
    blocked: Any,
    registry_errors: Any,
) -> None:
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
    codec = make_codec(settings, registry_errors)
    Rekeyer(settings, codec, stopping, assigned, counts, blocked).run()


class Rekeyer:
    """The re-keying loop (in the stage's process)."""

    def __init__(
        self,
        settings: Settings,
        codec: Codec,
        stopping: Any,
        assigned: Any,
        counts: Any,
        blocked: Any,
    ) -> None:
        self.settings = settings
        self.codec = codec
        self.stopping = stopping
        self.assigned = assigned
        self.blocked = blocked
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
        self._counted = [0] * 6  # this batch's counts, added to ``counts`` after it
        self._lag_slots: set[int] = set()  # the lag slots written last (_publish_lags)
        # per input (topic, partition): the offset after the last record forwarded or
        # sent to the DLQ, the only offsets ever committed
        self._done: dict[tuple[str, int], int] = {}
        self._admin = RenewingAdmin(settings)
        self._objection_partitions: list[int] | None = None
        self._partitions_expire = 0.0
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
        except (DataLossError, RegistryUnavailable) as exc:
            log.critical("%s", exc)
            logging.shutdown()
            os._exit(70)
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

        committed: dict[tuple[str, int], int] = {}  # what the last commits wrote

        def commit(partitions: list | None = None) -> None:
            # only what the broker has: the offsets after records forwarded (or sent to
            # the DLQ) and acknowledged, never a consumer position, which can be ahead
            # of records fetched but not yet forwarded
            if producer.flush(60) or self._failure:
                raise KafkaException(f"records not delivered: {self._failure or 'timeout'}")
            wanted = None if partitions is None else {(tp.topic, tp.partition) for tp in partitions}
            done = [
                TopicPartition(topic, partition, offset)
                for (topic, partition), offset in self._done.items()
                if (wanted is None or (topic, partition) in wanted)
                and committed.get((topic, partition)) != offset
            ]
            try:
                if done:
                    consumer.commit(offsets=done, asynchronous=False)
                    committed.update(((tp.topic, tp.partition), tp.offset) for tp in done)
            except KafkaException as exc:  # e.g. a rebalance
                log.warning("commit failed (%s); records may be forwarded again", exc)

        def on_assign(_consumer: Consumer, partitions: list) -> None:
            consumer.incremental_assign(self._start_positions(consumer, partitions))
            self.assigned.set()

        def on_revoke(_consumer: Consumer, revoked: list) -> None:
            commit(revoked)  # the next owner starts after what was forwarded
            for tp in revoked:
                self._done.pop((tp.topic, tp.partition), None)
                committed.pop((tp.topic, tp.partition), None)

        consumer.subscribe(s.input_topics, on_assign=on_assign, on_revoke=on_revoke)
        next_commit = time.monotonic() + COMMIT_INTERVAL
        clean = False
        try:
            while not self.stopping.is_set():
                # consume(n, timeout) waits for n records or the timeout: at low rates that
                # is pure latency. Wait for the first record only, then take what is there.
                # (A revocation served inside consume() commits what was handled so far,
                # and nothing else: ``_done``; records of the revoked partitions that come
                # with it, or came before it, are left to their next owner: ``_handle``.)
                first = consumer.poll(0.1)
                if first is not None:
                    batch = [first, *consumer.consume(BATCH - 1, timeout=0)]
                    posts = self._objections_first(consumer, batch, producer, internal, commit)
                    if posts and self._await_objections(
                        consumer, posts, producer, internal, commit
                    ):
                        for msg in posts:
                            self._handle(consumer, msg, producer, internal)
                    producer.poll(0)
                    self._publish_counts()
                if self._failure:
                    raise KafkaException(f"records not delivered: {self._failure}")
                if time.monotonic() >= next_commit:
                    commit()
                    self._publish_lags(consumer)
                    next_commit = time.monotonic() + COMMIT_INTERVAL
            commit()  # a clean stop: a restart does not forward the last interval again
            clean = True
        finally:
            if not clean:
                producer.flush(30)
            consumer.close()

    # -- objections before posts ----------------------------------------------------
    # Posts and objections are separate topics, and their partitions are read by the
    # re-keying stages of several workers: an objection acknowledged before a post was
    # produced could reach the gate after it (a slow or restarting stage, a killed
    # worker whose partitions wait for its session to time out), and the post would be
    # published, then retracted. A post is therefore forwarded only once every
    # objection acknowledged before it was read has been forwarded: once, for every
    # objections partition, what has been forwarded and acknowledged (by this stage,
    # or committed by whichever stage owns the partition) reaches the partition's last
    # stable offset as listed after the post was read. Both then land, in that order,
    # on the user's internal partition. Stages commit objections as soon as they are
    # forwarded, so that others see them at once.

    def _objections_first(
        self, consumer: Consumer, batch: list, producer: Producer, internal: str, commit: Any
    ) -> list:
        """Handle the batch's objection records (and consumer errors); return its posts.
        Forwarded objections are flushed and committed at once."""
        posts, objections = [], False
        for msg in batch:
            if msg.error() is None and msg.topic() == self.settings.posts_topic:
                posts.append(msg)
            else:
                self._handle(consumer, msg, producer, internal)
                objections = objections or msg.error() is None
        if objections:
            topic = self.settings.objections_topic
            commit([TopicPartition(t, p) for t, p in self._done if t == topic])
        return posts

    def _await_objections(
        self, consumer: Consumer, posts: list, producer: Producer, internal: str, commit: Any
    ) -> bool:
        """Wait until every objection acknowledged before ``posts`` were read is
        forwarded (see above); meanwhile forward objections and hold the posts (their
        partitions paused; records of them still delivered are added to ``posts``).
        False when the stage is stopping first (the posts are then not forwarded, and
        not committed)."""
        paused: list = []
        waited = time.monotonic()
        try:
            while True:
                behind = self._objections_behind(consumer)
                if not behind:
                    return True
                if self.stopping.is_set():
                    return False
                if not paused:
                    topic = self.settings.posts_topic
                    paused = [tp for tp in consumer.assignment() if tp.topic == topic]
                    if paused:
                        consumer.pause(paused)
                if time.monotonic() - waited > OBJECTIONS_WAIT_LOG:
                    log.info("posts wait for objections partitions %s to be forwarded", behind)
                    waited = time.monotonic()
                batch = consumer.consume(BATCH, timeout=0.05)
                posts += self._objections_first(consumer, batch, producer, internal, commit)
        finally:
            if paused:
                consumer.resume(paused)

    def _objections_behind(self, consumer: Consumer) -> list[int]:
        """The objections partitions whose acknowledged records are not yet all
        forwarded (as of now); all of them while the broker cannot say (a leader
        moving, a timeout): the posts wait and it is asked again."""
        try:
            return self._objections_behind_now(consumer)
        except (KafkaException, TimeoutError) as exc:
            log.warning("cannot tell how far objections are forwarded (%s); asking again", exc)
            self._admin.renew_if_stale(exc)  # librdkafka#4620 (topics.STALE_METADATA)
            return self._objection_partitions or [-1]

    def _objections_behind_now(self, consumer: Consumer) -> list[int]:
        topic = self.settings.objections_topic
        if self._objection_partitions is None or time.monotonic() > self._partitions_expire:
            md = consumer.list_topics(topic, timeout=30).topics[topic]
            self._objection_partitions = sorted(md.partitions)
            self._partitions_expire = time.monotonic() + 30.0
        tps = [TopicPartition(topic, p) for p in self._objection_partitions]
        stable = {
            tp.partition: future.result(timeout=30).offset
            for tp, future in self._admin.client.list_offsets(
                {tp: OffsetSpec.latest() for tp in tps},
                isolation_level=IsolationLevel.READ_COMMITTED,
                request_timeout=30,
            ).items()
        }
        forwarded = {p: o for (t, p), o in self._done.items() if t == topic}
        others = [tp for tp in tps if tp.partition not in forwarded]
        if others:  # partitions of other stages: what they committed
            for tp in consumer.committed(others, timeout=30):
                forwarded[tp.partition] = tp.offset
        return [p for p, end in stable.items() if forwarded.get(p, -1) < end]

    def _handle(self, consumer: Consumer, msg: Message, producer: Producer, internal: str) -> None:
        """Forward one consumed record, or act on a consumer error. A record (or an
        offset error) of a partition no longer assigned here is left to the partition's
        next owner, which resumes where the revocation committed: a revocation served
        inside ``consume()`` comes after records that ``poll`` or that same call
        returned, or that wait for objections (``_await_objections``). Forwarding them
        would put the partition back in ``_done``: a commit by a stage that does not own
        it (moving its owner's offset back), and for an objections partition a stale
        offset taken for how far it is forwarded (posts held for good)."""
        error = msg.error()
        if error is not None and error.code() != KafkaError._AUTO_OFFSET_RESET:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", error.str())
            return
        key = (msg.topic(), msg.partition())
        done = self._done.get(key)  # set for each partition assigned (_start_positions)
        if done is None:
            return
        if error is None:
            self._forward(msg, producer, internal)
            self._done[key] = msg.offset() + 1
            return
        # the next record to read was deleted by retention while the stage read
        tp = TopicPartition(*key)
        low, _ = asked_until_answered(
            lambda: consumer.get_watermark_offsets(tp, timeout=30), "earliest offset"
        )
        tp.offset = self._skip_gap(tp.topic, tp.partition, max(done, 0), low)
        consumer.seek(tp)

    def _start_positions(self, consumer: Consumer, partitions: list) -> list:
        """Where newly assigned input partitions start: the committed offset, or the
        beginning for a partition never committed; a committed offset that retention
        has deleted past is a gap (``_skip_gap``)."""
        # asked again while leaders move (a broker restarting): an error raised here
        # comes out of consume() and would stop the stage and the worker
        positions = []
        committed = asked_until_answered(
            lambda: consumer.committed(partitions, timeout=30), "committed offsets"
        )
        for tp in committed:
            low, _ = asked_until_answered(
                partial(consumer.get_watermark_offsets, tp, timeout=30), "earliest offset"
            )
            if tp.offset < 0:  # never committed: from the beginning
                tp.offset = low
            elif tp.offset < low:
                tp.offset = self._skip_gap(tp.topic, tp.partition, tp.offset, low)
            positions.append(tp)
            # committed from now on even before a record comes: a later gap is then seen
            self._done[(tp.topic, tp.partition)] = tp.offset
        return positions

    def _skip_gap(self, topic: str, partition: int, lost_from: int, earliest: int) -> int:
        """Records ``lost_from`` to ``earliest - 1`` were deleted by retention before they
        were forwarded. Skipping posts is safe (none is published), and is counted; a
        skipped objection event could be a leak, so the stage stops unless the operator
        accepted data loss (``--accept-data-loss``). Returns where to resume."""
        if lost_from >= earliest:
            return lost_from
        lost = earliest - lost_from
        where = f"{topic}[{partition}] offsets {lost_from} to {earliest - 1} ({lost} records)"
        if topic == self.settings.objections_topic and not self.settings.accept_data_loss:
            raise DataLossError(
                f"{where} were deleted by retention before they were processed; "
                "objection events may be lost: stopping (run with --accept-data-loss to "
                "skip them)"
            )
        log.error("%s were deleted by retention before they were processed; skipped", where)
        slot = SKIPPED_POSTS if topic == self.settings.posts_topic else SKIPPED_OBJECTIONS
        self.counts[slot] += lost
        return earliest

    def _forward(self, msg: Message, producer: Producer, internal: str) -> None:
        topic, value = msg.topic(), msg.value()
        expected, kind, slot = self._kinds[topic]
        try:
            if value is None:
                raise DecodeError("null value")
            # only as far as the user id: the gate decodes and checks the whole record
            # (and sends it to the DLQ with the input's key and headers, which it gets
            # from the internal record's headers)
            try:
                user_id = self.codec.user_id_of(value, expected)
            except RegistryUnavailable as exc:  # the record may be valid: not to the DLQ
                user_id = self._wait_for_registry(msg, value, expected, exc)
            check_user_id(user_id, expected)
        except DecodeError as exc:
            self._dlq(msg, producer, str(exc))
            return
        except RegistryUnavailable:
            raise  # it stayed away: the stage stops, nothing committed past this record
        except Exception as exc:  # never let one record stop the worker
            self._dlq(msg, producer, f"cannot read record: {type(exc).__name__}")
            return
        own: Any = msg.headers()  # a list of (name, bytes) pairs or None
        size = dlq_record_size(user_id.encode(), value, own or ())
        if size > self.settings.max_record_bytes - SOURCE_HEADER_BYTES:
            self._dlq(msg, producer, f"record too large: {size} bytes")
            return
        self._counted[slot] += 1
        partition = msg.partition()
        prefix = self._source_prefixes.get((topic, partition))
        if prefix is None:
            prefix = self._source_prefixes[(topic, partition)] = source_prefix(
                kind, topic, partition
            )
        header = (SOURCE, pack_source(prefix, msg.offset(), msg.key()))
        # the input's own headers first, ours last (records.forwarded)
        headers = [*own, header] if own else [header]
        _, timestamp = msg.timestamp()
        # the key is the user: the producer's murmur2 partitioner picks its partition
        self._produce(producer, internal, value, user_id.encode(), headers, timestamp)

    def _wait_for_registry(
        self, msg: Message, value: bytes, expected: str, first: RegistryUnavailable
    ) -> Any:
        """``codec.user_id_of`` of a record whose schema the registry could not be asked
        about: asked again and again (``wait_for_registry``), the worker not ready
        meanwhile (``blocked``). Raises ``RegistryUnavailable`` after
        ``--registry-timeout``, or when the stage is stopped meanwhile: the stage then
        stops, and since only offsets of records handled are committed (``_done``), a
        restart reads this record again."""
        where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
        timeout = self.settings.registry_timeout
        log.warning("%s: %s; waiting up to %g s, not ready meanwhile", where, first, timeout)

        def waiting(exc: RegistryUnavailable, wait: float) -> None:
            log.warning("%s: %s; asking again in %.0f s", where, exc, wait)

        self.blocked.set()
        try:
            user_id = wait_for_registry(
                lambda: self.codec.user_id_of(value, expected),
                timeout,
                waiting,
                self.stopping.is_set,
            )
        except RegistryUnavailable as exc:
            if self.stopping.is_set():
                raise RegistryUnavailable(f"{where}: stopped while waiting: {exc}") from None
            raise RegistryUnavailable(
                f"{where}: no answer for --registry-timeout {timeout:g} s: {exc}"
            ) from None
        finally:
            self.blocked.clear()
        log.info("%s: the schema registry answers again", where)
        return user_id

    def _publish_lags(self, consumer: Consumer) -> None:
        """Write each assigned input partition's lag for the worker's /metrics: the high
        watermark of librdkafka's last fetch (cached: no request) minus the next offset
        to forward (``_done``)."""
        if len(self.counts) < LAG_BASE + 2 * LAG_PARTITIONS:
            return
        slots = {}
        for (topic, partition), done in self._done.items():
            if partition < LAG_PARTITIONS:
                i = 0 if topic == self.settings.posts_topic else 1
                _, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True
                )
                if high >= 0:
                    slots[LAG_BASE + i * LAG_PARTITIONS + partition] = max(0, high - done)
        for slot in self._lag_slots - slots.keys():
            self.counts[slot] = -1
        for slot, lag in slots.items():
            self.counts[slot] = lag
        self._lag_slots = set(slots)

    def _publish_counts(self) -> None:
        """Add this batch's counts to the counters the worker reads."""
        for slot, n in enumerate(self._counted):
            if n:
                self.counts[slot] += n
                self._counted[slot] = 0

    def _dlq(self, msg: Message, producer: Producer, reason: str) -> None:
        self._counted[self._dlq_slot[msg.topic()]] += 1
        log.warning("DLQ %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(), reason)
        error = ("error", reason.encode("utf-8", "replace"))
        source = [
            (SRC_TOPIC, msg.topic().encode()),
            (SRC_PARTITION, str(msg.partition()).encode()),
            (SRC_OFFSET, str(msg.offset()).encode()),
        ]
        key, value, headers = msg.key(), msg.value(), [*(msg.headers() or []), error, *source]
        size = dlq_record_size(key, value, headers)
        if size > self.settings.max_record_bytes:  # a reference to the input instead
            key, value, headers = None, None, [error, *source, (DLQ_REFERENCE, str(size).encode())]
        self._produce(producer, self.settings.dlq_topic, value, key, headers, None)

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
