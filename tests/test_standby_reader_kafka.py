"""The standby reader against the broker (``runtime/standby.py``): a copy read with
``read_committed`` holds every committed record of its changelog partition and none of
an aborted transaction, in order, whatever the reader's batching; and a copy whose
persisted offset the changelog no longer has (the topic made again) is emptied and read
from the start, never continued from somewhere else."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from faust.types import TP

from streams.runtime.standby import StandbyCopies, StandbyReader
from tests.unit.test_standby_copies import Table


def _topic(kafka: str, name: str) -> None:
    admin = AdminClient({"bootstrap.servers": kafka})
    admin.create_topics([NewTopic(name, 2, 1)])[name].result(30)


def _produce(kafka: str, topic: str, records: list[tuple[bytes, bytes | None]], txn: str) -> None:
    """Committed records, with an aborted transaction's records between them."""
    producer = Producer({"bootstrap.servers": kafka, "transactional.id": txn})
    producer.init_transactions(30)
    half = len(records) // 2
    for chunk, commit in (
        (records[:half], True),
        ([(b"aborted", b"x")] * 5, False),
        (records[half:], True),
    ):
        producer.begin_transaction()
        for key, value in chunk:
            producer.produce(topic, key=key, value=value, partition=1)
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)


class Harness:
    """Copies and a reader wired as ``standby.install`` does, on a loop of its own."""

    def __init__(self, kafka: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.emptied: list[TP] = []
        self.reader = StandbyReader(
            {
                "bootstrap.servers": kafka,
                "group.id": f"standby-test-{uuid.uuid4().hex[:6]}",
                "isolation.level": "read_committed",
            },
            self.deliver,
            lambda epoch, tp: self.loop.call_soon_threadsafe(
                self.copies.read_again_from_start, epoch, tp
            ),
        )
        self.copies = StandbyCopies(self.reader.assign, self.empty)

    def deliver(self, epoch: int, batches: Any, done: Any) -> None:
        def run() -> None:
            try:
                self.copies.apply(epoch, batches)
            finally:
                done()

        self.loop.call_soon_threadsafe(run)

    def empty(self, table: Table, tp: TP) -> None:
        self.emptied.append(tp)
        table.data.clear()
        table.persisted.pop(tp, None)

    def on_loop(self, fn: Any, *args: Any) -> Any:
        async def call() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(10)

    def close(self) -> None:
        self.reader.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def _wait(what: str, check: Any, harness: Harness, timeout: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if harness.on_loop(check):
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_standby_copy_holds_every_committed_record_and_none_aborted(kafka: str) -> None:
    topic = f"standby-reader-{uuid.uuid4().hex[:8]}-changelog"
    _topic(kafka, topic)
    records: list[tuple[bytes, bytes | None]] = []
    for i in range(3000):
        records.append((f"k{i % 700}".encode(), f"v{i}".encode()))
        if i % 11 == 0:
            records.append((f"k{(i * 7) % 700}".encode(), None))  # a tombstone
    _produce(kafka, topic, records, f"txn-{uuid.uuid4().hex[:6]}")
    expected: dict[bytes, bytes] = {}
    for key, value in records:
        if value is None:
            expected.pop(key, None)
        else:
            expected[key] = value

    harness = Harness(kafka)
    try:
        table, tp = Table(), TP(topic, 1)
        harness.on_loop(harness.copies.add, table, tp)
        harness.on_loop(harness.copies.start)
        _wait("the copy to catch up", lambda: table.data == expected, harness)
        assert b"aborted" not in table.data
        last = table.persisted[tp]

        # a rebalance: reading stops, starts again from what the copy persisted
        harness.on_loop(harness.copies.stop)
        harness.on_loop(harness.copies.add, table, tp)
        harness.on_loop(harness.copies.start)
        _produce(kafka, topic, [(b"k1", b"after"), (b"k2", None)], f"txn-{uuid.uuid4().hex[:6]}")
        expected[b"k1"] = b"after"
        expected.pop(b"k2", None)
        _wait("the records after the restart", lambda: table.data == expected, harness)
        assert table.persisted[tp] > last
        assert harness.emptied == []
    finally:
        harness.close()


def test_a_copy_past_its_changelogs_end_is_emptied_and_read_from_the_start(kafka: str) -> None:
    topic = f"standby-reader-{uuid.uuid4().hex[:8]}-changelog"
    _topic(kafka, topic)
    _produce(kafka, topic, [(b"a", b"1"), (b"b", b"2")], f"txn-{uuid.uuid4().hex[:6]}")
    harness = Harness(kafka)
    try:
        tp = TP(topic, 1)
        # a copy of an earlier changelog of the same name, far past this one's end
        table = Table({tp: 5000})
        table.data[b"stale"] = b"not in this changelog"
        harness.on_loop(harness.copies.add, table, tp)
        harness.on_loop(harness.copies.start)
        _wait("the copy to be read again", lambda: table.data == {b"a": b"1", b"b": b"2"}, harness)
        assert harness.emptied == [tp]
    finally:
        harness.close()
