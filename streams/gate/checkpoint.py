"""The gate's commit protocol, whole, in one class: ``Checkpoint``.

No input offset is committed before its outputs and its table changes are on the
broker; a crash repeats the uncommitted inputs, whose outputs are keyed and idempotent
(at-least-once). The gate commits its own offsets (Faust does not commit the internal
topic). ``runtime/app.py`` calls ``Checkpoint.commit`` on a timer (every second, or
every ``--txn-commit-interval`` with fencing) and once more after Faust's streams have
drained on a clean stop; it waits for ``idle`` before a rebalance changes the
producers. The steps, in order, are in ``commit`` (and in docs/architecture.md, "The
commit protocol").

With fencing (one transactional producer per internal partition), the transactions
commit off the event loop: each in a thread of its own (a flush and an EndTxn round
trip, 10-40 ms on a loaded machine), while the gate goes on with the partitions that
are not committing. A committing partition's records are held here (``hold``) and
processed into its next transaction once its commit has ended (``release``), which
also counts its changelog records for the tables' persisted offsets
(``OutputProducer.finish_commit``). One round at a time; never cancelled halfway
(every commit's end must be seen)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from faust.types import TP

from streams import faust_compat
from streams.gate.offsets import OffsetTracker
from streams.kafka.outputs import OutputProducer
from streams.state.ledger import ForeignChangelogWrite, Ledger, TableState

log = logging.getLogger("streams.enforcer")

# a batch held while its partition commits: (records, timestamp scale, its partition if given)
Held = tuple[list[Any], float, int | None]


class Checkpoint:
    """Commits what the gate has processed: outputs, table changes, then input offsets."""

    def __init__(
        self,
        app: Any,
        topic: str,
        offsets: OffsetTracker,
        ledger: Ledger,
        tables: Sequence[TableState],
        outputs: OutputProducer,
        process: Callable[[list[Any], float, int | None], None],
    ) -> None:
        self.app = app  # its consumer commits the input offsets
        self.topic = topic  # the gate's input topic, the internal one
        self.offsets = offsets
        self.ledger = ledger
        self.tables = tuple(tables)
        self.outputs = outputs
        self.fencing = bool(getattr(outputs, "transactional", False))
        self._process = process  # Processor.process: records released after a commit
        # whether records may be processed now (app._dispatch_to_gate: not while Faust
        # has its flow stopped); held records are dropped when they may not
        self.may_process: Callable[[], bool] = lambda: True
        # with fencing, batches of partitions whose transaction is being committed, in
        # order, as the processor was given them: processed once it has committed
        self.waiting: dict[int, list[Held]] = {}
        # partition -> offset committed, not yet purged from the internal topic
        self.committed: dict[int, int] = {}
        self._round: asyncio.Future | None = None
        # the event loop waits for the transactions' commits instead, as before (A/B
        # measurements only: bench/commit_interval.py)
        self.blocking = os.environ.get("ENFORCER_TXN_COMMIT_BLOCKING", "0") == "1"

    # -- the protocol ----------------------------------------------------------------
    async def commit(self) -> None:
        """Commit what has been processed, in this order:

        1. Wait until no transaction commit is in flight (fencing).
        2. The offsets due: for each partition that moved, the next offset after its
           contiguous run of processed records (``OffsetTracker.to_commit``). Nothing
           to do when none is due and no transaction is open.
        3. ``settle``: flush the output producer, write the ledger removals its
           tombstones made safe, flush again if there were any. With fencing the
           removals go into the open transactions instead.
        4. With fencing, ``commit_transactions``: commit every open transaction (a
           fenced or timed-out commit stops the worker). The offsets due of a
           partition whose commit has not been seen to end are left for next time.
        5. ``persist_table_offsets``: how far each table's changelog is reflected in
           RocksDB (a record of another writer stops the worker before any commit).
        6. Commit the input offsets with Faust's consumer, then record them as
           committed (``OffsetTracker.committed_ok``) and as purgeable.

        A crash between two steps repeats the uncommitted inputs: at-least-once. The
        inputs processed before the commits began are in those transactions; records
        read during them go into the next ones (``hold``)."""
        await self.idle()  # 1
        due = self.offsets.to_commit()  # 2
        if not due and not (self.fencing and self.outputs.in_transaction()):
            return
        self.settle()  # 3
        if self.fencing:  # 4
            await self.commit_transactions()
            # never past a partition whose commit has not been seen to end
            due = {p: o for p, o in due.items() if p not in self.outputs.committing}
        self.persist_table_offsets()  # 5
        if due and await faust_compat.commit_offsets(  # 6
            self.app.consumer, {TP(self.topic, p): o for p, o in due.items()}
        ):
            self.offsets.committed_ok(due)
            self.committed.update(due)

    def settle(self) -> None:
        """Step 3: wait for every output, then write the ledger removals they made safe,
        and wait for those too. With fencing the removals go into the open transaction
        of their tombstones, committed or aborted together with them."""
        if self.fencing:
            self.ledger.settle()
            return
        self.outputs.flush()
        if self.ledger.settle():
            self.outputs.flush()

    async def commit_transactions(self) -> None:
        """Step 4: begin committing every open transaction now, each in a thread (call
        with no commit in flight: ``idle`` first, with no await between); return once
        each has ended."""
        if self._round is not None and not self._round.done():
            raise RuntimeError("a commit is in flight")
        if self.blocking:  # nothing is processed meanwhile, so nothing waits
            self.outputs.commit()
            return
        self._round = asyncio.ensure_future(self._finish(self.outputs.begin_commit()))
        await self.idle()
        self._round.result()  # a failure other than a commit's (those stop the worker)

    async def _finish(self, started: list) -> None:
        async def one(part: Any, done: Any) -> tuple[Any, str | None]:
            return part, await asyncio.wrap_future(done)

        for next_done in asyncio.as_completed([one(part, done) for part, done in started]):
            part, error = await next_done
            self.outputs.finish_commit(part, error)  # stops the worker on an error
            self.release(part.partition)

    def persist_table_offsets(self) -> None:
        """Step 5: tell Faust how far each table's changelog is reflected in RocksDB
        (``TableState.persist_offsets``). A record of another writer among this
        worker's stops the worker before any input offset is committed: the tables are
        restored from the changelog and the inputs processed again."""
        try:
            for table in self.tables:
                table.persist_offsets()
        except ForeignChangelogWrite as exc:
            log.critical("%s; exiting, so that the tables are restored from the changelog", exc)
            logging.shutdown()
            os._exit(70)

    # -- between commits ---------------------------------------------------------------
    async def idle(self) -> None:
        """Wait until no transaction commit is in flight."""
        while self._round is not None and not self._round.done():
            await asyncio.wait([self._round])  # its failure is commit()'s to raise

    def hold(
        self, messages: Iterable[Any], timestamp_scale: float, partition: int | None
    ) -> list[Any]:
        """Keep records of partitions that are committing, or that have records waiting
        already (order), for ``release``; returns the others."""
        waits = self.outputs.committing
        if partition is not None:
            if partition in waits or partition in self.waiting:
                batch = (list(messages), timestamp_scale, partition)
                self.waiting.setdefault(partition, []).append(batch)
                return []
            return list(messages)
        rest = []
        for message in messages:  # a batch of several partitions (Faust's stream path)
            p = message.partition
            if p in waits or p in self.waiting:
                self.waiting.setdefault(p, []).append(([message], timestamp_scale, None))
            else:
                rest.append(message)
        return rest

    def release(self, partition: int) -> None:
        """``partition``'s transaction has committed: process the records that waited for
        it, in order, into its next transaction; or drop them if records may not be
        processed now (a rebalance: the gap makes the partition read them again)."""
        batches = self.waiting.pop(partition, None)
        if not batches or not self.may_process():
            return
        for messages, timestamp_scale, given in batches:
            self._process(messages, timestamp_scale, given)

    def purgeable(self) -> dict[int, int]:
        """The offsets committed since the last call, of partitions still held: the
        internal topic's records below them may be deleted (``kafka/topics.py``)."""
        done = {p: o for p, o in self.committed.items() if p in self.offsets.expected}
        self.committed.clear()
        return done

    def forget(self, partition: int) -> None:
        """A partition assigned anew or revoked: its held records, the ledger removals
        held for it and its tables' own changelog writes are dropped (the next owner
        processes its uncommitted inputs again)."""
        self.waiting.pop(partition, None)
        self.ledger.forget((partition,))
        for table in self.tables:
            table.forget(partition)
