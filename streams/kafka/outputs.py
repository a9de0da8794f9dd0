"""Every record the gate writes goes through one confluent-kafka (librdkafka) producer.

aiokafka's producer costs tens of microseconds a record in Python; librdkafka
batches in C. Faust owns consuming, assignment and table recovery; the gate commits
its input offsets itself, and flushes this producer first, so no input offset is
committed before its outputs are on the broker (at-least-once; ``gate/checkpoint.py``).

A record the broker refuses after every retry stops the process before the next
commit, so that the input is processed again after restart.

With fencing (``--fencing on``) every record the gate writes for an input of internal
partition p goes through p's own transactional producer (``transactional.id =
<app-id>-gate-<p>``), created and initialised when p is assigned, before its tables
are restored: the new owner's ``init_transactions`` fences any earlier producer of p
(a worker that was frozen past its session timeout), whose writes then fail and are
never visible to ``read_committed`` readers. The gate selects p's producer (``use``)
before it processes p's records; its commit commits every open transaction
(``begin_commit``/``finish_commit``, in threads, the gate going on meanwhile with the
other partitions) before it persists table offsets and commits input offsets. Nothing
is produced through a producer while its transaction commits (``use`` is False; the
gate holds the partition's records until then: ``gate/checkpoint.py``), and only
changelog records of committed transactions count for the persisted table offsets
(``changelog_runs``). Any failure of a transactional call is fatal: the worker stops
(exit 70) with nothing more committed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streams.core.records import MAX_ID_BYTES
from streams.kafka.connection import librdkafka_config
from streams.settings import Settings

log = logging.getLogger("streams.outputs")


def producer_config(settings: Settings) -> dict[str, Any]:
    """Every producer of the worker (outputs and re-keying): idempotent, acknowledged by
    all replicas, lightly batched, uncompressed (the gate's aiokafka consumer reads the
    internal topic without extra codec libraries)."""
    role = {
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
    return librdkafka_config(settings, role)


TXN_TIMEOUT = 60.0  # seconds a transactional call may take before the worker stops (as flush)
TXN_LINGER_MS = 50  # linger.ms of the transactional producers (at least)


def transactional_id(settings: Settings, partition: int) -> str:
    """The transactional id of the gate's producer for one internal partition."""
    return f"{settings.app_id}-gate-{partition}"


class Partition:
    """One internal partition's transactional producer (fencing on)."""

    def __init__(self, partition: int, producer: Producer, when_room: Any) -> None:
        self.partition = partition
        self.producer = producer
        self.raw_produce = producer.produce  # what the native fast path calls
        self.produce_when_room = when_room
        self.open = False  # a transaction has begun and is not committed yet
        self.committing = False  # its commit has begun and has not ended (begin_commit)
        self.fast: Any = None  # the native fast path made with this producer


# the key of mark_ends' tombstones, in no table: in a ledger key the first two bytes are
# the user id's length (never 0), a consent key is a user id (at most MAX_ID_BYTES)
END_KEY = b"\x00\x00enforcer.end-of-changelog".ljust(MAX_ID_BYTES + 1, b".")
_PURGED = (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)


def _extend(runs: dict, key: Any, first: int, last: int, count: int) -> None:
    """Widen ``runs[key]``, [first, last, count] of offsets written, by another run."""
    run = runs.get(key)
    if run is None:
        runs[key] = [first, last, count]
    else:
        run[0] = min(run[0], first)
        run[1] = max(run[1], last)
        run[2] += count


def _not_routed(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("no partition selected for this record (OutputProducer.use)")


class OutputProducer:
    """The gate's producer: synchronous ``produce``, ``flush`` before commits."""

    transactional = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.transactional = settings.fencing
        self.partitions: dict[int, Partition] = {}
        # each called with the partitions whose open transactions are about to be
        # aborted (revoked): their tables' local writes go too (TableState). A worker
        # that stops leaves its tables marked instead (state/ledger.py, DIRTY_KEY).
        self.on_abort: list[Callable[[list[int]], None]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._plain: Producer | None = None  # mark_ends
        if self.transactional:
            self.producer: Any = None  # the selected partition's (use)
            self.raw_produce: Any = _not_routed
        else:
            # one delivery callback for the producer rather than one object per record
            self.producer = Producer({**producer_config(settings), "on_delivery": self._delivered})
            # librdkafka's produce, positional (topic, value, key[, partition]); it
            # raises BufferError when its queue is full (then: produce_when_room)
            self.raw_produce = self.producer.produce
        self.changelog_offsets: dict[tuple[str, int], int] = {}
        # (topic, partition) -> [first, last, count] of the offsets this producer wrote
        # since the table last persisted its offset (TableState.persist_offsets): a run
        # that is not contiguous from the persisted offset has records of another writer
        self.changelog_runs: dict[tuple[str, int], list[int]] = {}
        # with fencing, the same per partition for records of its transaction not yet
        # committed (the changelog partition is the producer's partition); moved into
        # changelog_runs when it commits, dropped when it is aborted
        self._uncommitted: dict[int, dict[str, list[int]]] = {}
        # partitions whose transaction is being committed (begin_commit, finish_commit)
        self.committing: set[int] = set()
        self._changelogs: set[str] = set()

    def track_changelog(self, topic: str) -> None:
        """Remember the highest delivered offset of this topic's partitions."""
        self._changelogs.add(topic)

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            if self.transactional and err.code() in _PURGED:
                return  # a record of a transaction aborted on revocation (drop)
            if self.transactional:
                self._fatal(f"could not deliver a record to {msg.topic()} ({err.str()})")
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
            if self.transactional:  # counted once its transaction commits
                # (served by a commit's thread or by the gate's poll, one partition each)
                _extend(self._uncommitted.setdefault(key[1], {}), topic, offset, offset, 1)
            else:
                _extend(self.changelog_runs, key, offset, offset, 1)

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
        if self.producer is not None:
            self.producer.poll(0)

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until the broker has every queued record; exit if it cannot."""
        producers = (
            [part.producer for part in self.partitions.values()]
            if self.transactional
            else [self.producer]
        )
        remaining = sum(producer.flush(timeout) for producer in producers)
        if remaining:
            log.critical("%d records not delivered within %.0fs; exiting", remaining, timeout)
            logging.shutdown()
            os._exit(70)

    # -- fencing: one transactional producer per internal partition ----------------
    def use(self, partition: int) -> bool:
        """Write what follows with ``partition``'s producer, in its open transaction
        (begun here if none is). False when this worker has no producer for it (not
        assigned here, or not yet initialised): nothing of it may be written now.
        Without fencing there is one producer, always usable."""
        if not self.transactional:
            return True
        part = self.partitions.get(partition)
        if part is None or part.committing:
            return False
        if not part.open:
            try:
                part.producer.begin_transaction()
            except KafkaException as exc:
                self._fatal(f"partition {partition}: cannot begin a transaction: {exc}")
            part.open = True
        self.producer = part.producer
        self.raw_produce = part.raw_produce
        return True

    def in_transaction(self) -> bool:
        """True when a transaction is open (fencing on)."""
        return any(part.open for part in self.partitions.values())

    def commit(self) -> None:
        """Commit every open transaction and wait for them (``begin_commit``, then
        ``finish_commit`` of each, a failed one first: every other is still open then)."""
        ended = [(part, done.result()) for part, done in self.begin_commit()]
        for part, error in sorted(ended, key=lambda ended: ended[1] is None):
            self.finish_commit(part, error)

    def begin_commit(self) -> list[tuple[Partition, Future]]:
        """Start committing every open transaction, each in a thread of its own (their
        records become visible to ``read_committed`` readers); returns each partition
        with the future of its commit (an error line or None), for ``finish_commit``.
        Until then nothing can be produced through those producers (``use`` is False):
        a record produced after the commit began belongs to the next transaction."""
        due = [part for part in self.partitions.values() if part.open and not part.committing]
        self.producer, self.raw_produce = None, _not_routed
        if not due:
            return []
        for part in due:
            part.committing = True
            self.committing.add(part.partition)
        pool = self._executor()
        return [(part, pool.submit(self._commit_one, part)) for part in due]

    def finish_commit(self, part: Partition, error: str | None) -> None:
        """A commit of ``begin_commit`` has ended (on the gate's thread): stop the worker
        if it failed or timed out (fenced by a new owner, or an EndTxn whose outcome is
        unknown and whose late arrival could apply to a later transaction: librdkafka has
        no KIP-890); else its changelog records count for the tables' persisted offsets
        and the producer may begin its next transaction."""
        if error is not None:
            self._fatal(error)
        for topic, (first, last, count) in self._uncommitted.pop(part.partition, {}).items():
            _extend(self.changelog_runs, (topic, part.partition), first, last, count)
        part.open = part.committing = False
        self.committing.discard(part.partition)

    def _commit_one(self, part: Partition) -> str | None:
        try:
            part.producer.commit_transaction(TXN_TIMEOUT)
        except KafkaException as exc:
            return f"partition {part.partition}: transaction commit failed: {exc}"
        except Exception as exc:  # anything else is as fatal
            return f"partition {part.partition}: transaction commit failed: {exc!r}"
        return None

    def start(self, partitions: Iterable[int]) -> list[Partition]:
        """Transactional producers for ``partitions``, each initialised, which fences
        every earlier producer of the same transactional id and completes or aborts its
        open transaction. Blocking (run it in an executor); the caller registers them
        in ``self.partitions`` (``add``) on the event loop's thread."""
        config = {**producer_config(self.settings), "on_delivery": self._delivered}
        config["transaction.timeout.ms"] = 60000
        # its records are visible only once committed (every --txn-commit-interval,
        # and a commit flushes what lingers): batching longer
        # adds no latency a read_committed reader sees, and saves the broker requests
        # (8 producers at 5 ms: 30-38% fewer posts/s than without fencing; at 50 ms: 0-7%)
        config["linger.ms"] = max(config["linger.ms"], TXN_LINGER_MS)

        def start(partition: int) -> str | Partition:
            producer = Producer(
                {**config, "transactional.id": transactional_id(self.settings, partition)}
            )
            try:
                producer.init_transactions(TXN_TIMEOUT)
            except KafkaException as exc:
                return f"partition {partition}: init_transactions failed: {exc}"
            return Partition(partition, producer, self.produce_when_room)

        parts = []
        for result in self._each(list(partitions), start):
            if isinstance(result, str):
                self._fatal(result)
            parts.append(result)
        return parts

    def add(self, parts: Iterable[Partition]) -> None:
        """Register initialised producers (``start``)."""
        for part in parts:
            old = self.partitions.pop(part.partition, None)
            if old is not None:
                self.drop_parts([old])
            self.partitions[part.partition] = part

    def mark_ends(self, topics: Iterable[str], partitions: Iterable[int]) -> None:
        """Write one tombstone of a key no table has (``END_KEY``), outside any
        transaction, to each partition of the changelog ``topics``; blocking. Faust's
        recovery reads a changelog to the offset before its last stable offset and waits
        for a record there: after a transaction that is its commit marker, which no
        consumer ever receives, and recovery would never end. This record is received."""
        if self._plain is None:
            self._plain = Producer(producer_config(self.settings))
        for topic in topics:
            for partition in partitions:
                self._plain.produce(topic, None, END_KEY, partition)
        if self._plain.flush(TXN_TIMEOUT):
            self._fatal("could not write the changelogs' end-of-recovery records")

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget the producers of partitions that are revoked: an open transaction is
        aborted (its inputs are processed again by the next owner; a producer already
        fenced cannot abort, which changes nothing)."""
        self.drop_parts([self.partitions.pop(p) for p in list(partitions) if p in self.partitions])

    def drop_parts(self, parts: list[Partition]) -> None:
        """Abort the open transactions of producers no longer used, and let them go."""
        if self.producer is not None and any(part.producer is self.producer for part in parts):
            self.producer, self.raw_produce = None, _not_routed
        for part in parts:  # records of aborted transactions never count
            self._uncommitted.pop(part.partition, None)
        aborted = [part.partition for part in parts if part.open]
        if aborted:
            for discard in self.on_abort:
                discard(aborted)

        def close(part: Partition) -> None:
            try:
                if part.open:
                    part.open = False
                    part.producer.abort_transaction(TXN_TIMEOUT)
                part.producer.flush(0)
            except KafkaException as exc:
                log.warning("partition %d: abort on revocation: %s", part.partition, exc)

        self._each(parts, close)

    def _each(self, items: list, function: Any) -> list:
        """``function`` over ``items``, in parallel threads when several: each is a round
        trip to the broker."""
        if len(items) <= 1:
            return [function(item) for item in items]
        return list(self._executor().map(function, items))

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(8, thread_name_prefix="enforcer-txn")
        return self._pool

    def _fatal(self, line: str) -> None:
        # the tables of open transactions keep their DIRTY_KEY: emptied when next opened
        log.critical("%s; exiting, nothing more is committed", line)
        logging.shutdown()
        os._exit(70)
