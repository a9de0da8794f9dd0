"""The gate's offset tracking: contiguous processing, gaps, re-reads, commits."""

from hypothesis import given
from hypothesis import strategies as st

from streams.gate.offsets import Admit, OffsetTracker


def test_unknown_partition_must_be_positioned_first():
    t = OffsetTracker()
    assert t.admit(0, 5) is Admit.UNKNOWN
    t.start(0, 3)
    assert t.to_commit() == {}
    assert t.admit(0, 5) is Admit.GAP  # 3 and 4 were skipped
    assert [t.admit(0, o) for o in (3, 4, 5)] == [Admit.PROCESS] * 3
    assert t.admit(0, 4) is Admit.DUPLICATE
    assert t.to_commit() == {0: 6}
    t.committed_ok({0: 6})
    assert t.to_commit() == {}
    t.revoke(0)
    assert t.to_commit() == {} and t.admit(0, 6) is Admit.UNKNOWN


@given(st.lists(st.integers(0, 30), max_size=80), st.integers(0, 5))
def test_commit_never_passes_an_unprocessed_offset(deliveries, start):
    t = OffsetTracker()
    t.start(0, start)
    processed = set()
    for offset in deliveries:
        if t.admit(0, offset) in (Admit.PROCESS, Admit.DUPLICATE):
            processed.add(offset)
    commit = t.to_commit().get(0, start)
    assert set(range(start, commit)) <= processed


def test_a_record_put_back_is_expected_again_and_never_committed_past():
    t = OffsetTracker()
    t.start(0, 3)
    assert t.admit(0, 3) is Admit.PROCESS
    t.put_back(0, 3)  # it could not be processed
    assert t.to_commit() == {}
    assert t.admit(0, 4) is Admit.GAP  # what follows waits for it
    assert [t.admit(0, o) for o in (3, 4)] == [Admit.PROCESS] * 2
    t.put_back(0, 3)  # not the last admitted: nothing changes
    assert t.to_commit() == {0: 5}


@given(st.lists(st.tuples(st.integers(0, 30), st.booleans()), max_size=80), st.integers(0, 5))
def test_commit_never_passes_a_record_put_back(deliveries, start):
    """Records that fail (``put_back``) count as unprocessed until processed later."""
    t = OffsetTracker()
    t.start(0, start)
    processed = set()
    for offset, fails in deliveries:
        admit = t.admit(0, offset)
        if admit is Admit.PROCESS and fails:
            t.put_back(0, offset)
        elif admit in (Admit.PROCESS, Admit.DUPLICATE):
            processed.add(offset)
    commit = t.to_commit().get(0, start)
    assert set(range(start, commit)) <= processed
