"""Standby replicas (``--standby-replicas``): the setting, what Faust's assignor does with
it, and that a standby partition, which Faust opens in the same ``_dbs`` the gate reads,
is never decided, written or persisted by the gate."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import pytest
from faust.assignor.client_assignment import CopartitionedAssignment
from faust.assignor.copartitioned_assignor import CopartitionedAssignor

from streams.core.policy import load_policy
from streams.core.records import KIND_POST
from streams.runtime.app import faust_settings
from streams.serde.codec import POST
from streams.settings import Settings, SettingsError, add_common_arguments, from_args
from streams.state.ledger import TableState
from tests.unit.test_splice import CODEC, POST_RECORD, _gate, _message

POLICY = load_policy()


def _settings(*argv: str) -> Settings:
    parser = argparse.ArgumentParser()
    add_common_arguments(parser)
    return from_args(parser.parse_args(list(argv)))


def test_standby_replicas_default_to_one_and_reach_faust(monkeypatch):
    """One standby copy of each table partition (a warm failover), kept by the worker's
    own changelog reader (runtime/standby.py); Faust places none on a worker alone."""
    monkeypatch.delenv("ENFORCER_STANDBY_REPLICAS", raising=False)
    assert _settings().standby_replicas == 1
    assert faust_settings(_settings(), 1)["table_standby_replicas"] == 1
    assert faust_settings(_settings("--standby-replicas", "0"), 1)["table_standby_replicas"] == 0
    monkeypatch.setenv("ENFORCER_STANDBY_REPLICAS", "2")
    assert _settings().standby_replicas == 2
    assert _settings("--standby-replicas", "0").standby_replicas == 0  # flag wins


@pytest.mark.parametrize("value", ["-1", "4"])
def test_standby_replicas_out_of_range_is_one_line(value, monkeypatch):
    monkeypatch.delenv("ENFORCER_STANDBY_REPLICAS", raising=False)
    with pytest.raises(SettingsError, match=r"^--standby-replicas must be between 0 and 3"):
        _settings("--standby-replicas", value)
    monkeypatch.setenv("ENFORCER_STANDBY_REPLICAS", "one")
    with pytest.raises(SettingsError, match="ENFORCER_STANDBY_REPLICAS must be a whole number"):
        _settings()


def test_session_timeout_defaults_to_60_s_and_reaches_faust(monkeypatch):
    monkeypatch.delenv("ENFORCER_SESSION_TIMEOUT", raising=False)
    config = faust_settings(_settings(), 1)
    assert (config["broker_session_timeout"], config["broker_heartbeat_interval"]) == (60.0, 3.0)
    config = faust_settings(_settings("--session-timeout", "6"), 1)
    assert (config["broker_session_timeout"], config["broker_heartbeat_interval"]) == (6.0, 2.0)
    monkeypatch.setenv("ENFORCER_SESSION_TIMEOUT", "15")
    assert _settings().session_timeout_s == 15
    assert _settings("--session-timeout", "20").session_timeout_s == 20  # flag wins


@pytest.mark.parametrize("value", ["5", "301"])
def test_session_timeout_out_of_range_is_one_line(value, monkeypatch):
    monkeypatch.delenv("ENFORCER_SESSION_TIMEOUT", raising=False)
    with pytest.raises(SettingsError, match=r"^--session-timeout must be between 6 and 300"):
        _settings("--session-timeout", value)


def _assign(clients: int, replicas: int, partitions: int = 8) -> dict:
    cluster = {f"w{i}": CopartitionedAssignment(topics={"t"}) for i in range(clients)}
    return CopartitionedAssignor(
        topics={"t"}, cluster_asgn=cluster, num_partitions=partitions, replicas=replicas
    ).get_assignment()


def test_faust_keeps_no_standby_with_one_worker_and_one_per_other_worker():
    # a single worker: replicas are capped at workers - 1 = 0, so the default costs nothing
    (alone,) = _assign(1, 1).values()
    assert alone.actives == set(range(8)) and alone.standbys == set()
    # two workers: each holds the other's partitions as standbys
    a, b = _assign(2, 1).values()
    assert a.actives | b.actives == set(range(8)) and not a.actives & b.actives
    assert a.standbys == b.actives and b.standbys == a.actives
    # three replicas asked of two workers: still one copy each
    a, b = _assign(2, 3).values()
    assert a.standbys == b.actives and b.standbys == a.actives


@pytest.mark.parametrize("splicing", [True, False])
def test_a_standby_partition_open_in_faust_is_never_decided_or_written(splicing):
    # Faust opens a standby's RocksDB in the same ``_dbs`` as the active ones (it writes
    # the changelog into it), so the table partition being open does not make it ours:
    # the gate decides only partitions whose position it was given on assignment.
    processor, out = _gate(splicing, POLICY)
    post = {**POST_RECORD, "user_id": "u1", "post_id": "p1"}
    message = _message(KIND_POST, CODEC.encode(POST, post), 7, "u1")
    assert 0 in processor.ledger.state.table.dbs  # open, as a standby is
    processor.process([message], partition=0)
    processor.process_one(message)
    assert out.records == []
    assert processor.offsets.to_commit() == {}
    assert dict(processor.ledger.state.table.dbs[0].items()) == {}


def test_persisting_offsets_leaves_a_standby_partition_to_faust():
    # offsets are persisted only for partitions this worker wrote; a standby's are
    # Faust's (its standby recovery sets them as it applies the changelog)
    persisted: dict = {}
    store = SimpleNamespace(
        _dbs={3: object()},
        persisted_offset=lambda tp: persisted.get(tp),
        set_persisted_offset=lambda tp, offset: persisted.__setitem__(tp, offset),
    )
    outputs = SimpleNamespace(changelog_runs={}, track_changelog=lambda topic: None)
    state = TableState(SimpleNamespace(data=store), "ledger-changelog", outputs)
    state.persist_offsets()
    assert persisted == {}
