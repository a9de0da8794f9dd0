"""With fencing, a partition's transaction aborted on revocation (``OutputProducer.drop``)
must leave no trace in the worker's tables: its changelog records are aborted, so its
RocksDB writes must be undone too.

Found by the long chaos run of 2026-12-02 (results 20261202T152207Z): ``enforcer verify``
reported three ``receipt_state`` violations and 13 events whose *first* committed
ConsentReceipt was ``IGNORED_REPEATED_EVENT_ID``, which only a state holding an event
whose receipt was never committed can write. The sequence: a worker applies objection
events of partition p into p's open transaction (RocksDB written at once, changelog and
receipts in the transaction); a rebalance revokes p before the next commit and the
transaction is aborted; p is assigned to the same worker again, whose RocksDB for p was
never reset (Faust restores only from the persisted offset, which is before the aborted
records, and no committed record after it names those users); the inputs are processed
again from the committed offset on a state that already holds them: each event is
"repeated", and its receipt reports the state after the later events of the aborted
span (objected where the committed receipts say not, or the reverse). Posts decided in
that window see the later events too: a WITHDRAW not yet applied in input order can
publish a post of a user still objecting by the receipts.

The same held when the worker stopped for a failed transactional call or was killed:
RocksDB (without a write-ahead log) may have flushed writes whose transaction never
committed, and a restore from the persisted offset overwrites only the keys that have a
committed record after it. Fixed by ``DIRTY_KEY`` (``state/ledger.py``): written before
the first write after a commit, deleted once the writes are committed; a partition
aborted on revocation is emptied at once, one still marked when opened is emptied there,
and Faust restores both from the changelog."""

from __future__ import annotations

from streams.core.consent import decode_state
from streams.kafka.outputs import Partition
from streams.serde.codec import CONSENT_RECEIPT
from streams.state.ledger import DIRTY_KEY, ChangelogBackedOptions
from tests.unit.test_fencing import CODEC, FakeProducer, fenced_gate, objection, user_of


def receipts(producer: FakeProducer) -> list[dict]:
    found = []
    for topic, _key, value, _partition in producer.records:
        if topic == "enforcer-consent-receipts":
            found.append(CODEC.decode(value, CONSENT_RECEIPT)[1])
    return found


def test_a_transaction_aborted_on_revocation_leaves_no_state_behind() -> None:
    first = FakeProducer()
    processor, out = fenced_gate({1: first})
    processor.fast_path.gate = False
    user = user_of(1)
    processor.process_one(objection(1, 0))  # applied, in partition 1's open transaction
    assert decode_state(processor.consent.get(1, user.encode())).objected("FACEBOOK")

    # revoked before the next commit: the transaction (receipt, changelog) is aborted
    processor.forget(1)
    out.drop([1])
    assert first.calls == ["begin", "abort"]
    # ... and the RocksDB write must not outlive it: the committed changelog has no
    # record of this user, so after recovery the user must have no state here
    assert processor.consent.get(1, user.encode()) is None

    # assigned to this worker again: the input is processed again from the committed
    # offset, and its receipt is the one verify sees first
    again = FakeProducer()
    out.add([Partition(1, again, out.produce_when_room)])
    processor.forget(1)
    processor.offsets.start(1, 0)
    processor.process_one(objection(1, 0))
    (receipt,) = receipts(again)
    assert receipt["outcome"] == "APPLIED"


def test_committed_partitions_lose_the_mark_open_ones_keep_it() -> None:
    producers = {0: FakeProducer(), 1: FakeProducer()}
    processor, out = fenced_gate(producers)
    processor.fast_path.gate = False
    consent = processor.consent
    assert consent.get(0, DIRTY_KEY) is None  # nothing written yet
    processor.process_one(objection(0, 0))
    processor.process_one(objection(1, 0))
    assert consent.get(0, DIRTY_KEY) is not None and consent.get(1, DIRTY_KEY) is not None
    out.commit()
    # partition 1 begins its next transaction before the tables' offsets are persisted
    processor.process_one(objection(1, 1))
    consent._mark_committed()  # what persist_offsets does last
    assert consent.get(0, DIRTY_KEY) is None  # all of it committed
    assert consent.get(1, DIRTY_KEY) is not None  # offset 1 is not
    processor.process_one(objection(0, 1))  # the next write marks it again
    assert consent.get(0, DIRTY_KEY) is not None


def test_the_fast_paths_batch_marks_the_ledger_before_it_writes() -> None:
    processor, _ = fenced_gate({0: FakeProducer()})
    ledger = processor.ledger.state
    processor.process([], partition=0)  # a batch of partition 0, with or without C
    if processor.fast_path.gate:
        assert ledger.get(0, DIRTY_KEY) is not None


def test_a_database_left_marked_is_emptied_when_opened(tmp_path) -> None:
    """A worker killed (or stopped by a fatal error) with a transaction open: whatever
    RocksDB flushed of it is a prefix of its writes, so the mark is there with it, and
    the partition opens empty (Faust then restores it from the changelog's start)."""
    path = tmp_path / "consent-1.db"
    options = ChangelogBackedOptions(use_rocksdict=True)
    db = options.open(path)
    db.put(b"committed-user", b"state")
    db.put(b"__faust\x00offset__", b"41")
    db.put(DIRTY_KEY, b"")
    db.put(b"uncommitted-user", b"state")
    db.flush()
    db.close()
    reopened = options.open(path)
    assert list(reopened.keys()) == []
    reopened.put(b"restored", b"x")
    reopened.close()
    clean = ChangelogBackedOptions(use_rocksdict=True).open(path)  # no mark: kept
    assert list(clean.keys()) == [b"restored"]
    clean.close()
