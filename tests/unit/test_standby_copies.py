"""Standby copies kept by the worker's own changelog reader (``runtime/standby.py``):
Faust's recovery never reads a standby partition, a copy is read from the offset it
persisted, and a batch fetched before a change of assignment is never applied. The
broker-level checks are ``tests/test_standby_catchup_kafka.py`` and the chaos test's
local state check."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from faust.types import TP
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.policy import load_policy
from streams.runtime import standby
from streams.runtime.app import build
from streams.serde.codec import Codec
from streams.settings import Settings

TP0 = TP("app-ledger-changelog", 0)
TP1 = TP("app-consent-changelog", 1)


class Table:
    """Faust's table as the copies use it: a persisted offset, apply_changelog_batch."""

    def __init__(self, persisted: dict[TP, int] | None = None) -> None:
        self.persisted = dict(persisted or {})
        self.data: dict[bytes, bytes] = {}

    def persisted_offset(self, tp: TP) -> int | None:
        return self.persisted.get(tp)

    def apply_changelog_batch(self, batch: list[Any]) -> None:
        for event in batch:
            if event.message.value is None:
                self.data.pop(event.message.key, None)
            else:
                self.data[event.message.key] = event.message.value
            self.persisted[event.message.tp] = event.message.offset


class Assignments(list):
    def __call__(self, epoch: int, offsets: Any) -> None:
        self.append((epoch, dict(offsets)))


def test_a_copy_is_read_from_the_offset_it_persisted() -> None:
    assigned = Assignments()
    copies = standby.StandbyCopies(assigned)
    table = Table({TP0: 41})
    copies.stop()
    copies.add(table, TP0)
    copies.add(table, TP1)  # nothing persisted: from the changelog's start
    copies.start()
    assert assigned[-1] == (copies.epoch, {TP0: 42, TP1: 0})


def test_records_at_or_below_the_persisted_offset_are_not_applied_again() -> None:
    copies = standby.StandbyCopies(Assignments())
    table = Table({TP0: 5})
    table.data[b"k"] = b"v5"
    copies.add(table, TP0)
    copies.start()
    copies.apply(copies.epoch, {TP0: [(4, b"k", b"v4"), (5, b"k", b"v5"), (6, b"j", b"v6")]})
    assert table.data == {b"k": b"v5", b"j": b"v6"}
    assert table.persisted[TP0] == 6


def test_a_batch_fetched_before_a_change_of_assignment_is_never_applied() -> None:
    """Faust may close or restore the partition in between (a takeover restores from
    what the copy persisted): a late batch would write behind its back."""
    assigned = Assignments()
    copies = standby.StandbyCopies(assigned)
    table = Table()
    copies.add(table, TP0)
    copies.start()
    fetched_in = copies.epoch
    copies.stop()  # a rebalance begins
    assert assigned[-1] == (copies.epoch, {})
    copies.apply(fetched_in, {TP0: [(0, b"k", b"v")]})
    assert table.data == {}
    copies.add(table, TP0)
    copies.start()
    copies.apply(fetched_in, {TP0: [(0, b"k", b"v")]})
    assert table.data == {}, "an earlier epoch's batch is dropped after a new start too"
    copies.apply(copies.epoch, {TP0: [(0, b"k", b"v")]})
    assert table.data == {b"k": b"v"}


def test_a_partition_no_longer_a_standby_is_not_written() -> None:
    copies = standby.StandbyCopies(Assignments())
    table = Table()
    copies.add(table, TP0)
    copies.start()
    copies.stop()
    copies.add(table, TP1)
    copies.start()
    copies.apply(copies.epoch, {TP0: [(0, b"k", b"v")], TP1: [(0, b"j", b"w")]})
    assert table.data == {b"j": b"w"}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([b"a", b"b", b"c"]), st.one_of(st.none(), st.binary(max_size=3))),
        max_size=40,
    ),
    st.lists(st.integers(min_value=1, max_value=8), max_size=10),
    st.sets(st.integers(min_value=0, max_value=10)),
)
def test_a_copy_equals_its_changelog_at_the_offset_it_persisted(
    changelog: list[tuple[bytes, bytes | None]], batch_sizes: list[int], restarts: set[int]
) -> None:
    """Whatever the batching and however often reading restarts from what was
    persisted (a rebalance), the copy is the changelog's last value per key up to the
    offset it persisted."""
    assigned = Assignments()
    copies = standby.StandbyCopies(assigned)
    table = Table()
    copies.add(table, TP0)
    copies.start()
    position = assigned[-1][1][TP0]
    step = 0
    while position < len(changelog):
        size = batch_sizes[step % len(batch_sizes)] if batch_sizes else 3
        if step in restarts:  # a rebalance: a batch in flight is dropped, read again
            stale = copies.epoch
            copies.stop()
            copies.add(table, TP0)
            copies.start()
            copies.apply(stale, {TP0: [(position, b"x", b"stale")]})
            position = assigned[-1][1][TP0]
        batch = [(o, *changelog[o]) for o in range(position, min(position + size, len(changelog)))]
        copies.apply(copies.epoch, {TP0: batch})
        position += len(batch)
        step += 1
    persisted = table.persisted.get(TP0, -1)
    expected: dict[bytes, bytes] = {}
    for key, value in changelog[: persisted + 1]:
        if value is None:
            expected.pop(key, None)
        else:
            expected[key] = value
    assert table.data == expected
    assert persisted == len(changelog) - 1


def test_the_enforcers_recovery_never_reads_a_standby_partition(tmp_path: Path) -> None:
    """Faust's recovery names its standby partitions to the copies and keeps none of
    its own (it would resume, seek and read them, and lose records)."""

    async def run() -> None:
        settings_ = Settings(bootstrap_servers="127.0.0.1:1", data_dir=tmp_path)
        assert settings_.standby_replicas == 1
        app = build(settings_, load_policy(), Codec()).app
        recovery = app.tables.recovery
        table = next(iter(app.tables.values()))
        owner = recovery.add_standby.__self__  # the StandbyCopies the worker installed
        assert isinstance(owner, standby.StandbyCopies)
        recovery.add_standby(table, TP0)  # what Recovery.on_rebalance does for a standby
        assert owner.named == [(table, TP0)]
        assert not recovery.standby_tps

    asyncio.run(run())


def test_a_copy_the_changelog_no_longer_reaches_is_emptied_and_read_from_the_start() -> None:
    assigned = Assignments()
    emptied: list[TP] = []
    table = Table({TP0: 900})

    def empty(t: Table, tp: TP) -> None:
        emptied.append(tp)
        t.persisted.pop(tp, None)

    copies = standby.StandbyCopies(assigned, empty)
    copies.add(table, TP0)
    copies.start()
    stale = copies.epoch - 1
    copies.read_again_from_start(stale, TP0)  # reported in an earlier epoch: nothing
    assert emptied == []
    copies.read_again_from_start(copies.epoch, TP0)
    assert emptied == [TP0]
    assert assigned[-1] == (copies.epoch, {TP0: 0})
