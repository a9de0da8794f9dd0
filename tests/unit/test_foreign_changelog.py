"""A table's persisted changelog offset moves only over this worker's own writes (issue
17 (b)): a worker frozen past its session timeout and resumed (a zombie), or the owner
it was replaced by, must not persist an offset past records of the other writer, or
recovery would start after them and the table would never have them (a ledger missing
a live post cannot retract it)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from faust.types import TP

from streams.kafka.outputs import OutputProducer
from streams.state.ledger import ForeignChangelogWrite, TableState

TOPIC = "app-ledger-changelog"


class Store:
    """Faust's RocksDB store as TableState uses it: open partitions and their offsets."""

    def __init__(self, persisted: dict[int, int | None]) -> None:
        self._dbs = {p: object() for p in persisted}
        self.persisted = dict(persisted)

    def persisted_offset(self, tp) -> int | None:
        return self.persisted.get(tp.partition)

    def set_persisted_offset(self, tp, offset: int) -> None:
        self.persisted[tp.partition] = offset


def outputs() -> OutputProducer:
    out = OutputProducer.__new__(OutputProducer)  # no producer: deliveries are simulated
    out.changelog_offsets, out.changelog_runs, out._changelogs = {}, {}, set()
    out._uncommitted, out.committing = {}, set()
    return out


def delivered(out: OutputProducer, partition: int, *offsets: int) -> None:
    for offset in offsets:
        msg = SimpleNamespace(
            topic=lambda: TOPIC, partition=lambda: partition, offset=lambda o=offset: o
        )
        out._delivered(None, msg)


def state(persisted: dict[int, int | None]) -> tuple[TableState, Store, OutputProducer]:
    store, out = Store(persisted), outputs()
    return TableState(SimpleNamespace(data=store), TOPIC, out), store, out


def test_own_contiguous_writes_move_the_offset() -> None:
    table, store, out = state({0: 9, 1: None})
    delivered(out, 0, 10, 11, 12)
    delivered(out, 1, 0, 1)
    table.persist_offsets()
    assert store.persisted == {0: 12, 1: 1}
    delivered(out, 0, 13)
    table.persist_offsets()
    assert store.persisted[0] == 13


def test_records_of_another_writer_stop_the_offset_before_them() -> None:
    # the table reflects the changelog up to 9; another worker wrote 10..14 while this
    # one was frozen; this one (the zombie) then wrote 15 and 16
    table, store, out = state({0: 9})
    delivered(out, 0, 15, 16)
    with pytest.raises(ForeignChangelogWrite, match=r"offsets 10\.\.16 have 5 records"):
        table.persist_offsets()
    assert store.persisted[0] == 9  # recovery reads 10..14 again


def test_interleaved_writes_of_another_writer_are_seen() -> None:
    # the interim owner's side: its own 10, 11, 13; 12 is the resumed zombie's
    table, store, out = state({0: 9})
    delivered(out, 0, 10, 11, 13)
    with pytest.raises(ForeignChangelogWrite):
        table.persist_offsets()
    assert store.persisted[0] == 9


def test_writes_recovery_already_read_do_not_move_it() -> None:
    # a rebalance between the writes and their delivery reports: recovery read up to 20
    table, store, out = state({0: 20})
    delivered(out, 0, 18, 19)
    table.persist_offsets()
    assert store.persisted[0] == 20


def test_a_partition_assigned_anew_counts_afresh() -> None:
    table, store, out = state({0: 9})
    delivered(out, 0, 10)
    table.forget(0)
    store.persisted[0] = 30  # recovered again, up to 30
    delivered(out, 0, 31)
    table.persist_offsets()
    assert store.persisted[0] == 31


def test_a_compacted_tail_read_by_recovery_is_no_foreign_write() -> None:
    # recovery read to 14 (its highwater) but the last record it applied was 11: 12..14
    # were compacted away; this worker's first write is 15
    table, store, out = state({0: 11})
    table.table.app = SimpleNamespace(
        tables=SimpleNamespace(recovery=SimpleNamespace(active_highwaters={TP(TOPIC, 0): 14}))
    )
    delivered(out, 0, 15, 16)
    table.persist_offsets()
    assert store.persisted[0] == 16


def test_with_fencing_transaction_markers_between_own_writes_are_no_foreign_write() -> None:
    # fencing on: each commit leaves a marker after the partition's records (13, 16), and
    # no other worker can write here after this one's init_transactions; the offset
    # moves to the last own write. (A fenced zombie's writes fail: it stops, its
    # transaction is aborted and read_committed recovery never restores it.)
    table, store, out = state({0: 9})
    out.transactional = True
    committed = SimpleNamespace(partition=0, open=True, committing=True)
    delivered(out, 0, 11, 12)  # 10: the end record written on assignment (mark_ends)
    table.persist_offsets()
    assert store.persisted[0] == 9  # its transaction is not committed yet
    out.finish_commit(committed, None)
    table.persist_offsets()
    assert store.persisted[0] == 12
    delivered(out, 0, 14, 15)
    out.finish_commit(committed, None)
    table.persist_offsets()
    assert store.persisted[0] == 15
