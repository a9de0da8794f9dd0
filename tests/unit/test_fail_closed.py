"""The gate's edges fail closed (issue 16): what happens when a write fails, a record
belongs to another partition, is too large, or a table partition is not there. No
Kafka: the gate runs over in-memory tables and a recording producer (``test_splice``),
with and without splicing, in Python (the native fast path has its own tests)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from hypothesis import given
from hypothesis import strategies as st

import streams.gate.fastpath as gate_fastpath
from streams.core.enforcement import (
    RETRACTION_IDS_BYTES,
    Source,
    as_applied,
    on_objection,
    retraction_chunks,
)
from streams.core.policy import load_policy
from streams.core.records import DLQ_REFERENCE, KIND_OBJECTION, KIND_POST, partition_for_user
from streams.gate.emit import Emitter
from streams.gate.metrics import Metrics, label
from streams.kafka.topics import RenewingAdmin, asked_until_answered
from streams.rekey.stage import Rekeyer
from streams.serde.codec import DECISION, OBJECTION, POST
from streams.settings import Settings, SettingsError, validate
from streams.state.ledger import StateNotReady
from tests.unit.test_splice import CODEC, POST_RECORD, _gate, _message

POLICY = load_policy()
PUBLISHED_POST = {**POST_RECORD, "user_id": "u1", "post_id": "p1"}


class OutputFailed(SystemExit):
    """What ``Emitter.output_failed`` raises here instead of exiting the process (a
    BaseException, as an exit is: no ``except Exception`` of the gate catches it)."""


@pytest.fixture(autouse=True)
def no_exit(monkeypatch):
    def output_failed(self, message, exc):
        raise OutputFailed(70)

    monkeypatch.setattr(Emitter, "output_failed", output_failed)
    monkeypatch.setattr(gate_fastpath, "native", SimpleNamespace(**{**vars(gate_fastpath.native)}))
    monkeypatch.setattr(gate_fastpath.native, "available", lambda: False)


def _topics(out) -> list[str]:
    return [record[0] for record in out.records]


@pytest.mark.parametrize("splicing", [True, False])
def test_a_published_post_is_in_the_ledger_before_it_is_produced(splicing):
    processor, out = _gate(splicing, POLICY)
    processor.gate(_message(KIND_POST, CODEC.encode(POST, PUBLISHED_POST), 0, "u1"))
    assert _topics(out) == ["ledger-changelog", "training-ingest", "enforcer-decisions"]


@pytest.mark.parametrize("splicing", [True, False])
def test_a_ledger_write_that_fails_publishes_nothing_and_dead_letters(splicing):
    processor, out = _gate(splicing, POLICY)

    def broken_put(*args):
        raise OSError("disk full")

    processor.ledger.state.put = broken_put
    processor.gate(_message(KIND_POST, CODEC.encode(POST, PUBLISHED_POST), 0, "u1"))
    assert _topics(out) == ["enforcer-dlq"]  # nothing reached training-ingest


@pytest.mark.parametrize("splicing", [True, False])
def test_an_output_that_fails_after_the_ledger_stops_the_worker_without_a_dlq_record(splicing):
    processor, out = _gate(splicing, POLICY)
    produce = out.produce

    def refusing(topic, key, value, partition=None, headers=None):
        if topic == "training-ingest":
            raise RuntimeError("broker refused")
        produce(topic, key, value, partition, headers)

    out.produce = refusing
    with pytest.raises(OutputFailed):
        processor.gate(_message(KIND_POST, CODEC.encode(POST, PUBLISHED_POST), 0, "u1"))
    assert "enforcer-dlq" not in _topics(out)
    # what was written is the ledger entry: a later objection retracts the post
    assert processor.ledger.is_live(0, "u1", "p1")


def test_a_record_of_a_user_of_another_partition_is_dead_lettered():
    processor, out = _gate(True, POLICY)
    processor.settings = Settings(partitions=16)
    user = next(f"u{i}" for i in range(100) if partition_for_user(f"u{i}".encode(), 16) != 0)
    for kind, value in (
        (KIND_POST, CODEC.encode(POST, {**POST_RECORD, "user_id": user})),
        (KIND_OBJECTION, CODEC.encode(OBJECTION, _event("e1", user))),
    ):
        out.records.clear()
        processor.gate(_message(kind, value, 0, user))
        assert _topics(out) == ["enforcer-dlq"]
        headers = dict(out.records[0][4])
        assert b"arrived on partition 0" in headers["error"]
    home = partition_for_user(user.encode(), 16)
    out.records.clear()
    message = _message(KIND_POST, CODEC.encode(POST, {**POST_RECORD, "user_id": user}), 0, user)
    message.partition = home
    processor.gate(message)
    assert "enforcer-decisions" in _topics(out)


def test_a_post_too_large_to_republish_goes_to_the_dlq_as_a_reference():
    processor, out = _gate(True, POLICY)
    big = {**PUBLISHED_POST, "text": "x" * 1_500_000}
    processor.gate(_message(KIND_POST, CODEC.encode(POST, big), 7, "u1"))
    assert _topics(out) == ["enforcer-dlq"]
    _, key, value, _, headers = out.records[0]
    headers = dict(headers)
    assert key is None and value is None
    assert b"record too large" in headers["error"]
    assert int(headers[DLQ_REFERENCE]) > 1_500_000
    assert headers["source.offset"] == b"7"
    # a post just under the limit is published, its outputs within the limit
    out.records.clear()
    fits = {**PUBLISHED_POST, "text": "x" * (processor.max_post_bytes - 200)}
    processor.gate(_message(KIND_POST, CODEC.encode(POST, fits), 8, "u1"))
    assert "training-ingest" in _topics(out)
    assert all(len(r[2] or b"") <= processor.settings.max_record_bytes for r in out.records)


def test_a_record_of_a_partition_not_open_here_is_put_back_not_decided():
    processor, out = _gate(True, POLICY)
    processor.offsets.start(0, 5)
    del processor.ledger.state.table.dbs[0]
    processor.process_one(_message(KIND_POST, CODEC.encode(POST, PUBLISHED_POST), 5, "u1"))
    assert out.records == []
    assert processor.offsets.expected[0] == 5  # read again, nothing committed past it
    assert processor.offsets.to_commit() == {}


def test_a_table_partition_not_open_here_is_never_read_or_created():
    processor, out = _gate(True, POLICY)
    del processor.consent.table.dbs[0]
    with pytest.raises(StateNotReady):
        processor.gate(_message(KIND_POST, CODEC.encode(POST, PUBLISHED_POST), 0, "u1"))
    with pytest.raises(StateNotReady):
        processor.gate(
            _message(KIND_OBJECTION, CODEC.encode(OBJECTION, _event("e", "u1")), 1, "u1")
        )
    assert out.records == [] and 0 not in processor.consent.table.dbs


def test_a_user_with_many_live_posts_is_retracted_in_records_under_the_bound():
    live = {f"post-{i:08d}-{'x' * 20}": "FACEBOOK" for i in range(30_000)}
    _state, fx = on_objection(POLICY, None, _event("e1", "u1"), live, 1, Source("o", 0, 0))
    assert len(fx.tombstones) == 30_000 and len(fx.retractions) > 1
    ids = [pid for r in fx.retractions for pid in r["post_ids"]]
    assert ids == sorted(live)
    for record in fx.retractions:
        assert sum(len(p) + 4 for p in record["post_ids"]) <= RETRACTION_IDS_BYTES
        assert record["objection_event_id"] == "e1"


@given(st.lists(st.text(min_size=1, max_size=300)), st.integers(1, 2000))
def test_retraction_chunks_keep_order_and_bound(ids, limit):
    chunks = retraction_chunks(ids, limit)
    assert [i for chunk in chunks for i in chunk] == ids
    for chunk in chunks:
        assert chunk
        assert len(chunk) == 1 or sum(len(i.encode()) + 4 for i in chunk) <= limit


NOW = 1_800_000_000_000
SKEW = 300_000


@given(st.integers(-(2**62), 2**62))
def test_an_event_is_applied_no_later_than_the_time_read_plus_the_skew(occurred_at):
    event = _event("e", "u", occurred_at=occurred_at)
    applied = as_applied(event, NOW, SKEW)
    if occurred_at > NOW + SKEW:
        assert applied["occurred_at"] == NOW and event["occurred_at"] == occurred_at
    else:
        assert applied is event


def test_a_future_objection_does_not_block_a_later_withdrawal():
    year_3000 = 32_503_680_000_000
    src = Source("o", 0, 0)
    state, fx = on_objection(
        POLICY, None, _event("a", "u", "OBJECT", year_3000), {}, NOW, src, SKEW
    )
    assert fx.clamped_from == year_3000 and state.objected("FACEBOOK")
    later = _event("b", "u", "WITHDRAW", NOW + 1000)
    state, _ = on_objection(POLICY, state, later, {}, NOW + 2000, src, SKEW)
    assert not state.objected("FACEBOOK")


def test_a_future_withdrawal_does_not_beat_a_later_objection():
    year_3000 = 32_503_680_000_000
    src = Source("o", 0, 0)
    state, fx = on_objection(
        POLICY, None, _event("a", "u", "WITHDRAW", year_3000), {}, NOW, src, SKEW
    )
    assert fx.clamped_from == year_3000
    state, _ = on_objection(
        POLICY, state, _event("b", "u", "OBJECT", NOW + 1), {}, NOW + 2, src, SKEW
    )
    assert state.objected("FACEBOOK")


def test_without_a_bound_a_future_withdrawal_would_win_forever():
    """What the bound prevents (the behaviour before it)."""
    year_3000 = 32_503_680_000_000
    src = Source("o", 0, 0)
    state, _ = on_objection(POLICY, None, _event("a", "u", "WITHDRAW", year_3000), {}, NOW, src)
    state, _ = on_objection(POLICY, state, _event("b", "u", "OBJECT", NOW + 1), {}, NOW + 2, src)
    assert not state.objected("FACEBOOK")


def test_the_worker_counts_clamped_events():
    processor, _out = _gate(False, POLICY)
    event = _event("e1", "u1", occurred_at=32_503_680_000_000)
    processor.gate(_message(KIND_OBJECTION, CODEC.encode(OBJECTION, event), 0, "u1"))
    assert processor.metrics.clamped_events == 1
    assert "enforcer_clamped_objection_events_total 1" in processor.metrics.render(True)


def test_prometheus_label_values_are_escaped():
    metrics = Metrics()
    metrics.dlq['a"b\\c\nd'] += 1
    text = metrics.render(True)
    assert 'enforcer_dlq_total{source_topic="a\\"b\\\\c\\nd"} 1' in text
    assert label('"') == '\\"'


def test_topic_names_are_matched_whole():
    with pytest.raises(SettingsError, match="not a valid topic name"):
        validate(Settings(posts_topic="posts\n"))


def test_decisions_are_unchanged_by_the_new_order():
    """The decision written for a published post is the same record as before."""
    processor, out = _gate(True, POLICY)
    processor.gate(_message(KIND_POST, CODEC.encode(POST, PUBLISHED_POST), 0, "u1"))
    decision = CODEC.decode(out.records[-1][2], DECISION)[1]
    assert (decision["outcome"], decision["reason"]) == ("PUBLISHED", "ELIGIBLE")


def _event(event_id: str, user: str, action: str = "OBJECT", occurred_at: int = 1_000) -> dict:
    return {
        "event_id": event_id,
        "user_id": user,
        "action": action,
        "platform": None,
        "occurred_at": occurred_at,
        "channel": "IN_APP",
    }


@pytest.mark.parametrize(
    "error",
    [TimeoutError(), KafkaException(KafkaError(KafkaError.FENCED_LEADER_EPOCH))],
)
def test_posts_wait_when_the_broker_cannot_say_how_far_objections_are_forwarded(error, monkeypatch):
    """A leader moving or a timeout while the re-keying stage asks: every objections
    partition counts as behind (the posts wait, and it asks again), never a crash."""
    monkeypatch.setattr("streams.kafka.topics.admin_client", lambda settings: object())
    stage = Rekeyer.__new__(Rekeyer)
    stage._admin = RenewingAdmin(Settings())
    stage._objection_partitions = [0, 1, 2]

    def failing(consumer):
        raise error

    stage._objections_behind_now = failing
    assert stage._objections_behind(None) == [0, 1, 2]
    stage._objection_partitions = None
    assert stage._objections_behind(None)


@pytest.mark.parametrize(
    ("code", "renewed"),
    [
        (KafkaError.FENCED_LEADER_EPOCH, True),
        (KafkaError.UNKNOWN_LEADER_EPOCH, True),
        (KafkaError.NOT_LEADER_FOR_PARTITION, True),
        (KafkaError._NOENT, True),
        (KafkaError._TIMED_OUT, False),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, False),
    ],
)
def test_a_stale_leader_view_renews_the_admin_client(code, renewed, monkeypatch):
    """librdkafka's admin ListOffsets keeps a leader epoch cached from before a leader
    moved and is answered FENCED_LEADER_EPOCH forever (librdkafka#4620): the short chaos
    run's posts waited for minutes after a broker restart, in the re-keying stage and in
    the gate's repositioning. Both ask again with a new client."""
    made: list[object] = []

    def make(settings):
        made.append(object())
        return made[-1]

    monkeypatch.setattr("streams.kafka.topics.admin_client", make)
    stage = Rekeyer.__new__(Rekeyer)
    stage._admin = RenewingAdmin(Settings())
    stage._objection_partitions = [0]
    first = stage._admin.client

    def failing(consumer):
        raise KafkaException(KafkaError(code))

    stage._objections_behind_now = failing
    assert stage._objections_behind(None) == [0]
    assert (stage._admin.client is not first) is renewed
    assert len(made) == 1 + renewed


def test_a_transient_error_is_asked_again_and_others_are_raised(monkeypatch):
    monkeypatch.setattr("streams.kafka.topics.time.sleep", lambda seconds: None)
    answers: list = [
        KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION)),
        KafkaException(KafkaError(KafkaError.NOT_COORDINATOR)),
        "answer",
    ]

    def ask():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert asked_until_answered(ask, "test") == "answer"
    refused = KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    answers[:] = [refused, "never asked"]
    with pytest.raises(KafkaException) as raised:
        asked_until_answered(ask, "test")
    assert raised.value is refused and answers == ["never asked"]


def test_a_transient_error_that_lasts_is_raised_after_the_deadline(monkeypatch):
    clock = iter(range(0, 1000, 10))
    monkeypatch.setattr("streams.kafka.topics.time.monotonic", lambda: next(clock))
    monkeypatch.setattr("streams.kafka.topics.time.sleep", lambda seconds: None)

    def ask():
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT))

    with pytest.raises(KafkaException):
        asked_until_answered(ask, "test", within=100)


def test_the_stage_asks_again_for_start_positions_while_a_leader_moves(monkeypatch):
    """The second long chaos run: a broker restarting answered the re-keying stage's
    watermark lookup on assignment with NOT_LEADER_FOR_PARTITION; the error came out of
    consume(), stopped the stage, and every worker exited 70 at once."""
    monkeypatch.setattr("streams.kafka.topics.time.sleep", lambda seconds: None)

    class Consumer:
        calls = 0

        def committed(self, partitions, timeout):
            return [TopicPartition(tp.topic, tp.partition, 7) for tp in partitions]

        def get_watermark_offsets(self, tp, timeout):
            Consumer.calls += 1
            if Consumer.calls == 1:
                raise KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))
            return 3, 10

    stage = Rekeyer.__new__(Rekeyer)
    stage._done = {}
    positions = stage._start_positions(Consumer(), [TopicPartition("posts", 0)])
    assert [(tp.topic, tp.partition, tp.offset) for tp in positions] == [("posts", 0, 7)]
    assert Consumer.calls == 2
