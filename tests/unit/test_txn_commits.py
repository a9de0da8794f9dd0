"""Fencing's commits off the event loop (``Checkpoint.commit_transactions``,
``OutputProducer.begin_commit``/``finish_commit``, ``Checkpoint.hold``/``release``): a partition's
transaction commits in a thread while the gate goes on with the other partitions; a
record of the committing partition read meanwhile is produced only after its commit,
into its next transaction (never into the one being committed, never lost); only
changelog records of committed transactions count for the persisted table offsets.
No Kafka: the producers are recording stand-ins."""

from __future__ import annotations

import argparse
import asyncio
import threading
from types import SimpleNamespace

import pytest

from streams.gate import native
from streams.settings import Settings, SettingsError, add_common_arguments, from_args
from tests.unit.test_fencing import LEDGER, FakeProducer, fenced_gate, post


class SlowProducer(FakeProducer):
    """A transactional producer whose commit waits until ``go`` is set; every call and
    record in one log, in the order they happen."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[str] = []
        self.go = threading.Event()
        self.committing = threading.Event()

    def produce(self, topic, value=None, key=None, partition=-1, headers=None) -> None:
        super().produce(topic, value, key, partition, headers)
        if topic == "training-ingest":
            self.log.append(f"publish {key.decode()}")

    def begin_transaction(self) -> None:
        self.log.append("begin")

    def commit_transaction(self, timeout: float | None = None) -> None:
        self.committing.set()
        assert self.go.wait(10), "the test never let the commit end"
        self.log.append("commit")


def delivered(out, partition: int, offset: int) -> None:
    """A changelog record of ``partition`` acknowledged by the broker."""
    msg = SimpleNamespace(topic=lambda: LEDGER, partition=lambda: partition, offset=lambda: offset)
    out._delivered(None, msg)


@pytest.mark.parametrize("path", ["python", "native"])
def test_records_read_during_a_commit_go_into_the_next_transaction(path: str) -> None:
    if path == "native" and not native.available():
        pytest.skip("the C extension is not built here")
    slow, other = SlowProducer(), SlowProducer()
    processor, out = fenced_gate({0: slow, 1: other})
    out.track_changelog(LEDGER)
    if path == "python":
        processor.fast_path.gate = False
    processor.process([post(0, 0, "a")], partition=0)
    delivered(out, 0, 0)
    started = out.begin_commit()
    assert [part.partition for part, _ in started] == [0]  # partition 1 had nothing open
    assert slow.committing.wait(10)
    assert not out.use(0)  # nothing can go into the transaction being committed
    processor.process([post(0, 1, "c")], partition=0)  # waits for the commit
    processor.process([post(1, 0, "b")], partition=1)  # the others go on meanwhile
    assert slow.log == ["begin", "publish a"]
    assert other.log == ["begin", "publish b"]
    assert processor.offsets.expected == {0: 1, 1: 1}
    assert out.changelog_runs == {}  # not committed yet: no persisted offset may cover it
    slow.go.set()
    part, done = started[0]
    out.finish_commit(part, done.result())
    assert out.changelog_runs == {(LEDGER, 0): [0, 0, 1]}
    processor.checkpoint.release(0)
    assert slow.log == ["begin", "publish a", "commit", "begin", "publish c"]
    assert processor.offsets.expected == {0: 2, 1: 1}
    delivered(out, 0, 2)  # of the next transaction: counted only once it commits
    assert out.changelog_runs == {(LEDGER, 0): [0, 0, 1]}


def test_commits_do_not_hold_the_event_loop_and_keep_the_order() -> None:
    slow, other = SlowProducer(), SlowProducer()
    other.go.set()
    processor, out = fenced_gate({0: slow, 1: other})
    processor.fast_path.gate = False
    commits = processor.checkpoint
    processor.process([post(0, 0, "a")], partition=0)
    processor.process([post(1, 0, "b")], partition=1)

    async def scenario() -> list[str]:
        steps = []
        commit = asyncio.ensure_future(commits.commit_transactions())
        while not (slow.committing.is_set() and "commit" in other.log):
            await asyncio.sleep(0.001)  # the loop runs while the commits are in flight
        while 1 in out.committing:
            await asyncio.sleep(0.001)  # partition 1's ended first: it goes on at once
        processor.process([post(1, 1, "d")], partition=1)
        processor.process([post(0, 1, "c")], partition=0)  # waits for partition 0's
        idle = asyncio.ensure_future(commits.idle())
        await asyncio.sleep(0.01)
        steps.append(f"idle before the commit ended: {idle.done()}")
        slow.go.set()
        await commit
        steps.append(f"idle after: {idle.done() or (await idle) is None}")
        return steps

    assert asyncio.run(scenario()) == [
        "idle before the commit ended: False",
        "idle after: True",
    ]
    assert other.log == ["begin", "publish b", "commit", "begin", "publish d"]
    assert slow.log == ["begin", "publish a", "commit", "begin", "publish c"]
    assert out.committing == set() and processor.offsets.expected == {0: 2, 1: 2}


def test_records_held_during_a_rebalance_are_dropped_and_read_again() -> None:
    slow = SlowProducer()
    processor, out = fenced_gate({0: slow})
    processor.fast_path.gate = False
    processor.process([post(0, 0, "a")], partition=0)
    started = out.begin_commit()
    processor.process([post(0, 1, "c")], partition=0)
    processor.checkpoint.may_process = lambda: False  # Faust stopped its flow meanwhile
    slow.go.set()
    part, done = started[0]
    out.finish_commit(part, done.result())
    processor.checkpoint.release(0)
    assert slow.log == ["begin", "publish a", "commit"]
    assert processor.offsets.expected[0] == 1  # not processed: the gap repositions it
    assert processor.checkpoint.waiting == {}


def test_changelog_records_of_an_aborted_transaction_never_count() -> None:
    producer = FakeProducer()
    processor, out = fenced_gate({0: producer})
    out.track_changelog(LEDGER)
    processor.fast_path.gate = False
    processor.process([post(0, 0, "a")], partition=0)
    delivered(out, 0, 5)
    out.drop([0])  # revoked: its open transaction is aborted
    assert producer.calls == ["begin", "abort"]
    assert out.changelog_runs == {} and out._uncommitted == {}


def _settings(*argv: str):
    parser = argparse.ArgumentParser()
    add_common_arguments(parser)
    return from_args(parser.parse_args(list(argv)))


def test_the_commit_interval_is_a_setting(monkeypatch) -> None:
    monkeypatch.delenv("ENFORCER_TXN_COMMIT_INTERVAL", raising=False)
    assert _settings().txn_commit_interval == Settings.txn_commit_interval
    monkeypatch.setenv("ENFORCER_TXN_COMMIT_INTERVAL", "0.25")
    assert _settings().txn_commit_interval == 0.25
    assert _settings("--txn-commit-interval", "2").txn_commit_interval == 2.0  # flag wins


@pytest.mark.parametrize("value", ["0", "0.001", "31", "nan", "-1"])
def test_a_commit_interval_out_of_range_is_one_line(value, monkeypatch) -> None:
    monkeypatch.delenv("ENFORCER_TXN_COMMIT_INTERVAL", raising=False)
    with pytest.raises(SettingsError, match=r"^--txn-commit-interval must be between 0.01 and 30"):
        _settings("--txn-commit-interval", value)
    monkeypatch.setenv("ENFORCER_TXN_COMMIT_INTERVAL", "soon")
    with pytest.raises(SettingsError, match=r"^ENFORCER_TXN_COMMIT_INTERVAL must be a number"):
        _settings()
