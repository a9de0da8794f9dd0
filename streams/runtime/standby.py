"""Standby copies of table partitions, kept from their changelogs by the worker's own
reader instead of Faust's recovery loop.

Faust assigns a worker standby partitions (``--standby-replicas``) and, left alone,
reads them through the app's consumer, its drain loop and its recovery loop. Long chaos
runs found four ways that path silently loses changelog records (a queue emptied on
resume, records handed out after a seek, records dropped by the drain loop, and one
more not found: ``docs/operations.md``, "Standby replicas and failover"); a standby
copy without them, taken over, publishes posts of users who objected. Faust still
decides *which* partitions are standbys here (its assignor); what they hold is kept
by ``StandbyReader``, a librdkafka consumer on its own thread that is assigned exactly
those partitions from the offset each copy persisted, and hands every fetched batch,
in order, to the event loop, where ``StandbyCopies.apply`` writes it with Faust's own
``apply_changelog_batch`` (the records and the persisted offset). librdkafka delivers
an assigned partition's records in order without gaps, so a copy always holds its
changelog up to the offset it persisted, which is what a takeover restores from.

Every change of assignment starts a new epoch on the event loop, where the copies are
applied too: a batch fetched in an earlier epoch is dropped unapplied, and the next
epoch's reads start from what the databases persisted, so nothing is applied twice out
of order and nothing is skipped. Nothing is applied while Faust rebalances: reading
stops when its streams drain for a revocation or a stop and at the start of every
assignment, before Faust opens, closes or restores a partition.

A standby copy that lags or stops only makes a takeover read more of the changelog:
errors here are logged and retried, never a reason to stop the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from faust.types import TP

from streams import faust_compat
from streams.faust_compat import ChangelogEvent
from streams.state.ledger import wipe

log = logging.getLogger(__name__)

# at most this many fetched batches wait for the event loop (the reader then waits)
IN_FLIGHT = 4
# records per fetch handed to the event loop at once
BATCH = 1000


@dataclass
class Copy:
    """One standby copy: its table and the last changelog offset applied (-1: none)."""

    table: Any
    applied: int


Record = tuple[int, "bytes | None", "bytes | None"]  # offset, key, value
Assign = Callable[[int, Mapping[TP, int]], None]  # epoch, partition -> first offset


def empty_partition(table: Any, tp: TP) -> None:
    """Delete everything a table partition holds here, its persisted offset too."""
    db = faust_compat.open_partitions(table).get(tp.partition)
    if db is not None:
        wipe(db)


class StandbyCopies:
    """The standby copies this worker keeps, on the event loop: Faust's recovery names
    them (``add``, in place of its own ``add_standby``), ``start`` has the reader read
    them from what they persisted, ``apply`` writes what it fetched."""

    def __init__(self, assign: Assign, empty: Callable[[Any, TP], None] | None = None) -> None:
        self.assign = assign
        self.empty = empty or empty_partition
        self.epoch = 0
        self.copies: dict[TP, Copy] = {}
        self.named: list[tuple[Any, TP]] = []

    def add(self, table: Any, tp: TP) -> None:
        """A partition Faust's recovery assigned this worker as a standby."""
        self.named.append((table, tp))

    def stop(self) -> None:
        """Apply nothing more until ``start``; the reader drops its partitions."""
        self.epoch += 1
        self.named = []
        if self.copies:
            self.copies = {}
            self.assign(self.epoch, {})

    def start(self) -> None:
        """Read the standbys named since ``stop`` from the offset each copy persisted."""
        self.epoch += 1
        copies: dict[TP, Copy] = {}
        for table, tp in self.named:
            persisted = table.persisted_offset(tp)
            copies[tp] = Copy(table, -1 if persisted is None else int(persisted))
        self.named = []
        self.copies = copies
        self.assign(self.epoch, {tp: copy.applied + 1 for tp, copy in copies.items()})
        if copies:
            log.info(
                "standby copies of %d changelog partitions, read from %s",
                len(copies),
                ", ".join(f"{t.topic}[{t.partition}]@{c.applied + 1}" for t, c in copies.items()),
            )

    def read_again_from_start(self, epoch: int, tp: TP) -> None:
        """The changelog no longer has the offset after the one the copy persisted (the
        topic was deleted and made again, or its log truncated): what the copy holds may
        not be in the changelog any more, so it is emptied and read from the start."""
        copy = self.copies.get(tp) if epoch == self.epoch else None
        if copy is None:
            return
        log.warning(
            "%s[%d]: the changelog has no offset %d any more; the standby copy is emptied "
            "and read again from the changelog's start",
            tp.topic,
            tp.partition,
            copy.applied + 1,
        )
        self.empty(copy.table, tp)
        self.restart()

    def restart(self) -> None:
        """Read every copy again from what it persisted, in a new epoch."""
        self.named = [(c.table, t) for t, c in self.copies.items()]
        self.start()

    def apply(self, epoch: int, batches: Mapping[TP, list[Record]]) -> None:
        """Write a fetched batch to the copies, if it was fetched in this epoch."""
        if epoch != self.epoch:
            return
        for tp, records in batches.items():
            copy = self.copies.get(tp)
            if copy is None:
                continue
            todo = [ChangelogEvent(tp, o, k, v) for o, k, v in records if o > copy.applied]
            if todo:
                copy.table.apply_changelog_batch(todo)
                copy.applied = todo[-1].offset


class StandbyReader:
    """A librdkafka consumer on its own thread reading the standby partitions it is
    assigned (no group membership, no commits) and handing each fetched batch, with the
    epoch it was assigned in, to ``deliver`` (``StandbyCopies.apply`` on the loop)."""

    def __init__(
        self,
        config: Mapping[str, Any],
        deliver: Callable[[int, dict[TP, list[Record]], Callable[[], None]], None],
        out_of_range: Callable[[int, TP], None],
    ) -> None:
        self.config = {
            **config,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            # an offset the changelog no longer has is reported, never skipped over
            "auto.offset.reset": "error",
        }
        self.deliver = deliver
        self.out_of_range = out_of_range
        self.commands: queue.Queue[tuple[int, dict[TP, int]] | None] = queue.Queue()
        self.in_flight = threading.Semaphore(IN_FLIGHT)
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def assign(self, epoch: int, offsets: Mapping[TP, int]) -> None:
        """Read these partitions from these offsets from now on (none: read nothing)."""
        if offsets and self.thread is None:
            self.thread = threading.Thread(target=self._run, name="standby-reader", daemon=True)
            self.thread.start()
        self.commands.put((epoch, dict(offsets)))

    def close(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self.commands.put(None)
        if self.thread is not None:
            self.thread.join(timeout)

    def _newest_command(self, wait: bool) -> tuple[int, dict[TP, int]] | bool | None:
        """The newest assignment asked for (False: none since; None: close)."""
        newest: tuple[int, dict[TP, int]] | bool = False
        try:
            item = self.commands.get(timeout=0.5) if wait else self.commands.get_nowait()
            while True:
                if item is None:
                    return None
                newest = item
                item = self.commands.get_nowait()
        except queue.Empty:
            return newest

    def _run(self) -> None:
        from confluent_kafka import Consumer, KafkaError, TopicPartition

        consumer = Consumer(self.config)
        epoch, assigned = 0, dict[TP, int]()
        pending_eof: set[TP] = set()
        started = time.monotonic()
        errors_logged = 0.0
        try:
            while not self.stopping.is_set():
                command = self._newest_command(wait=not assigned)
                if command is None:
                    return
                if command is not False:
                    assert isinstance(command, tuple)
                    epoch, assigned = command
                    if assigned:
                        consumer.assign(
                            [TopicPartition(t.topic, t.partition, o) for t, o in assigned.items()]
                        )
                    else:
                        consumer.unassign()
                    pending_eof = set(assigned)
                    started = time.monotonic()
                if not assigned:
                    continue
                batches: dict[TP, list[Record]] = {}
                for message in consumer.consume(BATCH, timeout=0.2):
                    tp = TP(message.topic(), message.partition())
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            if tp in pending_eof:
                                pending_eof.discard(tp)
                                if not pending_eof:
                                    log.info(
                                        "standby copies of %d partitions caught up with "
                                        "their changelogs in %.1f s",
                                        len(assigned),
                                        time.monotonic() - started,
                                    )
                        elif error.code() == KafkaError._AUTO_OFFSET_RESET:
                            self.out_of_range(epoch, tp)
                        elif time.monotonic() - errors_logged > 10:
                            errors_logged = time.monotonic()
                            log.warning("standby reader: %s (retried)", error)
                        continue
                    batches.setdefault(tp, []).append(
                        (message.offset(), message.key(), message.value())
                    )
                if batches:
                    while not self.in_flight.acquire(timeout=0.5):
                        if self.stopping.is_set():
                            return
                    self.deliver(epoch, batches, self.in_flight.release)
        except Exception:  # a standby copy that stops only makes a takeover read more
            log.exception("standby reader stopped; standby copies are no longer kept")
        finally:
            consumer.close()


def install(app: Any, config: Mapping[str, Any]) -> StandbyCopies:
    """Keep the app's standby copies with a ``StandbyReader`` (librdkafka ``config``:
    the worker's connection, read_committed with fencing) instead of Faust's recovery
    loop. Call after every other wrapper of ``app.tables.on_rebalance``, so that reading
    stops before any of them runs."""
    loop_box: list[Any] = []

    def deliver(epoch: int, batches: dict[TP, list[Record]], done: Callable[[], None]) -> None:
        def run() -> None:
            try:
                copies.apply(epoch, batches)
            except Exception:  # a write refused: read again from what was persisted
                log.exception("standby copies: a batch could not be written; read again")
                copies.restart()
            finally:
                done()

        try:
            loop_box[0].call_soon_threadsafe(run)
        except RuntimeError:  # the loop is closed: the worker is stopping
            done()

    def out_of_range(epoch: int, tp: TP) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: the worker is stopping
            loop_box[0].call_soon_threadsafe(copies.read_again_from_start, epoch, tp)

    reader = StandbyReader(config, deliver, out_of_range)
    copies = StandbyCopies(reader.assign)
    faust_compat.take_standbys(app, copies.add)

    restore = app.tables.on_rebalance

    async def on_rebalance(
        assigned: Any, revoked: Any, newly_assigned: Any, generation_id: int = 0
    ) -> None:
        if not loop_box:
            loop_box.append(asyncio.get_running_loop())
        copies.stop()
        await restore(assigned, revoked, newly_assigned, generation_id)
        copies.start()

    app.tables.on_rebalance = on_rebalance

    async def stop_reading() -> None:
        copies.stop()

    faust_compat.after_streams_drained(app, stop_reading)

    @app.on_before_shutdown.connect
    def close_reader(app: Any, **kwargs: Any) -> None:
        copies.stop()
        reader.close()

    return copies
