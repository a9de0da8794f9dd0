"""The direct restore (``faust_compat.restore_fetched``, ``ENFORCER_DIRECT_RESTORE=1``):
fetched changelog batches go straight to the table's ``apply_changelog_batch`` with the
recovery state Faust's own loop keeps, and nothing is taken that Faust should see.
Against the real broker: tests/test_rolling_restart_kafka.py, test_crash.py,
test_fencing_kafka.py and the short chaos run pass with it on (docs/operations.md)."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from streams import faust_compat

CONSENT = TP("app-consent-changelog", 0)
LEDGER = TP("app-ledger-changelog", 1)
INTERNAL = TP("app-user-events-repartition", 0)


class Table:
    _on_changelog_event = None

    def __init__(self) -> None:
        self.applied: list[tuple[Any, int, bytes | None, bytes | None]] = []

    def apply_changelog_batch(self, batch: list) -> None:
        for event in batch:
            m = event.message
            self.applied.append((m.tp, m.offset, m.key, m.value))


class Recovery:
    def __init__(self, active: set, standby: set, tables: dict) -> None:
        self.active_tps, self.standby_tps, self.tp_to_table = active, standby, tables
        self.active_offsets: Counter = Counter()
        self.standby_offsets: Counter = Counter()
        self.active_highwaters: dict = {}
        self.buffers: dict = defaultdict(list)
        self.flushed: list = []
        self._active_events_received_at: dict = {}
        self._standby_events_received_at: dict = {}
        self.in_recovery = True
        self.ended = False
        self.signal_recovery_end = asyncio.Event()
        self.standby_highwaters: dict = {}

    def flush_buffers(self) -> None:
        for table, buf in self.buffers.items():
            self.flushed.append((table, list(buf)))
            buf.clear()

    def need_recovery(self) -> bool:
        return any(hw - self.active_offsets[tp] > 0 for tp, hw in self.active_highwaters.items())

    def _set_recovery_ended(self) -> None:
        self.in_recovery, self.ended = False, True

    def standby_remaining_total(self) -> int:
        return sum(hw - self.standby_offsets[tp] for tp, hw in self.standby_highwaters.items())


def consumer_with(recovery: Recovery, *, flowing: bool = True) -> Any:
    tables = SimpleNamespace(recovery=recovery, standbys_ready=False)
    tables.on_standbys_ready = lambda: setattr(tables, "standbys_ready", True)
    app = SimpleNamespace(tables=tables, flow_control=SimpleNamespace(is_active=lambda: flowing))
    flag = SimpleNamespace(is_set=lambda: False)
    return SimpleNamespace(app=app, flow_active=True, suspend_flow=flag, should_stop=False)


def records(tp: TP, offsets: range) -> list:
    return [
        SimpleNamespace(offset=o, key=f"k{o}".encode(), value=None if o % 5 == 0 else b"v")
        for o in offsets
    ]


def test_batches_are_applied_with_faust_recovery_state_and_end_is_signalled() -> None:
    consent, ledger = Table(), Table()
    recovery = Recovery({CONSENT}, {LEDGER}, {CONSENT: consent, LEDGER: ledger})
    recovery.active_offsets[CONSENT] = 2  # applied up to 2 already
    recovery.active_highwaters[CONSENT] = 9
    recovery.standby_highwaters[LEDGER] = 3
    recovery.buffers[consent].append("buffered by Faust")
    consumer = consumer_with(recovery)
    fetched = {
        CONSENT: records(CONSENT, range(0, 6)),
        LEDGER: records(LEDGER, range(0, 4)),
        INTERNAL: ["the gate's"],
    }
    faust_compat.restore_fetched(consumer, fetched)

    assert list(fetched) == [INTERNAL]  # the rest is left to Faust
    assert recovery.flushed[0] == (consent, ["buffered by Faust"])  # Faust's buffer first
    assert [a[1] for a in consent.applied] == [3, 4, 5]  # at or below 2 skipped
    assert consent.applied[1] == (CONSENT, 4, b"k4", b"v")
    assert consent.applied[2][3] is None and ledger.applied[0][3] is None  # tombstones
    assert recovery.active_offsets[CONSENT] == 5
    assert recovery.standby_offsets[LEDGER] == 3
    assert recovery.in_recovery and not recovery.signal_recovery_end.is_set()  # 6..9 left
    assert consumer.app.tables.standbys_ready  # standby caught up with its highwater

    faust_compat.restore_fetched(consumer, {CONSENT: records(CONSENT, range(4, 10))})
    assert [a[1] for a in consent.applied] == [3, 4, 5, 6, 7, 8, 9]
    assert recovery.ended and recovery.signal_recovery_end.is_set()


@pytest.mark.parametrize("why", ["flow stopped", "not recovered here", "callback"])
def test_records_are_left_to_faust(why: str) -> None:
    table = Table()
    recovery = Recovery({CONSENT}, set(), {CONSENT: table})
    if why == "not recovered here":
        recovery.active_tps = set()
    if why == "callback":
        table._on_changelog_event = lambda event: None  # type: ignore[assignment]
    consumer = consumer_with(recovery, flowing=why != "flow stopped")
    fetched = {CONSENT: records(CONSENT, range(3))}
    faust_compat.restore_fetched(consumer, fetched)
    assert CONSENT in fetched and not table.applied


def test_off_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENFORCER_DIRECT_RESTORE", raising=False)
    assert not faust_compat.direct_restore_enabled()
    monkeypatch.setenv("ENFORCER_DIRECT_RESTORE", "1")
    assert faust_compat.direct_restore_enabled()
