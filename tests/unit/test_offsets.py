"""The gate's offset tracking: contiguous processing, gaps, re-reads, commits."""

from hypothesis import given
from hypothesis import strategies as st

from streams.offsets import Admit, OffsetTracker


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


def test_a_run_is_admitted_whole_only_from_the_next_expected_offset():
    t = OffsetTracker()
    assert not t.admit_run(0, 0, 10)  # unknown start
    t.start(0, 5)
    assert not t.admit_run(0, 6, 10)  # 5 would be skipped
    assert not t.admit_run(0, 3, 10)  # a re-read: record by record
    assert t.admit_run(0, 5, 10)
    assert t.to_commit() == {0: 15}
    t.rewind(0, 12)  # record 12 failed: no commit past it
    assert t.to_commit() == {0: 12}
    t.rewind(0, 14)  # later than the position: changes nothing
    assert t.admit(0, 12) is Admit.PROCESS


@given(
    st.lists(st.tuples(st.integers(0, 30), st.integers(1, 6), st.booleans()), max_size=60),
    st.integers(0, 5),
)
def test_runs_and_rewinds_never_commit_past_an_unprocessed_offset(batches, start):
    t = OffsetTracker()
    t.start(0, start)
    processed = set()
    for first, count, fails in batches:
        if t.admit_run(0, first, count):
            done = range(first, first + count - 1) if fails else range(first, first + count)
            processed.update(done)
            if fails:
                t.rewind(0, first + count - 1)
        else:
            for offset in range(first, first + count):
                if t.admit(0, offset) in (Admit.PROCESS, Admit.DUPLICATE):
                    processed.add(offset)
    commit = t.to_commit().get(0, start)
    assert set(range(start, commit)) <= processed
