"""The gate's dispatcher: what the gate agent does with each record of the internal
user-events topic. (The re-keying stage is ``rekey/stage.py``.)

Each record is admitted in offset order (``gate/positions.py``), read as far as its
kind needs (decoded and checked, or a post of the current schema scanned), and handed
on by kind: a post to ``gate/posts.py``, an objection event to ``gate/objections.py``,
a replay request to ``gate/replay.py``. Their outputs are written by
``gate/emit.py``; what cannot be decided goes to the DLQ (``gate/dlq.py``). Where the
C extension is built, the common post (published or blocked) is decided by the native
fast path (``gate/fastpath.py``, ``gate/native.py``), which hands every other record
to ``process_one``; the Python path is what it must match, byte for byte. What has
been processed is committed by ``gate/checkpoint.py``.

A batch is processed without a single ``await``, so an agent can only be cancelled
between batches, never halfway through an input. When an input retracts posts, the
ledger holds the removals until the broker has acknowledged the tombstones (they are
settled before each commit), so a crash in between re-processes the input and
retracts again instead of forgetting to.

Nothing here logs post text or media URLs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

from streams import faust_compat
from streams.core.enforcement import Source
from streams.core.policy import Policy
from streams.core.records import (
    KIND,
    KIND_OBJECTION,
    KIND_POST,
    KIND_REPLAY,
    SRC_OFFSET,
    SRC_PARTITION,
    SRC_TOPIC,
    check_objection,
    check_post,
    check_post_fields,
    forwarded,
    partition_for_user,
)
from streams.gate.checkpoint import Checkpoint
from streams.gate.emit import Emitter
from streams.gate.fastpath import FastPath
from streams.gate.metrics import Metrics
from streams.gate.objections import Objections
from streams.gate.offsets import Admit
from streams.gate.positions import Positions
from streams.gate.posts import Posts
from streams.gate.replay import Replays
from streams.kafka.outputs import OutputProducer
from streams.serde.codec import OBJECTION, POST, Codec, DecodeError, RegistryUnavailable
from streams.settings import Settings
from streams.state.ledger import Ledger, StateNotReady, TableState

log = logging.getLogger("streams.enforcer")
# what a TrainingRecord may add to its post's bytes (policy version, times, framing) and
# a record's key and headers take: a post up to the record limit less this is republished
RECORD_OVERHEAD = 8192


class Processor:
    """Per-record dispatch of the gate agent, over its parts."""

    def __init__(
        self,
        app: Any,
        settings: Settings,
        policy: Policy,
        codec: Codec,
        consent: TableState,
        ledger: TableState,
        outputs: OutputProducer,
        metrics: Metrics,
    ) -> None:
        self.app = app
        self.settings = settings
        self.policy = policy
        self.codec = codec
        self.consent = consent
        self.ledger = Ledger(ledger)
        self.outputs = outputs
        self.metrics = metrics
        self.rekeyer: Any = None
        # with fencing, one transactional producer per partition (outputs.use selects it)
        self._fencing = bool(getattr(outputs, "transactional", False))
        self.positions = Positions(settings)
        self.offsets = self.positions.offsets
        self.emitter = Emitter(settings, codec, self.ledger, outputs, metrics)
        self.posts = Posts(settings, policy, codec, consent, self.ledger, self.emitter)
        self.objections = Objections(settings, policy, consent, self.ledger, self.emitter)
        self.replays = Replays(policy, consent, self.ledger, self.emitter)
        self.fast_path = FastPath(self)
        self.checkpoint = Checkpoint(
            app,
            settings.user_events_topic,
            self.offsets,
            self.ledger,
            (consent, ledger),
            outputs,
            self.process,
        )
        # a post longer than this cannot be republished (its TrainingRecord would be over
        # the producer's record limit): it goes to the DLQ before any side effect
        self.max_post_bytes = settings.max_record_bytes - RECORD_OVERHEAD

    def ready(self) -> bool:
        """True once partitions are assigned, recovered and being consumed, and no
        record waits for the schema registry (here or in the re-keying stage)."""
        try:
            rekeying = self.rekeyer is None or (
                self.rekeyer.is_alive()
                and self.rekeyer.assigned.is_set()
                and not self.rekeyer.blocked.is_set()
            )
        except AttributeError:
            return False
        return bool(rekeying and not self.positions.blocked and faust_compat.recovered(self.app))

    def process(
        self, messages: Iterable[Any], timestamp_scale: float = 1.0, partition: int | None = None
    ) -> None:
        """Process a batch of internal records, in offset order per partition.

        ``timestamp_scale``: seconds per unit of their timestamps (Faust messages have
        seconds, aiokafka records milliseconds). ``partition``: the one partition all of
        them are of, if known (with fencing the fast path needs it: its records go
        through that partition's producer). With fencing, records of a partition whose
        transaction is being committed wait (``Checkpoint.hold``): they belong to its
        next transaction, which cannot begin before the commit ends."""
        if self._fencing and (self.outputs.committing or self.checkpoint.waiting):
            messages = self.checkpoint.hold(messages, timestamp_scale, partition)
            if not messages:
                return
        emitter = self.emitter
        emitter.timestamp_scale = timestamp_scale
        try:
            fast = self.fast_path.gate_for(partition)
            if fast:  # the common posts in C, every other record through process_one
                # the C path writes the ledger without TableState.put: mark it first
                # (only partitions the gate holds: a standby's is Faust's)
                touch, held = self.ledger.state.touch, self.offsets.expected
                if partition is None:
                    messages = list(messages)
                    for p in {message.partition for message in messages}:
                        if p in held:
                            touch(p)
                elif partition in held:
                    touch(partition)
                self.fast_path.run(fast, messages, timestamp_scale)
            else:
                for message in messages:
                    self.process_one(message)
        finally:
            emitter.timestamp_scale = 1.0
        self.outputs.poll()

    def process_one(self, message: Any) -> None:
        """Process one internal record (records of a partition come in offset order).

        A record whose table partition is not open here (``StateNotReady``) or whose
        schema the registry could not be asked about (``RegistryUnavailable``; ``gate``
        raises both before any side effect) is put back (``gate/positions.py``):
        nothing after it is processed or committed meanwhile."""
        partition = message.partition
        positions = self.positions
        admit = positions.offsets.admit(partition, message.offset)
        if admit is Admit.PROCESS or admit is Admit.DUPLICATE:
            if positions.repositioning:
                positions.repositioning.pop(partition, None)
            try:
                if self._fencing and not self.outputs.use(partition):  # no producer here
                    raise StateNotReady(f"partition {partition} has no producer here")
                self.gate(message)
            except StateNotReady as exc:
                positions.not_ready(partition, message.offset, admit, exc)
                return
            except RegistryUnavailable as exc:
                positions.wait_for_registry(partition, message.offset, admit, exc)
                return
            if positions.blocked:
                positions.blocked.pop(partition, None)
        else:
            positions.skipped(partition, message.offset, admit)

    def forget(self, partition: int) -> None:
        """A partition assigned anew or revoked: where it starts is looked up again, and
        nothing of it waits to be committed."""
        self.positions.forget(partition)
        self.checkpoint.forget(partition)

    def gate(self, message: Any) -> None:
        """Decide a post, apply an objection event or answer a replay request."""
        src = forwarded(message.headers)
        if src is not None:  # an input forwarded by the re-keying stage
            headers = None
            _, kind, topic, partition, offset, _ = src
            source = Source(topic, partition, offset)
        else:  # a replay request
            headers = dict(message.headers or ())
            kind = headers.get(KIND)
            topic, partition, offset = map(headers.get, (SRC_TOPIC, SRC_PARTITION, SRC_OFFSET))
            try:
                source = Source(topic.decode(), int(partition), int(offset))
            except (AttributeError, TypeError, ValueError):
                source = Source(message.topic, message.partition, message.offset)
        scanned, fields, record = None, None, None
        value = message.value
        posts = self.posts
        if value is not None and len(value) > self.max_post_bytes:
            # checked before anything else: nothing this large can be republished, and a
            # record refused by the producer must not stop the worker on every restart
            self.emitter.dead_letter(
                message, f"record too large: {len(value)} bytes (at most {self.max_post_bytes})"
            )
            return
        try:
            if kind == KIND_POST and posts.pick_fields and posts.splices is not False:
                scanned = self.codec.scan(message.value, POST)  # None: decode it
            if scanned is not None:
                fields = posts.pick_fields(scanned[0])
                check_post_fields(fields[0], fields[1], fields[4])
            elif kind in (KIND_POST, KIND_REPLAY):
                _, record = self.codec.decode(message.value, POST)
                check_post(record)
            elif kind == KIND_OBJECTION:
                _, record = self.codec.decode(message.value, OBJECTION)
                check_objection(record)
            else:
                raise DecodeError(f"unknown internal record kind {kind!r}")
        except DecodeError as exc:
            self.emitter.dead_letter(message, str(exc))
            return
        user_id = fields[1] if fields is not None else record["user_id"]
        home = partition_for_user(user_id.encode("utf-8"), self.settings.partitions)
        if home != message.partition:
            # its user's state is on another partition: deciding here would read none of
            # it (a replay or a producer that partitioned by another count)
            self.emitter.dead_letter(
                message,
                f"record of a user of partition {home} arrived on partition {message.partition}",
            )
            return
        if kind == KIND_OBJECTION:
            try:
                self.objections.apply(record, source, message)
            except StateNotReady:
                raise  # read again once the state is there (process_one)
            except Exception:
                # An objection must never be skipped: stop before its offset is committed,
                # so that it is processed again after restart (fail closed).
                log.critical("cannot apply objection event at %s; exiting", source, exc_info=True)
                logging.shutdown()
                os._exit(70)
            return
        try:
            if fields is not None:
                if posts.decide_spliced(fields, scanned[1], source, message):
                    return
                _, record = self.codec.decode(message.value, POST)  # scan accepted these bytes
            if kind == KIND_POST:
                posts.decide(record, source, message)
            else:
                self.replays.answer(record, source, headers or {}, message)
        except StateNotReady:
            raise  # read again once the state is there (process_one)
        except Exception as exc:  # a post that cannot be decided is not published
            log.exception("cannot decide post at %s", source)
            self.emitter.dead_letter(message, f"internal error: {type(exc).__name__}")
