"""The gate's commit protocol (``gate/checkpoint.py``), its steps in order: outputs
flushed, held ledger removals written (and flushed), with fencing the transactions
committed, the tables' changelog offsets persisted, and only then the input offsets
committed; nothing when nothing is due; a foreign changelog write stops the worker
before any input offset is committed. No Kafka: every part is a recording stand-in
(the transactions' commits off the event loop: ``test_txn_commits.py``)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

import streams.gate.checkpoint as checkpoint_module
from streams.gate.checkpoint import Checkpoint
from streams.gate.offsets import OffsetTracker
from streams.state.ledger import ForeignChangelogWrite

TOPIC = "app-user-events-repartition"


class Log(list):
    """Every step, in the order it happens."""


class Outputs:
    def __init__(self, log: Log, transactional: bool = False, open_: bool = False) -> None:
        self.log, self.transactional, self.open = log, transactional, open_
        self.committing: set[int] = set()

    def flush(self) -> None:
        self.log.append("flush")

    def in_transaction(self) -> bool:
        return self.open

    def commit(self) -> None:  # fencing, ENFORCER_TXN_COMMIT_BLOCKING=1
        self.log.append("commit transactions")
        self.open = False


class Ledger:
    def __init__(self, log: Log, held: int) -> None:
        self.log, self.held = log, held

    def settle(self) -> int:
        self.log.append(f"write {self.held} held removals")
        held, self.held = self.held, 0
        return held

    def forget(self, partitions) -> None:
        self.log.append(f"ledger forgets {list(partitions)}")


class Table:
    def __init__(self, log: Log, name: str, foreign: bool = False) -> None:
        self.log, self.name, self.foreign = log, name, foreign

    def persist_offsets(self) -> None:
        if self.foreign:
            raise ForeignChangelogWrite(f"{self.name}-changelog[0]: another writer")
        self.log.append(f"persist {self.name}")

    def forget(self, partition: int) -> None:
        self.log.append(f"{self.name} forgets {partition}")


def _checkpoint(
    held: int = 1, processed: int = 2, fencing: bool = False, open_: bool = False, foreign=False
) -> tuple[Checkpoint, Log]:
    log = Log()

    async def commit(offsets):
        log.append(f"commit offsets {sorted((tp.partition, o) for tp, o in offsets.items())}")
        assert all(tp.topic == TOPIC for tp in offsets)
        return True

    app = SimpleNamespace(consumer=SimpleNamespace(_commit=commit))
    offsets = OffsetTracker()
    offsets.start(0, 0)
    offsets.start(1, 7)
    for offset in range(processed):
        offsets.admit(0, offset)
    tables = (Table(log, "consent"), Table(log, "ledger", foreign))
    outputs = Outputs(log, fencing, open_)
    checkpoint = Checkpoint(
        app, TOPIC, offsets, Ledger(log, held), tables, outputs, lambda *batch: None
    )
    return checkpoint, log


def test_outputs_and_removals_then_table_offsets_then_input_offsets() -> None:
    checkpoint, log = _checkpoint(held=1)
    asyncio.run(checkpoint.commit())
    assert log == [
        "flush",
        "write 1 held removals",
        "flush",  # the removals' changelog records too
        "persist consent",
        "persist ledger",
        "commit offsets [(0, 2)]",
    ]
    assert checkpoint.offsets.to_commit() == {}
    assert checkpoint.purgeable() == {0: 2} and checkpoint.purgeable() == {}


def test_no_second_flush_without_removals_and_nothing_when_nothing_is_due() -> None:
    checkpoint, log = _checkpoint(held=0)
    asyncio.run(checkpoint.commit())
    assert log == [
        "flush",
        "write 0 held removals",
        "persist consent",
        "persist ledger",
        "commit offsets [(0, 2)]",
    ]
    log.clear()
    asyncio.run(checkpoint.commit())
    assert log == []


def test_with_fencing_the_transactions_commit_before_the_table_offsets(monkeypatch) -> None:
    monkeypatch.setenv("ENFORCER_TXN_COMMIT_BLOCKING", "1")  # the commit without threads
    checkpoint, log = _checkpoint(held=1, fencing=True, open_=True)
    asyncio.run(checkpoint.commit())
    assert log == [
        "write 1 held removals",  # into the open transactions: no flush
        "commit transactions",
        "persist consent",
        "persist ledger",
        "commit offsets [(0, 2)]",
    ]
    # an open transaction is committed even when no input offset moved
    log.clear()
    checkpoint.outputs.open = True
    asyncio.run(checkpoint.commit())
    assert log == [
        "write 0 held removals",
        "commit transactions",
        "persist consent",
        "persist ledger",
    ]


class Exited(SystemExit):
    pass


def test_a_foreign_changelog_write_stops_the_worker_before_any_input_offset(monkeypatch):
    def exit_(code: int) -> None:
        raise Exited(code)

    monkeypatch.setattr(checkpoint_module.os, "_exit", exit_)
    checkpoint, log = _checkpoint(foreign=True)
    with pytest.raises(Exited) as exited:
        asyncio.run(checkpoint.commit())
    assert exited.value.code == 70
    assert log == ["flush", "write 1 held removals", "flush", "persist consent"]
    assert checkpoint.offsets.to_commit() == {0: 2} and checkpoint.purgeable() == {}


def test_a_partition_forgotten_drops_what_waited_to_be_committed() -> None:
    checkpoint, log = _checkpoint()
    checkpoint.waiting[0] = [([object()], 0.001, 0)]
    checkpoint.forget(0)
    assert checkpoint.waiting == {}
    assert log == ["ledger forgets [0]", "consent forgets 0", "ledger forgets 0"]
