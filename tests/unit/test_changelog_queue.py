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

from faust.types import TP

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
