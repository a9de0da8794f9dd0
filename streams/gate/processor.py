"""What the gate agent does with the records of the internal user-events topic:
decode, call the pure core, write. (The re-keying stage is ``rekey/stage.py``.)

Posts are decided; objection events update the consent table and retract live
posts; replay requests re-decide a past post and answer the replay command.

A batch is processed without a single ``await``, so an agent can only be cancelled
between batches, never halfway through an input. When an input retracts posts, the
ledger holds the removals until the broker has acknowledged the tombstones (they are
settled before each commit), so a crash in between re-processes the input and
retracts again instead of forgetting to.

Where the C extension is built, the common post (published or blocked) is decided by
the native fast path (``gate/native.py``), which hands every other record to
``process_one``; the Python path here is what it must match, byte for byte.

Nothing here logs post text or media URLs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from operator import itemgetter
from typing import Any

from streams import faust_compat
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
from streams.core.policy import Outcome, Policy
from streams.core.records import (
    DLQ_REFERENCE,
    KIND,
    KIND_OBJECTION,
    KIND_POST,
    KIND_REPLAY,
    POST_FIELDS,
    REPLAY_DRY_RUN,
    REPLAY_ID,
    SRC_OFFSET,
    SRC_PARTITION,
    SRC_TOPIC,
    check_objection,
    check_post,
    check_post_fields,
    dlq_record_size,
    forwarded,
    partition_for_user,
)
from streams.gate import native
from streams.gate.metrics import Metrics
from streams.gate.offsets import Admit, OffsetTracker
from streams.kafka.outputs import OutputProducer
from streams.serde.codec import (
    CONSENT_RECEIPT,
    DECISION,
    OBJECTION,
    POST,
    RETRACTION,
    TRAINING_RECORD,
    Codec,
    DecodeError,
    RegistryUnavailable,
)
from streams.settings import Settings
from streams.state.ledger import Ledger, StateNotReady, TableState

log = logging.getLogger("streams.enforcer")
REPOSITION_RETRY = 5.0  # seconds before asking again to seek a partition
# what a TrainingRecord may add to its post's bytes (policy version, times, framing) and
# a record's key and headers take: a post up to the record limit less this is republished
RECORD_OVERHEAD = 8192


class Processor:
    """Per-record logic of the gate agent."""

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
        # with fencing, one transactional producer per partition (outputs.use selects it)
        self._fencing = bool(getattr(outputs, "transactional", False))
        # with fencing, batches of partitions whose transaction is being committed, in
        # order, as process was given them: processed once it has committed (release)
        self._waiting: dict[int, list[tuple[list[Any], float, int | None]]] = {}
        # whether records may be processed now (app._dispatch_to_gate: not while Faust
        # has its flow stopped); held records are dropped when they may not
        self.may_process: Any = lambda: True
        self.metrics = metrics
        self.rekeyer: Any = None
        self.offsets = OffsetTracker()
        self.reposition: Any = None  # callback(partition, expected offset or None)
        self._repositioning: dict[int, float] = {}  # partition -> when it was asked
        # partition -> since when its next record waits for the schema registry
        self._blocked: dict[int, float] = {}
        self._timestamp_scale = 1.0  # seconds per unit of the records' timestamps
        # the fields the rules read (POST_FIELDS) from a scanned post's values, as one
        # tuple; None: posts are decoded
        self._pick_post_fields = _picker(codec.field_names(POST), POST_FIELDS)
        self._splices: Any = None  # _make_splices: None until made, False if not possible
        self._fast: Any = None  # native.make_fast_gate: None until made, False if not used
        self._fast_keys = native.decision_keys()
        # a post longer than this cannot be republished (its TrainingRecord would be over
        # the producer's record limit): it goes to the DLQ before any side effect
        self.max_post_bytes = settings.max_record_bytes - RECORD_OVERHEAD

    # -- readiness -----------------------------------------------------------------
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
        return bool(rekeying and not self._blocked and faust_compat.recovered(self.app))

    # -- the batch -----------------------------------------------------------------
    def process(
        self, messages: Iterable[Any], timestamp_scale: float = 1.0, partition: int | None = None
    ) -> None:
        """Process a batch of internal records, in offset order per partition.

        ``timestamp_scale``: seconds per unit of their timestamps (Faust messages have
        seconds, aiokafka records milliseconds). ``partition``: the one partition all of
        them are of, if known (with fencing the fast path needs it: its records go
        through that partition's producer). With fencing, records of a partition whose
        transaction is being committed wait (``release``): they belong to its next
        transaction, which cannot begin before the commit ends."""
        if self._fencing and (self.outputs.committing or self._waiting):
            messages = self._hold(messages, timestamp_scale, partition)
            if not messages:
                return
        self._timestamp_scale = timestamp_scale
        try:
            fast = self._fast if self._fast is not None else self._make_fast()
            if fast and self._fencing:
                fast = self._fast_for(partition)
            if fast:  # the common posts in C, every other record through process_one
                decided, decisions, buckets, latency_sum, latency_n = fast.run(
                    messages, timestamp_scale
                )
                if decided:
                    self._count_fast(decisions, buckets, latency_sum, latency_n)
            else:
                for message in messages:
                    self.process_one(message)
        finally:
            self._timestamp_scale = 1.0
        self.outputs.poll()

    def _hold(
        self, messages: Iterable[Any], timestamp_scale: float, partition: int | None
    ) -> list[Any]:
        """Keep records of partitions that are committing, or that have records waiting
        already (order), for ``release``; returns the others."""
        waits = self.outputs.committing
        if partition is not None:
            if partition in waits or partition in self._waiting:
                batch = (list(messages), timestamp_scale, partition)
                self._waiting.setdefault(partition, []).append(batch)
                return []
            return list(messages)
        rest = []
        for message in messages:  # a batch of several partitions (Faust's stream path)
            p = message.partition
            if p in waits or p in self._waiting:
                self._waiting.setdefault(p, []).append(([message], timestamp_scale, None))
            else:
                rest.append(message)
        return rest

    def release(self, partition: int) -> None:
        """``partition``'s transaction has committed: process the records that waited for
        it, in order, into its next transaction; or drop them if records may not be
        processed now (a rebalance: the gap makes the partition read them again)."""
        batches = self._waiting.pop(partition, None)
        if not batches or not self.may_process():
            return
        for messages, timestamp_scale, given in batches:
            self.process(messages, timestamp_scale, given)

    def _make_fast(self) -> Any:
        """The native fast path (``gate/native.py``), or False: posts are decided here."""
        self._fast = False
        if not native.available():
            log.info("posts are decided in Python: the native fast path is not available")
        elif self._pick_post_fields is None or not self._make_splices():
            log.info("posts are decided in Python: the schemas do not allow splicing")
        else:
            try:
                self._fast = native.make_fast_gate(self)
                log.info("posts are decided by the native fast path")
            except native.Unsupported as exc:
                log.info("posts are decided in Python: %s", exc)
        return self._fast

    def _fast_for(self, partition: int | None) -> Any:
        """With fencing: the fast path writing through ``partition``'s producer (made once
        per producer), or False (records one at a time, each routed by its partition)."""
        if partition is None or not self.outputs.use(partition):
            return False
        part = self.outputs.partitions[partition]
        if part.fast is None:
            part.fast = native.make_fast_gate(_WithOutputs(self, part))
            fixed_now = getattr(self._fast, "fixed_now", None)  # tests' clock
            if fixed_now is not None:
                part.fast.fixed_now = fixed_now
        return part.fast

    def _count_fast(
        self, decisions: tuple[int, ...], buckets: tuple[int, ...], total: float, n: int
    ) -> None:
        counts = self.metrics.decisions
        for key, count in zip(self._fast_keys, decisions, strict=True):
            if count:
                counts[key] += count
        self.metrics.add_latencies(buckets, total, n)

    def fast_failed(self, message: Any, exc: BaseException) -> None:
        """A post the fast path decided could not be written (its offset is processed):
        to the DLQ, as ``gate`` does with a post it cannot decide."""
        log.error(
            "cannot decide post at %s[%d]@%d",
            message.topic,
            message.partition,
            message.offset,
            exc_info=exc,
        )
        self.dlq(message, f"internal error: {type(exc).__name__}")

    def output_failed(self, message: Any, exc: BaseException) -> None:
        """An output record of an input could not be produced after its first side
        effect (the ledger entry of a post about to be published): the input must be
        processed again, so the worker stops before its offset is committed."""
        log.critical(
            "cannot write the outputs of %s[%d]@%d; exiting so that it is processed again",
            message.topic,
            message.partition,
            message.offset,
            exc_info=exc,
        )
        logging.shutdown()
        os._exit(70)

    def process_one(self, message: Any) -> None:
        """Process one internal record (records of a partition come in offset order).

        A record whose table partition is not open here (``StateNotReady``) or whose
        schema the registry could not be asked about (``RegistryUnavailable``; ``gate``
        raises both before any side effect) is put back: it is read again
        after REPOSITION_RETRY seconds (a reposition), nothing after it is processed or
        committed meanwhile, and the worker is not ready until it is processed."""
        partition = message.partition
        admit = self.offsets.admit(partition, message.offset)
        if admit is Admit.PROCESS or admit is Admit.DUPLICATE:
            if self._repositioning:
                self._repositioning.pop(partition, None)
            try:
                if self._fencing and not self.outputs.use(partition):  # no producer here
                    raise StateNotReady(f"partition {partition} has no producer here")
                self.gate(message)
            except StateNotReady as exc:
                # the partition's table is not open here (being revoked or not yet
                # restored): read the record again later, never decide it without state
                if admit is Admit.PROCESS:
                    self.offsets.put_back(partition, message.offset)
                    self._repositioning[partition] = time.monotonic()
                log.warning(
                    "partition %d: offset %d not processed: %s", partition, message.offset, exc
                )
                return
            except RegistryUnavailable as exc:
                if admit is Admit.DUPLICATE:  # processed before: its effects are there
                    log.warning(
                        "partition %d: offset %d, processed before, not again: %s",
                        partition,
                        message.offset,
                        exc,
                    )
                    return
                now = time.monotonic()
                self.offsets.put_back(partition, message.offset)
                since = self._blocked.setdefault(partition, now)
                self._repositioning[partition] = now  # the seek back: REPOSITION_RETRY on
                log.warning(
                    "partition %d: offset %d waits for the schema registry (%s); read again "
                    "in %.0f s, not ready meanwhile (waiting for %.0f s)",
                    partition,
                    message.offset,
                    exc,
                    REPOSITION_RETRY,
                    now - since,
                )
                return
            if self._blocked:
                self._blocked.pop(partition, None)
        elif time.monotonic() - self._repositioning.get(partition, 0.0) > REPOSITION_RETRY:
            # a gap (Faust skipped records) or an unknown start: read from the right
            # offset again; records until then are not processed and not committed
            log.info(
                "partition %d: %s at offset %d, repositioning to %s",
                partition,
                admit.value,
                message.offset,
                self.offsets.expected.get(partition),
            )
            self._ask_reposition(partition)

    def _ask_reposition(self, partition: int) -> None:
        self._repositioning[partition] = time.monotonic()
        if self.reposition is not None:
            self.reposition(partition, self.offsets.expected.get(partition))

    def retry_repositioning(self) -> None:
        """Ask again for partitions still waiting for a record after a reposition (a seek
        can be undone by records fetched before it); called by a timer, so that a partition
        that receives nothing new is not left waiting. Stops the worker (exit 70, nothing
        committed past it) when a partition's next record has waited for the schema
        registry for longer than ``--registry-timeout``."""
        now = time.monotonic()
        for partition, since in self._blocked.items():
            if now - since > self.settings.registry_timeout:
                log.critical(
                    "partition %d: offset %s has waited for the schema registry for %.0f s "
                    "(--registry-timeout); exiting",
                    partition,
                    self.offsets.expected.get(partition),
                    now - since,
                )
                logging.shutdown()
                os._exit(70)
        for partition, asked in list(self._repositioning.items()):
            if now - asked > REPOSITION_RETRY:
                log.info(
                    "partition %d: offset %s has not come yet, repositioning again",
                    partition,
                    self.offsets.expected.get(partition),
                )
                self._ask_reposition(partition)

    def forget(self, partition: int) -> None:
        """A partition assigned anew or revoked: where it starts is looked up again."""
        self._waiting.pop(partition, None)
        self.offsets.revoke(partition)
        self._repositioning.pop(partition, None)
        self._blocked.pop(partition, None)
        self.ledger.forget((partition,))
        self.consent.forget(partition)
        self.ledger.state.forget(partition)

    def settle(self) -> None:
        """Before a commit: wait for every output, then write the ledger removals they
        made safe, and wait for those too. With fencing the removals go into the open
        transaction of their tombstones, committed or aborted together with them."""
        if self._fencing:
            self.ledger.settle()
            return
        self.outputs.flush()
        if self.ledger.settle():
            self.outputs.flush()

    def dlq(self, message: Any, reason: str) -> None:
        """Send a record to the DLQ with the contract's headers: an input forwarded by the
        re-keying stage goes with its own key, bytes and headers."""
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
        self.metrics.dlq[source[0][1].decode("utf-8", "replace")] += 1
        log.warning("DLQ %s[%d]@%d: %s", message.topic, message.partition, message.offset, reason)
        error = ("error", reason.encode("utf-8", "replace"))
        value, headers = message.value, [*own, error, *source]
        size = dlq_record_size(key, value, headers)
        if size > self.settings.max_record_bytes:
            key, value, headers = None, None, [error, *source, (DLQ_REFERENCE, str(size).encode())]
        self.outputs.produce(self.settings.dlq_topic, key, value, headers=headers)

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
        if value is not None and len(value) > self.max_post_bytes:
            # checked before anything else: nothing this large can be republished, and a
            # record refused by the producer must not stop the worker on every restart
            self.dlq(
                message, f"record too large: {len(value)} bytes (at most {self.max_post_bytes})"
            )
            return
        try:
            if kind == KIND_POST and self._pick_post_fields and self._splices is not False:
                scanned = self.codec.scan(message.value, POST)  # None: decode it
            if scanned is not None:
                fields = self._pick_post_fields(scanned[0])
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
            self.dlq(message, str(exc))
            return
        user_id = fields[1] if fields is not None else record["user_id"]
        home = partition_for_user(user_id.encode("utf-8"), self.settings.partitions)
        if home != message.partition:
            # its user's state is on another partition: deciding here would read none of
            # it (a replay or a producer that partitioned by another count)
            self.dlq(
                message,
                f"record of a user of partition {home} arrived on partition {message.partition}",
            )
            return
        if kind == KIND_OBJECTION:
            try:
                self._on_objection(record, source, message)
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
                if self._post_as_bytes(fields, scanned[1], source, message):
                    return
                _, record = self.codec.decode(message.value, POST)  # scan accepted these bytes
            if kind == KIND_POST:
                self._on_post(record, source, message)
            else:
                self._on_replay(record, source, headers or {}, message)
        except StateNotReady:
            raise  # read again once the state is there (process_one)
        except Exception as exc:  # a post that cannot be decided is not published
            log.exception("cannot decide post at %s", source)
            self.dlq(message, f"internal error: {type(exc).__name__}")

    def _post_as_bytes(
        self, fields: tuple, starts: tuple[int, ...], source: Source, message: Any
    ) -> bool:
        """Decide a checked post of the current schema without building records: its
        outputs are spliced from its bytes (``Codec.splicer``; ``fields`` are its
        ``POST_FIELDS``, ``starts`` where its fields start), the same bytes ``_on_post``
        writes. Returns False, having written nothing, when ``_on_post`` must decide it
        (a live post that is no longer eligible, or no splicers for the current
        schemas)."""
        splices = self._splices or self._make_splices()
        if not splices:
            return False
        post_id, user_id, platform, visibility, country, adult = fields
        partition, policy = message.partition, self.policy
        # _state, without its three calls for the nine users in ten who have no state
        # (2.4% of this thread's instructions per post)
        objected = stored_objects(self.consent.get(partition, user_id.encode("utf-8")), platform)
        reason = policy.reason_of(visibility, adult, country, platform, objected)
        outcome = post_outcome(
            reason, lambda: self.ledger.is_live(partition, user_id, post_id), False
        )
        if outcome is Outcome.RETRACTED:
            return False
        now = _now_ms()
        s, data = self.settings, message.value
        key = post_id.encode()
        assert outcome is not None  # live traffic always gets a decision
        values = decision_values(outcome, reason, policy, now, source, None)
        decision = splices[1](data, starts, *values)
        if outcome is Outcome.PUBLISHED:
            training = splices[0](data, starts, *training_values(policy, now))
            # in the ledger before it is published, so that it is always retractable
            self.ledger.add(partition, user_id, post_id, platform)
            outputs: tuple[tuple[str, Any], ...] = (
                (s.training_topic, training),
                (s.decisions_topic, decision),
            )
        else:
            outputs = ((s.decisions_topic, decision),)
        try:
            for topic, value in outputs:
                self.outputs.produce(topic, key, value)
        except Exception as exc:
            self.output_failed(message, exc)
        self.metrics.decisions[values[:2]] += 1  # (outcome, reason)
        if message.timestamp:
            sent = message.timestamp * self._timestamp_scale
            self.metrics.observe_latency(max(0.0, now / 1000.0 - sent))
        return True

    def _make_splices(self) -> Any:
        """The TrainingRecord and Decision splicers ``_post_as_bytes`` needs, or False
        (posts are decoded from then on) when the schemas do not allow splicing."""
        s = self.settings
        training = self.codec.splicer(POST, TRAINING_RECORD, s.training_topic)
        decision = self.codec.splicer(POST, DECISION, s.decisions_topic)
        # they are called with the values of these fields, in this order
        given = ((training, TRAINING_FIELDS), (decision, DECISION_FIELDS))
        if all(splice is not None and _parameters(splice) == f for splice, f in given):
            self._splices = (training, decision)
        else:
            log.info("posts are decoded and outputs encoded: the schemas do not allow splicing")
            self._splices = False
        return self._splices

    def _state(self, partition: int, user_id: str):
        return decode_state(self.consent.get(partition, user_id.encode("utf-8")))

    def _on_post(self, post: dict[str, Any], source: Source, message: Any) -> None:
        partition, user_id = message.partition, post["user_id"]
        state = self._state(partition, user_id)
        now = _now_ms()
        live = self.ledger.is_live(partition, user_id, post["post_id"])
        self._emit(
            on_post(self.policy, post, state, live, now, source), user_id, partition, message
        )
        if message.timestamp:
            sent = message.timestamp * self._timestamp_scale
            self.metrics.observe_latency(max(0.0, now / 1000.0 - sent))

    def _on_replay(
        self, post: dict[str, Any], source: Source, headers: dict[str, bytes], message: Any
    ) -> None:
        """Re-decide a past post under the current state and policy; emit only changes
        (nothing at all in a dry run), and answer the replay command."""
        replay_id = headers.get(REPLAY_ID, b"").decode() or "unknown"
        dry_run = headers.get(REPLAY_DRY_RUN) == b"1"
        user_id, post_id, partition = post["user_id"], post["post_id"], message.partition
        state = self._state(partition, user_id)
        live = self.ledger.is_live(partition, user_id, post_id)
        fx = on_post(self.policy, post, state, live, _now_ms(), source, replay_id)
        if fx.publish:
            change, reason = "PUBLISHED", "ELIGIBLE"
        elif fx.tombstones:
            change, reason = "RETRACTED", fx.decisions[0]["reason"]
        else:
            change = "UNCHANGED"
            reason = self.policy.reason(post, state.objected(post["platform"])).value
        if not dry_run:
            self._emit(fx, user_id, partition, message)
        answer = {
            "replay_id": replay_id,
            "post_id": post_id,
            "user_id": user_id,
            "change": change,
            "reason": reason,
            "dry_run": dry_run,
            "policy_version": self.policy.version,
        }
        self.outputs.produce(
            self.settings.replay_results_topic, replay_id.encode(), json.dumps(answer).encode()
        )

    def _on_objection(self, event: dict[str, Any], source: Source, message: Any) -> None:
        user_id, partition = event["user_id"], message.partition
        state = self._state(partition, user_id)
        live = self.ledger.live_posts(partition, user_id)
        new_state, fx = on_objection(
            self.policy, state, event, live, _now_ms(), source, self.settings.max_clock_skew_ms
        )
        if fx.clamped_from is not None:
            self.metrics.clamped_events += 1
            log.warning(
                "objection event %s of %s[%d]@%d is dated %d ms ahead; applied at the time read",
                event["event_id"][:100],
                source.topic,
                source.partition,
                source.offset,
                fx.clamped_from - _now_ms(),
            )
        self._emit(fx, user_id, partition, message)
        if fx.tombstones and message.timestamp:  # the objection's record time: retracted
            sent = message.timestamp * self._timestamp_scale
            self.metrics.retraction_latency.observe(max(0.0, _now_ms() / 1000.0 - sent))
        # always written, even when unchanged, so that the changelog converges after a crash
        self.consent.put(partition, user_id.encode("utf-8"), encode_state(new_state))
        self.metrics.objections[event["action"]] += 1

    def _emit(self, fx: Effects, user_id: str, partition: int, message: Any) -> None:
        """Carry out the effects of ``message``: encode every record, add published posts
        to the ledger (a published post is always retractable), produce the records
        (a failure then stops the worker: ``output_failed``), and hold the ledger's
        removals until the tombstones are acknowledged (``Ledger.settle``)."""
        if fx.empty:
            return
        s, enc = self.settings, self.codec.encode
        records: list[tuple[str, bytes, bytes | None]] = [
            (s.training_topic, r["post_id"].encode(), enc(TRAINING_RECORD, r, s.training_topic))
            for r in fx.publish
        ]
        records += [(s.training_topic, post_id.encode(), None) for post_id in fx.tombstones]
        records += [
            (s.retractions_topic, r["user_id"].encode(), enc(RETRACTION, r, s.retractions_topic))
            for r in fx.retractions
        ]
        records += [
            (s.decisions_topic, r["post_id"].encode(), enc(DECISION, r, s.decisions_topic))
            for r in fx.decisions
        ]
        if fx.receipt is not None:  # an objection event's: after its retractions
            r = fx.receipt
            records.append(
                (s.receipts_topic, r["user_id"].encode(), enc(CONSENT_RECEIPT, r, s.receipts_topic))
            )
        for post_id, platform in fx.ledger_add.items():
            self.ledger.add(partition, user_id, post_id, platform)
        try:
            for topic, key, value in records:
                self.outputs.produce(topic, key, value)
        except Exception as exc:
            self.output_failed(message, exc)
        for record in fx.decisions:
            self.metrics.decisions[(record["outcome"], record["reason"])] += 1
        if fx.tombstones:
            self.metrics.retractions += len(fx.retractions)
            self.metrics.retracted_posts += len(fx.tombstones)
        for post_id in fx.ledger_remove:
            self.ledger.remove(partition, user_id, post_id)


class _WithOutputs:
    """A processor as ``native.make_fast_gate`` sees it, with one partition's producer
    (fencing) as its outputs."""

    def __init__(self, processor: Processor, outputs: Any) -> None:
        self._processor = processor
        self.outputs = outputs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._processor, name)


def _picker(names: tuple[str, ...], wanted: tuple[str, ...]) -> Any:
    """A function picking the values of ``wanted`` (a tuple) from values in the order of
    ``names``, or None if one is missing."""
    if not set(wanted) <= set(names):
        return None
    return itemgetter(*(names.index(name) for name in wanted))


def _parameters(splice: Any) -> tuple[str, ...]:
    """The field names a splicer (a partial of a generated function) takes."""
    code = splice.func.__code__
    return code.co_varnames[len(splice.args) + 2 : code.co_argcount]


def _now_ms() -> int:
    return int(time.time() * 1000)
