"""Changelog records Faust's recovery has queued are never dropped behind its back
(``faust_compat.keep_changelog_queue_on_resume``, ``restore_from_start``).

Faust empties its changelog queue on every ``flow_control.resume()``, also the one
recovery makes once it completes, after the standby partitions started fetching: the
standby records queued then were lost while the consumer's position and the standby
offset moved past them (a long chaos run: a worker took a partition over from its
standby copy without two objections and 166 ledger entries, and published posts of
an objecting user). The broker-level test is ``tests/test_standby_catchup_kafka.py``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streams import faust_compat
from streams.core.policy import load_policy
from streams.runtime.app import build
from streams.serde.codec import Codec
from streams.settings import Settings
from streams.state.ledger import TableState
from tests.unit.test_splice import MemoryDB


def test_the_enforcers_app_keeps_queued_changelog_records_when_the_flow_resumes(
    tmp_path: Path,
) -> None:
    async def run() -> None:
        settings = Settings(bootstrap_servers="127.0.0.1:1", data_dir=tmp_path)
        app = build(settings, load_policy(), Codec()).app
        changelog = app.tables.changelog_queue
        other = app.FlowControlQueue(maxsize=10, clear_on_resume=True)
        changelog.put_nowait("standby record")
        other.put_nowait("stream record")

        app.flow_control.suspend()
        app.flow_control.resume()  # what Recovery.on_recovery_completed does
        assert changelog.qsize() == 1, "a queued changelog record was dropped on resume"
        assert other.qsize() == 0, "the other queues are still emptied on resume"
        assert app.flow_control.is_active()

        app.flow_control.clear()  # a revocation: recovery seeks back, so this is safe
        assert changelog.qsize() == 0

    asyncio.run(run())


class Recovery:
    def __init__(self, tp: TP) -> None:
        self.active_offsets = {tp: 500}
        self.standby_offsets = {tp: 500}


def test_an_emptied_partition_is_restored_from_the_changelogs_start() -> None:
    """A partition emptied after an abort, which stays assigned through the rebalance,
    must not be restored from the offset Faust last read in this process."""
    tp = TP("app-ledger-changelog", 1)
    recovery = Recovery(tp)
    partition_db = MemoryDB({b"key": b"value"})
    table = SimpleNamespace(
        app=SimpleNamespace(tables=SimpleNamespace(recovery=recovery)),
        data=SimpleNamespace(_dbs={1: partition_db}),
    )
    outputs = SimpleNamespace(track_changelog=lambda topic: None, on_abort=[], produce=None)
    state = TableState(table, tp.topic, outputs)  # type: ignore[arg-type]
    state.touch(1)
    state.discard_uncommitted([1])

    assert dict(partition_db) == {}
    assert tp not in recovery.active_offsets and tp not in recovery.standby_offsets


def test_faust_drops_no_changelog_record_below_one_it_handed_out_before_a_seek(
    tmp_path: Path,
) -> None:
    """Faust's drain loop drops a fetched record at or below its read offset for the
    partition (the last record it handed out). Records of a batch fetched before a
    recovery seek (to 0 for a standby copy with nothing on disk) set it forward after
    the seek, and the changelog's first records were then dropped for good (the chaos
    run 20261203T061914Z). The enforcer's consumer has no read offset for any topic."""

    async def run() -> None:
        settings = Settings(bootstrap_servers="127.0.0.1:1", data_dir=tmp_path)
        consumer = build(settings, load_policy(), Codec()).app.consumer
        changelog = TP(f"{settings.app_id}-consent-changelog", 5)
        internal = TP(settings.user_events_topic, 1)
        read_offset = consumer._read_offset.__getitem__  # what the drain loop binds
        for tp in (changelog, internal):
            consumer._read_offset[tp] = 121
            assert read_offset(tp) is None, f"{tp.topic}: records up to 121 would be dropped"

    asyncio.run(run())


def test_a_changelog_batch_fetched_before_a_recovery_seek_is_not_handed_out_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Faust's drain loop hands a fetched batch out record by record (awaiting each
    callback) while recovery may seek the partition back; a record from the old
    position applied after the seek made the recovery loop skip the records the seek
    was for (the chaos run 20261203T063705Z: seeks to 0, first records at 63-625)."""

    async def run() -> None:
        settings = Settings(bootstrap_servers="127.0.0.1:1", data_dir=tmp_path)
        app = build(settings, load_policy(), Codec()).app
        thread = app.consumer._thread
        changelog = TP(settings.changelog_topic("consent"), 2)
        internal = TP(settings.user_events_topic, 2)
        fetched = {changelog: ["c100", "c101", "c102"], internal: ["g7", "g8"]}

        async def fetch(self, consumer, active_partitions, timeout=None, max_records=None):
            return {tp: list(batch) for tp, batch in fetched.items()}

        async def seek_wait(self, consumer, partitions):
            return None

        parent = faust_aiokafka.AIOKafkaConsumerThread
        monkeypatch.setattr(parent, "_fetch_records", fetch)
        monkeypatch.setattr(parent, "_seek_wait", seek_wait)

        before = await thread._fetch_records(None, set(fetched))
        handing_out = iter(before[changelog])  # as Faust's TopicBuffer does
        assert next(handing_out) == "c100"
        await thread._seek_wait(None, {changelog: 0})  # recovery seeks it back
        assert list(handing_out) == [], "records of the old position handed out after a seek"
        assert list(before[internal]) == ["g7", "g8"], "the gate's topic is never held back"
        assert type(before[internal]) is list  # its batches go to the C path untouched

        after = await thread._fetch_records(None, set(fetched))
        assert list(after[changelog]) == ["c100", "c101", "c102"]

    asyncio.run(run())


def test_a_changelog_record_handed_on_past_dropped_ones_is_held_and_read_again() -> None:
    """Faust drops fetched records in places where it expects a seek to follow; for a
    standby partition none did, and the next record applied moved its recovery offset
    past them (the chaos run 20261203T065101Z: a standby's whole first batch, 548
    records, fetched 13 ms after its seek and never queued)."""
    epochs: dict[TP, int] = {}
    asked: list[tuple[TP, int, int]] = []
    deliveries = faust_compat.ChangelogDeliveries(
        lambda: epochs, lambda tp, offset, epoch: asked.append((tp, offset, epoch))
    )
    tp = TP("app-ledger-changelog", 5)
    other = TP("app-consent-changelog", 5)

    def batch(partition: TP, *offsets: int) -> faust_compat.SoughtBatch:
        return faust_compat.SoughtBatch(
            [SimpleNamespace(offset=o) for o in offsets], epochs, partition
        )

    # offset 4 is a transaction marker: a gap between fetched offsets is no drop
    deliveries.fetched({tp: batch(tp, 0, 1, 2, 3, 5), other: batch(other, 7, 9)})
    assert deliveries.deliverable(tp, 0) and deliveries.deliverable(tp, 1)
    assert deliveries.deliverable(other, 7) and deliveries.deliverable(other, 9)
    assert not deliveries.deliverable(tp, 3), "2 was fetched and never handed on"
    assert asked == [(tp, 2, 0)]
    assert not deliveries.deliverable(tp, 5), "the rest of the epoch waits for the new read"

    epochs[tp] = 1  # the new read (GateConsumerThread._reseek)
    deliveries.fetched({tp: batch(tp, 2, 3, 5, 6)})
    assert [deliveries.deliverable(tp, o) for o in (2, 3, 5, 6)] == [True] * 4
    assert asked == [(tp, 2, 0)]


def test_the_enforcers_consumer_checks_what_faust_hands_on_of_the_changelogs(
    tmp_path: Path,
) -> None:
    async def run() -> None:
        settings = Settings(bootstrap_servers="127.0.0.1:1", data_dir=tmp_path)
        consumer = build(settings, load_policy(), Codec()).app.consumer
        assert isinstance(consumer.changelog_deliveries, faust_compat.ChangelogDeliveries)
        assert consumer.changelog_deliveries is consumer.changelog_deliveries

    asyncio.run(run())
