"""The enforcer's job written as a Quix Streams expert would: the benchmark's Quix peer.

    python -m bench.peer_quix --bootstrap-servers HOST:PORT --app-id ID \\
        --posts-topic T --objections-topic T --training-topic T --retractions-topic T \\
        --decisions-topic T --dlq-topic T [--receipts-topic T] --state-dir DIR \\
        [--partitions 8] [--processes 1] [--commit-interval 1.0] [--web-port PORT]

Same semantics and outputs as the enforcer, on its pure modules (codec, records,
consent, enforcement, policy); the stream processing is Quix's. Two stages, as many
processes as the enforcer runs (a worker and its re-keying child):

1. **Re-keying** (a child process; Quix's Kafka clients, ``quixstreams.kafka``): reads
   ``posts`` and ``objections`` as raw bytes, reads each value only as far as its
   ``user_id`` and forwards its bytes unchanged to ONE internal topic keyed by user
   (``repartition__<app-id>--by-user``, murmur2, ``--partitions``), with the input's
   headers and then its kind, source and key in one header, the enforcer's
   (``records.SOURCE``): the internal records are the enforcer's. No ``concat`` and its
   timestamp-aligned buffering: the order the gate needs is the enforcer's, by offsets:
   a batch of posts is forwarded only once every objection on the inputs when it was
   read has been forwarded. A record whose user cannot be read goes to the DLQ here, as
   the enforcer's re-keying sends it.
2. **The gate** (the main process; a Quix ``Application``, one ``StreamingDataFrame``
   over the internal topic, ``--processes`` of them in one consumer group): decodes
   once, decides with the enforcer's rules and writes through ``to_topic``. State is
   RocksDB with changelog topics, raw bytes through ``get_bytes``/``set_bytes``: one
   value per user, their consent (``consent.encode_state``) and live posts
   (length-prefixed ids and platforms), so one read per record. A current-schema
   post is scanned, not decoded, and its TrainingRecord and Decision spliced from its
   bytes by the enforcer's codec; other records are decoded and encoded by it.

Byte for byte the enforcer's TrainingRecord, Decision, Retraction and ConsentReceipt
encodings (``decided_at`` and other clock fields aside); dead letters with its headers.
Output records carry their input's timestamp (Quix's default). At-least-once: state,
changelogs and offsets are committed every ``--commit-interval`` after the outputs are
flushed. Runs until SIGTERM or SIGINT; ``--web-port`` serves ``GET /ready`` (200 once
both consumer groups are stable with partitions assigned).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.server
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

from confluent_kafka import IsolationLevel, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from quixstreams import Application, State, message_context
from quixstreams.kafka import Consumer, Producer
from quixstreams.models import TopicConfig
from quixstreams.models.serializers import SerializationContext, Serializer
from quixstreams.models.topics import TopicAdmin

from streams.core.consent import decode_state, encode_state, stored_objects
from streams.core.enforcement import (
    DECISION_FIELDS,
    TRAINING_FIELDS,
    Effects,
    Source,
    decision_values,
    on_objection,
    on_post,
    post_outcome,
    training_values,
)
from streams.core.policy import Outcome, Policy, load_policy
from streams.core.records import (
    DLQ_REFERENCE,
    KIND_OBJECTION,
    KIND_POST,
    POST_FIELDS,
    SOURCE,
    SRC_OFFSET,
    SRC_PARTITION,
    SRC_TOPIC,
    check_objection,
    check_post,
    check_post_fields,
    check_user_id,
    dlq_record_size,
    forwarded,
    pack_source,
    source_prefix,
)
from streams.serde.codec import (
    CONSENT_RECEIPT,
    DECISION,
    OBJECTION,
    POST,
    RETRACTION,
    TRAINING_RECORD,
    Codec,
    DecodeError,
)
from streams.settings import Settings

log = logging.getLogger("bench.peer_quix")

USER = b"u"  # the state key of a user's value (under the user's key prefix)
BATCH = 5000  # records the re-keyer takes per consume
REKEY_COMMIT_INTERVAL = 1.0  # seconds, as the enforcer's re-keying stage
# as the enforcer: a forwarded record leaves this much of the record limit for its
# source (streams.rekey.stage.SOURCE_HEADER_BYTES), and a post this much for what its
# TrainingRecord adds (streams.gate.processor.RECORD_OVERHEAD)
SOURCE_HEADER_BYTES = 2048
RECORD_OVERHEAD = 8192
MAX_RECORD_BYTES = Settings.max_record_bytes

# a gate output: (topic, key, value or None for a tombstone, headers or None)
Output = tuple[Any, bytes | None, bytes | None, list | None]


def internal_topic(app_id: str) -> str:
    """The internal topic keyed by user (named as Quix names its repartition topics)."""
    return f"repartition__{app_id}--by-user"


# -- a user's live posts as bytes: per post, len(id) (2 bytes) + id + len(platform) (1
#    byte) + platform, in the order published ----------------------------------------
def _live_needle(post_id: str) -> bytes:
    pid = post_id.encode("utf-8")
    return len(pid).to_bytes(2, "big") + pid


def live_parse(blob: bytes | None) -> dict[str, str]:
    """The live posts in ``blob``: post id -> platform."""
    out: dict[str, str] = {}
    if not blob:
        return out
    i, n = 0, len(blob)
    while i < n:
        size = int.from_bytes(blob[i : i + 2], "big")
        post_id = blob[i + 2 : i + 2 + size].decode("utf-8")
        i += 2 + size
        size = blob[i]
        out[post_id] = blob[i + 1 : i + 1 + size].decode("utf-8")
        i += 1 + size
    return out


def live_encode(posts: dict[str, str]) -> bytes:
    """Inverse of ``live_parse``."""
    return b"".join(_live_entry(p, plat) for p, plat in posts.items())


def _live_entry(post_id: str, platform: str) -> bytes:
    plat = platform.encode("utf-8")
    return _live_needle(post_id) + len(plat).to_bytes(1, "big") + plat


def live_has(blob: bytes | None, post_id: str) -> bool:
    """Whether ``post_id`` is live (a substring search; parsed only on a hit)."""
    return bool(blob) and _live_needle(post_id) in blob and post_id in live_parse(blob)


# -- a user's value: len(consent) (4 bytes) + consent (``consent.encode_state``, empty
#    for none) + live posts: one state read per record, and a post published appends
#    to it -------------------------------------------------------------------------------
def user_split(stored: bytes | None) -> tuple[bytes | None, bytes]:
    """A user's stored value as (consent or None, live posts)."""
    if not stored:
        return None, b""
    end = 4 + int.from_bytes(stored[:4], "big")
    return stored[4:end] or None, stored[end:]


def user_join(consent: bytes | None, live: bytes) -> bytes:
    """Inverse of ``user_split``."""
    consent = consent or b""
    return len(consent).to_bytes(4, "big") + consent + live


def user_with_live(stored: bytes | None, live: bytes, post_id: str, platform: str) -> bytes:
    """``stored`` (whose live posts are ``live``) with ``post_id`` live on ``platform``:
    appended, unless it is live already."""
    if live_has(live, post_id):
        posts = live_parse(live)
        posts[post_id] = platform
        return user_join(user_split(stored)[0], live_encode(posts))
    return (stored or user_join(None, b"")) + _live_entry(post_id, platform)


# -- stage 1: re-keying --------------------------------------------------------------
@dataclass(frozen=True)
class Topics:
    """The topic names the stages use (receipts: '' for none)."""

    posts: str
    objections: str
    internal: str
    training: str
    retractions: str
    decisions: str
    dlq: str
    receipts: str


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies (PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


class Rekeyer:
    """The re-keying loop (a child process)."""

    def __init__(self, bootstrap: str, app_id: str, topics: Topics, stopping: Any) -> None:
        self.topics = topics
        self.stopping = stopping
        self.codec = Codec()
        self.consumer = Consumer(
            broker_address=bootstrap,
            consumer_group=f"{app_id}-rekey",
            auto_offset_reset="earliest",
            auto_commit_enable=False,
            extra_config={
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 10,
                "fetch.min.bytes": 65536,
                "queued.min.messages": 100000,
                "partition.assignment.strategy": "cooperative-sticky",
                "log_level": 3,
            },
        )
        self.producer = Producer(
            broker_address=bootstrap,
            extra_config={
                **PRODUCER_CONFIG,
                "on_delivery": self._delivered,
                "delivery.report.only.error": True,
            },
        )
        self.admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
        # per input (topic, partition): the offset after the last record handled
        self._done: dict[tuple[str, int], int] = {}
        self._kinds = {
            topics.posts: (POST, KIND_POST),
            topics.objections: (OBJECTION, KIND_OBJECTION),
        }
        self._objection_partitions: list[int] = []
        # per input (topic, partition): the start of its SOURCE header
        self._source_prefixes: dict[tuple[str, int], tuple[bytes, bytes, bytes]] = {}
        self._failure: str | None = None

    def _delivered(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None and self._failure is None:
            self._failure = err.str()

    def run(self) -> None:
        """Forward until ``stopping`` is set, committing every REKEY_COMMIT_INTERVAL."""
        t = self.topics
        consumer = self.consumer
        consumer.subscribe(
            [t.posts, t.objections], on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        md = consumer.list_topics(t.objections, timeout=30).topics[t.objections]
        self._objection_partitions = sorted(md.partitions)
        next_commit = time.monotonic() + REKEY_COMMIT_INTERVAL
        try:
            while not self.stopping.is_set():
                first = consumer.poll(0.1)
                if first is not None:
                    batch = [first, *consumer.consume(BATCH - 1, timeout=0)]
                    posts = self._objections_first(batch)
                    if posts and self._await_objections(posts):
                        for msg in posts:
                            self._forward(msg)
                if self._failure:
                    raise KafkaException(f"records not delivered: {self._failure}")
                if time.monotonic() >= next_commit:
                    self._commit()
                    next_commit = time.monotonic() + REKEY_COMMIT_INTERVAL
            self._commit()
        finally:
            consumer.close()

    def _commit(self, only: list[TopicPartition] | None = None) -> None:
        """Flush, then commit the offsets after the records handled (never a position)."""
        if self.producer.flush(60) or self._failure:
            raise KafkaException(f"records not delivered: {self._failure or 'timeout'}")
        wanted = None if only is None else {(tp.topic, tp.partition) for tp in only}
        done = [
            TopicPartition(topic, partition, offset)
            for (topic, partition), offset in self._done.items()
            if wanted is None or (topic, partition) in wanted
        ]
        if done:
            try:
                self.consumer.commit(offsets=done, asynchronous=False)
            except KafkaException as exc:  # e.g. a rebalance: forwarded again later
                log.warning("commit failed (%s)", exc)

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        positions = []
        for tp in consumer.committed(partitions, timeout=30):
            low, _ = consumer.get_watermark_offsets(tp, timeout=30)
            tp.offset = max(tp.offset, low)  # never committed (negative): the beginning
            positions.append(tp)
            self._done[(tp.topic, tp.partition)] = tp.offset
        consumer.incremental_assign(positions)

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        self._commit(partitions)
        for tp in partitions:
            self._done.pop((tp.topic, tp.partition), None)

    def _objections_first(self, batch: list) -> list:
        """Forward the batch's objection events; return its posts."""
        posts, topic = [], self.topics.posts
        for msg in batch:
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", error.str())
            elif msg.topic() == topic:
                posts.append(msg)
            else:
                self._forward(msg)
        return posts

    def _await_objections(self, posts: list) -> bool:
        """Hold ``posts`` (their partitions paused) until every objection on the inputs
        now is forwarded, forwarding objections meanwhile; False when stopping first."""
        paused: list[TopicPartition] = []
        try:
            while self._objections_behind():
                if self.stopping.is_set():
                    return False
                if not paused:
                    paused = [
                        tp for tp in self.consumer.assignment() if tp.topic == posts[0].topic()
                    ]
                    self.consumer.pause(paused)
                posts += self._objections_first(self.consumer.consume(BATCH, timeout=0.05))
            return True
        finally:
            if paused:
                self.consumer.resume(paused)

    def _objections_behind(self) -> bool:
        """Whether an objections partition has records not yet forwarded (as of now)."""
        topic = self.topics.objections
        tps = [TopicPartition(topic, p) for p in self._objection_partitions]
        try:
            ends = {
                tp.partition: future.result(timeout=30).offset
                for tp, future in self.admin.list_offsets(
                    {tp: OffsetSpec.latest() for tp in tps},
                    isolation_level=IsolationLevel.READ_COMMITTED,
                    request_timeout=30,
                ).items()
            }
        except (KafkaException, TimeoutError) as exc:
            log.warning("cannot tell how far objections are forwarded (%s)", exc)
            return True
        forwarded = {p: o for (t, p), o in self._done.items() if t == topic}
        others = [tp for tp in tps if tp.partition not in forwarded]
        if others:  # partitions of another member of the group: what it committed
            for tp in self.consumer.committed(others, timeout=30):
                forwarded[tp.partition] = tp.offset
        return any(forwarded.get(p, -1) < end for p, end in ends.items())

    def _forward(self, msg: Any) -> None:
        """Forward one input record keyed by its user, or send it to the DLQ."""
        topic, value, partition, offset = msg.topic(), msg.value(), msg.partition(), msg.offset()
        name, kind = self._kinds[topic]
        self._done[(topic, partition)] = offset + 1
        try:
            if value is None:
                raise DecodeError("null value")
            user_id = self.codec.user_id_of(value, name)
            check_user_id(user_id, name)
        except DecodeError as exc:
            self._dlq(msg, str(exc))
            return
        except Exception as exc:  # never let one record stop the stage
            self._dlq(msg, f"cannot read record: {type(exc).__name__}")
            return
        own = msg.headers()
        user = user_id.encode("utf-8")
        size = dlq_record_size(user, value, own or ())
        if size > MAX_RECORD_BYTES - SOURCE_HEADER_BYTES:
            self._dlq(msg, f"record too large: {size} bytes")
            return
        prefix = self._source_prefixes.get((topic, partition))
        if prefix is None:
            prefix = self._source_prefixes[(topic, partition)] = source_prefix(
                kind, topic, partition
            )
        header = (SOURCE, pack_source(prefix, offset, msg.key()))
        _, timestamp = msg.timestamp()
        self.producer.produce(
            self.topics.internal,
            value,
            user,
            headers=[*own, header] if own else [header],  # the input's first, ours last
            timestamp=timestamp if timestamp > 0 else None,
        )

    def _dlq(self, msg: Any, reason: str) -> None:
        """The input to the DLQ with the enforcer's headers (its re-keying stage's)."""
        headers = [
            *(msg.headers() or ()),
            *_dlq_headers(reason, msg.topic(), msg.partition(), msg.offset()),
        ]
        key, value = msg.key(), msg.value()
        key, value, headers = _within_limit(key, value, headers)
        self.producer.produce(self.topics.dlq, value, key, headers=headers)


def _dlq_headers(reason: str, topic: str, partition: int, offset: int) -> list:
    return [
        ("error", reason.encode("utf-8", "replace")),
        (SRC_TOPIC, topic.encode()),
        (SRC_PARTITION, str(partition).encode()),
        (SRC_OFFSET, str(offset).encode()),
    ]


def _within_limit(key: bytes | None, value: bytes | None, headers: list) -> tuple:
    """A dead letter as it is sent: a reference to the input when it would be too large."""
    size = dlq_record_size(key, value, headers)
    if size <= MAX_RECORD_BYTES:
        return key, value, headers
    own = len(headers) - 4  # the error and source headers are the last four
    return None, None, [*headers[own:], (DLQ_REFERENCE, str(size).encode())]


# Every producer: idempotent, acknowledged by all replicas, batched as the enforcer's
# (streams.kafka.outputs.producer_config), uncompressed
PRODUCER_CONFIG = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "batch.num.messages": 10000,
    "batch.size": 1048576,
    "queue.buffering.max.messages": 500000,
    "queue.buffering.max.kbytes": 262144,
    "compression.type": "none",
    "message.max.bytes": MAX_RECORD_BYTES,
    "log_level": 3,
}


def run_rekeyer(bootstrap: str, app_id: str, topics: Topics, stopping: Any) -> None:
    """The re-keying child process: forwards until the parent sets ``stopping``."""
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:
        os._exit(70)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _log_setup("rekey")
    try:
        Rekeyer(bootstrap, app_id, topics, stopping).run()
    except Exception:
        log.critical("the re-keying stage failed", exc_info=True)
        logging.shutdown()
        os._exit(70)


# -- stage 2: the gate ---------------------------------------------------------------
class Payload(Serializer):
    """Value serializer of the output topics: the value bytes of an ``Output``."""

    def __call__(self, value: Output, ctx: SerializationContext) -> bytes | None:
        """The value bytes (``None``: a tombstone)."""
        return value[2]


def _parameters(splice: Any) -> tuple[str, ...]:
    """The field names a splicer (a partial of a generated function) takes."""
    code = splice.func.__code__
    return code.co_varnames[len(splice.args) + 2 : code.co_argcount]


def _now_ms() -> int:
    return int(time.time() * 1000)


class Gate:
    """Per internal record: decode, decide with the enforcer's rules, build the outputs
    (in the enforcer's order and with its keys)."""

    def __init__(
        self,
        policy: Policy,
        codec: Codec,
        topics: Topics,
        outputs: dict[str, Any],
        max_clock_skew_ms: int,
    ) -> None:
        self.policy = policy
        self.codec = codec
        self.topics = topics
        self.max_clock_skew_ms = max_clock_skew_ms
        self.training, self.retractions = outputs["training"], outputs["retractions"]
        self.decisions, self.dlq_topic = outputs["decisions"], outputs["dlq"]
        self.receipts = outputs.get("receipts")
        self.max_post_bytes = MAX_RECORD_BYTES - RECORD_OVERHEAD
        names = codec.field_names(POST)
        self._pick = (
            itemgetter(*(names.index(f) for f in POST_FIELDS))
            if set(POST_FIELDS) <= set(names)
            else None
        )
        training = codec.splicer(POST, TRAINING_RECORD, topics.training)
        decision = codec.splicer(POST, DECISION, topics.decisions)
        given = ((training, TRAINING_FIELDS), (decision, DECISION_FIELDS))
        ok = self._pick and all(s is not None and _parameters(s) == f for s, f in given)
        self._splices = (training, decision) if ok else None

    def __call__(
        self, value: bytes | None, _key: bytes, _ts: int, headers: Any, state: State
    ) -> list[Output]:
        """The outputs of one internal record (``apply(stateful, expand, metadata)``)."""
        src = forwarded(headers)
        if src is None:  # not written by the re-keying stage: where it was read
            ctx = message_context()
            source = Source(ctx.topic, ctx.partition, ctx.offset)
            return [self._dead_letter(_key, value, headers, source, "not a forwarded input")]
        headers, kind, topic, partition, offset, key = src  # the input's own headers
        data, source, post = value, Source(topic, partition, offset), kind == KIND_POST
        if data is None:
            return [self._dead_letter(key, data, headers, source, "null value")]
        if len(data) > self.max_post_bytes:
            reason = f"record too large: {len(data)} bytes (at most {self.max_post_bytes})"
            return [self._dead_letter(key, data, headers, source, reason)]
        scanned = fields = record = None
        try:
            if post and self._splices is not None:
                scanned = self.codec.scan(data, POST)  # None: decode it
            if scanned is not None:
                fields = self._pick(scanned[0])
                check_post_fields(fields[0], fields[1], fields[4])
            elif post:
                record = self.codec.decode(data, POST)[1]
                check_post(record)
            elif kind == KIND_OBJECTION:
                record = self.codec.decode(data, OBJECTION)[1]
                check_objection(record)
            else:
                raise DecodeError(f"unknown internal record kind {kind!r}")
        except DecodeError as exc:
            return [self._dead_letter(key, data, headers, source, str(exc))]
        if not post:
            return self._objection(record, source, state)
        if fields is not None:
            out = self._post_as_bytes(fields, scanned[1], data, source, state)
            if out is not None:
                return out
            record = self.codec.decode(data, POST)[1]  # the scan accepted these bytes
        return self._post(record, source, state)

    def _post_as_bytes(
        self, fields: tuple, starts: tuple, data: bytes, source: Source, state: State
    ) -> list[Output] | None:
        """A post's TrainingRecord and Decision spliced from its bytes; None when it must
        be decided from a decoded record (a live post no longer eligible)."""
        post_id, _user_id, platform, visibility, country, adult = fields
        policy = self.policy
        stored = state.get_bytes(USER)
        consent, live = user_split(stored)
        objected = stored_objects(consent, platform)
        reason = policy.reason_of(visibility, adult, country, platform, objected)
        outcome = post_outcome(reason, lambda: live_has(live, post_id), False)
        if outcome is Outcome.RETRACTED:
            return None
        assert outcome is not None  # live traffic always gets a decision
        now = _now_ms()
        key = post_id.encode()
        decision = self._splices[1](
            data, starts, *decision_values(outcome, reason, policy, now, source, None)
        )
        if outcome is not Outcome.PUBLISHED:
            return [(self.decisions, key, decision, None)]
        # in the live posts before it is published, so that it is always retractable
        state.set_bytes(USER, user_with_live(stored, live, post_id, platform))
        training = self._splices[0](data, starts, *training_values(policy, now))
        return [(self.training, key, training, None), (self.decisions, key, decision, None)]

    def _post(self, post: dict[str, Any], source: Source, state: State) -> list[Output]:
        consent, live = user_split(state.get_bytes(USER))
        is_live = live_has(live, post["post_id"])
        fx = on_post(self.policy, post, decode_state(consent), is_live, _now_ms(), source)
        if fx.ledger_add or fx.ledger_remove:
            self._store(state, consent, live, fx)
        return self._outputs(fx)

    def _objection(self, event: dict[str, Any], source: Source, state: State) -> list[Output]:
        consent, live = user_split(state.get_bytes(USER))
        new_state, fx = on_objection(
            self.policy,
            decode_state(consent),
            event,
            live_parse(live),
            _now_ms(),
            source,
            self.max_clock_skew_ms,
        )
        # the consent always written, even when unchanged, as the enforcer does
        self._store(state, encode_state(new_state), live, fx)
        return self._outputs(fx)

    @staticmethod
    def _store(state: State, consent: bytes | None, live: bytes, fx: Effects) -> None:
        """Write the user's value: ``consent`` and the live posts changed by ``fx``."""
        if fx.ledger_add or fx.ledger_remove:
            posts = live_parse(live)
            posts.update(fx.ledger_add)
            for post_id in fx.ledger_remove:
                posts.pop(post_id, None)
            live = live_encode(posts)
        if consent or live:
            state.set_bytes(USER, user_join(consent, live))
        else:
            state.delete(USER)

    def _outputs(self, fx: Effects) -> list[Output]:
        """The records of ``fx``, in the enforcer's order (``processor.Processor._emit``)."""
        enc, t = self.codec.encode, self.topics
        out: list[Output] = [
            (self.training, r["post_id"].encode(), enc(TRAINING_RECORD, r, t.training), None)
            for r in fx.publish
        ]
        out += [(self.training, post_id.encode(), None, None) for post_id in fx.tombstones]
        out += [
            (self.retractions, r["user_id"].encode(), enc(RETRACTION, r, t.retractions), None)
            for r in fx.retractions
        ]
        out += [
            (self.decisions, r["post_id"].encode(), enc(DECISION, r, t.decisions), None)
            for r in fx.decisions
        ]
        if fx.receipt is not None and self.receipts is not None:
            r = fx.receipt
            out.append(
                (self.receipts, r["user_id"].encode(), enc(CONSENT_RECEIPT, r, t.receipts), None)
            )
        return out

    def _dead_letter(
        self, key: bytes | None, data: bytes | None, headers: Any, source: Source, reason: str
    ) -> Output:
        """An input the gate cannot decide, to the DLQ as the enforcer's gate sends it."""
        dlq = [
            *(headers or ()),
            *_dlq_headers(reason, source.topic, source.partition, source.offset),
        ]
        key, value, dlq = _within_limit(key, data, dlq)
        return (self.dlq_topic, key, value, dlq)


def gate_app(args: argparse.Namespace, topics: Topics, index: int) -> Application:
    """The gate: a Quix Application over the internal topic, tuned (see the module doc)."""
    app = Application(
        broker_address=args.bootstrap_servers,
        consumer_group=args.app_id,
        auto_offset_reset="earliest",
        processing_guarantee="at-least-once",
        commit_interval=args.commit_interval,
        state_dir=str(Path(args.state_dir) / f"gate-{index}"),
        loglevel="WARNING",
        consumer_extra_config={
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 10,
            "fetch.min.bytes": 65536,
            "queued.min.messages": 100000,
        },
        producer_extra_config=dict(PRODUCER_CONFIG),
    )
    source = app.topic(
        topics.internal,
        value_deserializer="bytes",
        key_deserializer="bytes",
        config=TopicConfig(num_partitions=args.partitions, replication_factor=1),
    )
    payload = Payload()
    outputs = {
        name: app.topic(topic, value_serializer=payload, key_serializer="bytes")
        for name, topic in (
            ("training", topics.training),
            ("retractions", topics.retractions),
            ("decisions", topics.decisions),
            ("dlq", topics.dlq),
            ("receipts", topics.receipts),
        )
        if topic
    }
    gate = Gate(load_policy(args.policy), Codec(), topics, outputs, args.max_clock_skew_ms)
    (
        app.dataframe(source)
        .apply(gate, stateful=True, expand=True, metadata=True)
        .set_headers(lambda value, _key, _ts, _headers: value[3])
        .to_topic(lambda value, _key, _ts, _headers: value[0], key=itemgetter(1))
    )
    return app


def run_gate(args: argparse.Namespace, topics: Topics, index: int) -> None:
    """One gate process (``--processes`` > 1: the others are children)."""
    if index:
        _die_with_parent()
        _log_setup(f"gate-{index}")
    gate_app(args, topics, index).run()


# -- the process that runs it all ----------------------------------------------------
def _log_setup(stage: str) -> None:
    logging.basicConfig(
        level=logging.WARNING,
        format=f"[%(asctime)s] [%(process)s] [%(levelname)s] [{stage}] %(message)s",
        stream=sys.stderr,
    )


class Readiness(threading.Thread):
    """``GET /ready``: 200 once the re-keying and gate groups are stable, with partitions
    assigned to every member (asked of the broker every half second), else 503."""

    def __init__(self, bootstrap: str, groups: dict[str, int], port: int) -> None:
        super().__init__(daemon=True, name="ready")
        self.admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
        self.groups = groups  # group -> members expected
        self.ready = False
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                ok = self.path == "/ready" and owner.ready
                self.send_response(200 if ok else 503)
                self.end_headers()
                self.wfile.write(b"ready\n" if ok else b"not ready\n")

            def log_message(self, *_args: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def run(self) -> None:
        while not self.ready:
            with contextlib.suppress(Exception):
                futures = self.admin.describe_consumer_groups(list(self.groups))
                self.ready = all(
                    _stable(futures[group].result(timeout=5), members)
                    for group, members in self.groups.items()
                )
            time.sleep(0.5)


def _stable(description: Any, members: int) -> bool:
    assigned = [m for m in description.members if m.assignment.topic_partitions]
    return str(description.state).endswith("STABLE") and len(assigned) >= members


def create_internal_topic(bootstrap: str, name: str, partitions: int) -> None:
    """The internal topic, before the re-keying stage writes to it."""
    app = Application(broker_address=bootstrap, loglevel="WARNING")
    topic = app.topic(name, config=TopicConfig(num_partitions=partitions, replication_factor=1))
    TopicAdmin(broker_address=bootstrap).create_topics([topic])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.peer_quix", description=__doc__)
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--app-id", required=True, help="the gate's consumer group")
    for name in ("posts", "objections", "training", "retractions", "decisions", "dlq"):
        parser.add_argument(f"--{name}-topic", required=True)
    parser.add_argument("--receipts-topic", default="", help="consent receipts (default: none)")
    parser.add_argument("--state-dir", required=True, help="RocksDB state directory")
    parser.add_argument("--partitions", type=int, default=8, help="of the internal topic")
    parser.add_argument("--processes", type=int, default=1, help="gate processes (one group)")
    parser.add_argument(
        "--commit-interval", type=float, default=1.0, help="seconds (the enforcer's gate: 1)"
    )
    parser.add_argument(
        "--max-clock-skew-ms", type=int, default=Settings.max_clock_skew_ms, help="as the enforcer"
    )
    parser.add_argument("--policy", default=None, help="policy file (default: packaged)")
    parser.add_argument("--web-port", type=int, default=None, help="serve GET /ready")
    args = parser.parse_args(argv)
    if args.processes < 1 or args.partitions < 1:
        parser.error("--processes and --partitions must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the peer until SIGTERM or SIGINT: the re-keying stage and the gates."""
    args = parse_args(argv)
    load_policy(args.policy)  # a bad policy stops here, before anything starts
    _log_setup("gate-0")
    topics = Topics(
        posts=args.posts_topic,
        objections=args.objections_topic,
        internal=internal_topic(args.app_id),
        training=args.training_topic,
        retractions=args.retractions_topic,
        decisions=args.decisions_topic,
        dlq=args.dlq_topic,
        receipts=args.receipts_topic,
    )
    create_internal_topic(args.bootstrap_servers, topics.internal, args.partitions)
    ctx = multiprocessing.get_context("spawn")
    stopping = ctx.Event()
    children = [
        ctx.Process(
            target=run_rekeyer,
            args=(args.bootstrap_servers, args.app_id, topics, stopping),
            name="peer-quix-rekey",
            daemon=True,
        ),
        *(
            ctx.Process(target=run_gate, args=(args, topics, i), name=f"peer-quix-gate-{i}")
            for i in range(1, args.processes)
        ),
    ]
    for child in children:
        child.start()
    if args.web_port is not None:
        groups = {f"{args.app_id}-rekey": 1, args.app_id: args.processes}
        Readiness(args.bootstrap_servers, groups, args.web_port).start()

    def watch() -> None:  # a stage that dies takes the peer with it
        sentinels = {child.sentinel: child for child in children}
        ended = multiprocessing.connection.wait(list(sentinels))  # blocks, GIL released
        if not stopping.is_set():
            child = sentinels[ended[0]]  # type: ignore[index]
            log.critical("%s exited with %s; stopping", child.name, child.exitcode)
            for other in children:
                other.kill()
            logging.shutdown()
            os._exit(70)

    threading.Thread(target=watch, daemon=True, name="watch").start()
    try:
        run_gate(args, topics, 0)
    finally:
        stopping.set()
        for child in children[1:]:  # the other gates stop on SIGTERM, as this one did
            if child.pid is not None and child.exitcode is None:
                os.kill(child.pid, signal.SIGTERM)
        for child in children:
            child.join(30)
            if child.exitcode is None:
                child.kill()
                child.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
