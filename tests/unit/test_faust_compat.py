"""The Faust boundary (``streams/faust_compat.py``): the start-up self-check passes on the
installed (pinned) versions and stops the worker with one line naming what is missing;
the gate's consumer classes are what the app builds; and no module outside the boundary
names a private Faust, mode or aiokafka attribute."""

from __future__ import annotations

import ast
import asyncio
import inspect
from pathlib import Path

import faust
import pytest
from faust.app.base import App
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams import faust_compat
from streams.cli import main as cli

STREAMS = Path(__file__).resolve().parents[2] / "streams"
BOUNDARY = STREAMS / "faust_compat.py"
# the names issue 15 found used in several modules: the boundary must keep listing them
FROM_THE_ISSUE = {
    "_getmany",
    "wait_first",
    "_read_offset",
    "_commit",
    "_consumer_wait_empty",
    "_dbs",
    "_db_for_partition",
    "_fetch_max_wait_ms",
    "in_recovery",
    "active_highwaters",
}
# relied-on names that are not private, nor part of Faust's documented interface (as
# ``App.rebalancing`` is), that nothing outside the boundary may use either
UNPUBLISHED = {"wait_first", "in_recovery", "active_highwaters"}


def test_the_installed_versions_have_everything_the_worker_relies_on() -> None:
    assert faust_compat.check() == []
    faust_compat.require()


def _worker_line(monkeypatch, capsys) -> str:
    def not_reached(*args, **kwargs):
        raise AssertionError("the worker went on past the self-check")

    monkeypatch.setattr(cli, "load_policy", not_reached)
    assert cli.main(["worker"]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_a_missing_private_method_stops_the_worker_with_one_line(monkeypatch, capsys) -> None:
    monkeypatch.delattr(App, "_consumer_wait_empty")
    line = _worker_line(monkeypatch, capsys)
    assert line.startswith("enforcer: error: the installed Faust/mode/aiokafka lacks")
    assert "faust.app.base.App._consumer_wait_empty (missing)" in line
    assert "faust-streaming 0.15.3" in line


def test_a_changed_signature_is_named(monkeypatch, capsys) -> None:
    async def _commit(self, offsets, start_new_transaction):  # an extra parameter
        return True

    monkeypatch.setattr(faust_aiokafka.Consumer, "_commit", _commit)
    line = _worker_line(monkeypatch, capsys)
    assert "faust.transport.drivers.aiokafka.Consumer._commit (parameters" in line


def test_a_name_faust_no_longer_uses_is_named(monkeypatch, capsys) -> None:
    # aiokafka reads the fetch wait when it starts: if it stopped, setting it does nothing
    import aiokafka

    async def start(self):
        pass

    monkeypatch.setattr(aiokafka.AIOKafkaConsumer, "start", start)
    line = _worker_line(monkeypatch, capsys)
    assert "aiokafka.AIOKafkaConsumer._fetch_max_wait_ms (no longer used by start)" in line


def test_a_missing_class_is_named(monkeypatch) -> None:
    import faust.tables.recovery

    monkeypatch.delattr(faust.tables.recovery, "Recovery")
    with pytest.raises(faust_compat.MissingInternals, match=r"Recovery \(missing\)"):
        faust_compat.require()


def test_the_app_builds_the_gate_consumer_with_its_fetch_settings() -> None:
    async def run() -> None:
        app = faust.App("compat-test", broker="kafka://127.0.0.1:1", store="memory://")
        faust_compat.use_gate_transport(
            app, fetch_min_bytes=12345, read_committed=True, fast_dispatch=True
        )
        app.topic("t")  # what build does next: the transport stays the gate's
        consumer = app.consumer
        assert isinstance(consumer, faust_compat.GateConsumer)
        assert isinstance(consumer._thread, faust_compat.GateConsumerThread)
        made = consumer._thread._create_worker_consumer(app.transport)
        assert made._fetch_max_wait_ms == faust_compat.FETCH_MAX_WAIT_MS
        assert made._fetch_min_bytes == 12345
        assert made._isolation_level == "read_committed"

    asyncio.run(run())


def test_the_gate_consumer_awaits_the_callback_directly_while_the_flow_runs() -> None:
    async def run() -> None:
        app = faust.App("compat-test", broker="kafka://127.0.0.1:1", store="memory://")
        faust_compat.use_gate_transport(
            app, fetch_min_bytes=1, read_committed=False, fast_dispatch=True
        )
        consumer = app.consumer

        async def callback() -> str:
            return "done"

        suspended = consumer.suspend_flow.wait()
        result = await consumer.wait_first(callback(), suspended)
        assert result.results == ["done"] and not result.stopped
        assert inspect.getcoroutinestate(suspended) == inspect.CORO_CLOSED

    asyncio.run(run())


def _private_names(source: str) -> set[str]:
    """The relied-on names a module's code uses (attributes, getattr strings)."""
    names = {r.name for r in faust_compat.RELIED_ON if r.name.startswith("_")} | UNPUBLISHED
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in names:
            found.add(node.attr)
        elif isinstance(node, ast.Constant) and node.value in names:
            found.add(node.value)
    return found


def test_the_scan_finds_a_private_name() -> None:
    assert _private_names("db = table.data._dbs.get(0)") == {"_dbs"}
    assert _private_names("getattr(consumer, '_getmany')") == {"_getmany"}
    assert _private_names("self._open.get(0)") == set()


def test_no_module_outside_the_boundary_names_a_private_faust_attribute() -> None:
    relied = {r.name for r in faust_compat.RELIED_ON}
    assert relied >= FROM_THE_ISSUE
    offenders = {
        str(path.relative_to(STREAMS)): sorted(found)
        for path in sorted(STREAMS.rglob("*.py"))
        if path != BOUNDARY and (found := _private_names(path.read_text()))
    }
    assert offenders == {}
