"""The re-keying stage commits only what it forwarded and the broker acknowledged, and
only for partitions it owns, also when a cooperative revocation is served inside
``consumer.consume()`` (issue 16's audit, item 3).

The stage runs its real loop (``Rekeyer._loop``) over a fake confluent-kafka consumer
whose ``poll``/``consume`` follow a script: they call the stage's ``on_assign`` and
``on_revoke`` in the middle of the call, as librdkafka serves a rebalance in the
consumer's queue, and may return records of a partition revoked in that same call (a
record ``poll`` returned just before the revocation always is one). The fake producer
acknowledges records only when flushed. Every commit is checked when it is made: for
a partition assigned at that moment, and at an offset below which every record of the
partition (since its assignment) was forwarded and acknowledged.

Without the ownership check in ``Rekeyer._handle`` the stage forwarded such a record
after the revocation and put its partition back in ``_done``: it then committed a
partition owned by another stage (moving that stage's committed offset back), and, for
an objections partition, held every later post for good (it took its own stale offset
for how far the partition was forwarded)."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import TopicPartition

import streams.rekey.stage as stage_module
from streams.core.records import forwarded
from streams.rekey.stage import Rekeyer
from streams.serde.codec import OBJECTION, POST, Codec
from streams.settings import Settings
from tests.unit.test_splice import POST_RECORD

PLAIN = Codec()
POSTS, OBJECTIONS = "posts", "objections"
P0, O0 = (POSTS, 0), (OBJECTIONS, 0)
INVALID = -1001  # librdkafka's OFFSET_INVALID: nothing committed


class Msg:
    """A consumed record, as confluent-kafka gives it."""

    def __init__(self, topic: str, offset: int, user: str = "u1") -> None:
        self._topic, self._offset = topic, offset
        if topic == POSTS:
            datum = {**POST_RECORD, "post_id": f"p{offset}", "user_id": user}
            self._value = PLAIN.encode(POST, datum)
        else:
            event = {
                "event_id": f"e{offset}",
                "user_id": user,
                "action": "OBJECT",
                "platform": None,
                "occurred_at": 1_700_000_000_000,
                "channel": "EMAIL",
            }
            self._value = PLAIN.encode(OBJECTION, event)

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return b"k"

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_000)

    def error(self) -> None:
        return None


class Broker:
    """What the broker knows: the group's committed offsets, each objections
    partition's last stable offset, and the records the stage's producer wrote."""

    def __init__(self) -> None:
        self.group: dict[tuple[str, int], int] = {}
        self.stable: dict[int, int] = {0: 0}
        self.queued: list[tuple[str, int, int]] = []  # (topic, partition, offset) of inputs
        self.acked: set[tuple[str, int, int]] = set()


class Producer:
    """The stage's producer: records are acknowledged only by ``flush``."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def produce(self, topic: str, value: bytes, key: bytes, headers=None, timestamp=None) -> None:
        source = forwarded(headers)
        assert source is not None, "only valid inputs in these tests (no DLQ record)"
        _, _, src_topic, src_partition, src_offset, _ = source
        self.broker.queued.append((src_topic, src_partition, src_offset))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        self.broker.acked.update(self.broker.queued)
        self.broker.queued.clear()
        return 0


class Consumer:
    """A cooperative consumer following ``script``: one step per ``poll`` or
    ``consume`` call, each a list of ("assign", tps), ("revoke", tps), ("records",
    msgs) or ("elsewhere", fn) (what another stage does meanwhile) actions, done in
    order inside the call. The stage is stopped once the script is done."""

    def __init__(self, broker: Broker, script: list[list[tuple[str, Any]]], stopping) -> None:
        self.broker = broker
        self.script = list(script)
        self.stopping = stopping
        self.assigned: dict[tuple[str, int], int] = {}  # owned -> offset at assignment
        self.commits: list[tuple[str, int, int]] = []
        self.idle = 0

    def subscribe(self, topics, on_assign, on_revoke) -> None:
        self.on_assign, self.on_revoke = on_assign, on_revoke

    def _step(self) -> list[Msg]:
        if not self.script:
            self.stopping.set()
            self.idle += 1
            assert self.idle < 100, "the stage never stopped"
            return []
        out: list[Msg] = []
        for action, arg in self.script.pop(0):
            if action == "assign":
                self.on_assign(self, [TopicPartition(t, p) for t, p in arg])
            elif action == "revoke":
                self.on_revoke(self, [TopicPartition(t, p) for t, p in arg])
                for tp in arg:  # confluent-kafka unassigns after the callback
                    del self.assigned[tp]
            elif action == "elsewhere":
                arg(self.broker)
            else:
                out += arg
        return out

    def poll(self, timeout: float) -> Msg | None:
        msgs = self._step()
        assert len(msgs) <= 1, "poll returns one record at most"
        return msgs[0] if msgs else None

    def consume(self, num_messages: int, timeout: float) -> list[Msg]:
        return self._step()

    def incremental_assign(self, positions: list[TopicPartition]) -> None:
        for tp in positions:
            self.assigned[(tp.topic, tp.partition)] = tp.offset

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list:
        return [
            TopicPartition(
                tp.topic, tp.partition, self.broker.group.get((tp.topic, tp.partition), INVALID)
            )
            for tp in partitions
        ]

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float = 0, cached: bool = False):
        return 0, 100

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        for tp in offsets:
            key = (tp.topic, tp.partition)
            # checked as the commit is made: a partition owned now, and every record
            # below the offset (since the assignment) forwarded and acknowledged
            assert key in self.assigned, f"committed {key} at {tp.offset}, not assigned here"
            missing = [
                o
                for o in range(self.assigned[key], tp.offset)
                if (tp.topic, tp.partition, o) not in self.broker.acked
            ]
            assert not missing, f"committed {key} at {tp.offset}: {missing} not acknowledged"
            self.commits.append((tp.topic, tp.partition, tp.offset))
            self.broker.group[key] = tp.offset

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.assigned]

    def pause(self, partitions: list) -> None:
        pass

    def resume(self, partitions: list) -> None:
        pass

    def list_topics(self, topic: str, timeout: float) -> Any:
        return SimpleNamespace(topics={topic: SimpleNamespace(partitions={0: None})})

    def close(self) -> None:
        pass


class Admin:
    """``list_offsets`` of the objections partitions: their last stable offsets."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def list_offsets(self, request: dict, isolation_level: Any, request_timeout: float) -> dict:
        return {
            tp: SimpleNamespace(
                result=lambda timeout, p=tp.partition: SimpleNamespace(offset=self.broker.stable[p])
            )
            for tp in request
        }


def run(
    script: list, monkeypatch: pytest.MonkeyPatch, commit_interval: float = 0.0
) -> tuple[Broker, Consumer]:
    """The stage's loop over ``script``, until the script is done. With a commit
    interval of 0 the stage commits on every turn of its loop, so that no wrong commit
    can hide; with a long one, only revocations, objections and the clean stop commit."""
    broker = Broker()
    stopping = threading.Event()
    consumer = Consumer(broker, script, stopping)
    monkeypatch.setattr(stage_module, "Consumer", lambda config: consumer)
    monkeypatch.setattr(stage_module, "Producer", lambda config: Producer(broker))
    monkeypatch.setattr(
        stage_module,
        "RenewingAdmin",
        lambda settings: SimpleNamespace(client=Admin(broker), renew_if_stale=lambda exc: False),
    )
    monkeypatch.setattr(stage_module, "COMMIT_INTERVAL", commit_interval)
    settings = Settings(posts_topic=POSTS, objections_topic=OBJECTIONS)
    counts = [0] * 6  # no lag slots: _publish_lags does nothing
    stage = Rekeyer(settings, PLAIN, stopping, threading.Event(), counts, threading.Event())
    stage._loop()
    assert not broker.queued, "the clean stop flushes"
    return broker, consumer


def test_an_objection_read_before_its_partition_is_revoked_in_consume_is_left_to_its_next_owner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``poll`` returns objection 1; the ``consume`` that follows serves the revocation
    of its partition and returns objection 2, fetched before it. The new owner forwards
    1 to 3 and commits 4. This stage commits that partition only up to what it had
    forwarded (1), forwards neither record, and a post read later is forwarded (the
    objections partition counts as forwarded as far as its owner committed)."""

    def new_owner(broker: Broker) -> None:
        broker.stable[0] = 4
        broker.group[O0] = 4

    broker, consumer = run(
        [
            [("assign", [P0, O0]), ("records", [Msg(OBJECTIONS, 0)])],  # poll
            [],  # consume
            [("records", [Msg(OBJECTIONS, 1)])],  # poll
            [("revoke", [O0]), ("elsewhere", new_owner), ("records", [Msg(OBJECTIONS, 2)])],
            [("records", [Msg(POSTS, 0)])],  # poll
            [],  # consume
        ],
        monkeypatch,
    )
    assert broker.acked == {(OBJECTIONS, 0, 0), (POSTS, 0, 0)}
    assert [c for c in consumer.commits if c[:2] == O0] == [(OBJECTIONS, 0, 1)]
    assert broker.group == {O0: 4, P0: 1}  # the new owner's commit stands
    assert consumer.commits[-1] == (POSTS, 0, 1)


def test_a_revocation_inside_consume_flushes_then_commits_only_what_was_forwarded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Posts 0 and 1 are forwarded, not yet acknowledged (no commit interval ends),
    when the ``consume`` after the ``poll`` that returned post 2 serves the revocation
    of their partition: it flushes, then commits 2. Post 2 is its next owner's."""
    broker, consumer = run(
        [
            [("assign", [P0, O0]), ("records", [Msg(POSTS, 0)])],  # poll
            [("records", [Msg(POSTS, 1)])],  # consume: posts 0 and 1 forwarded
            [("records", [Msg(POSTS, 2)])],  # poll
            [("revoke", [P0])],  # consume
        ],
        monkeypatch,
        commit_interval=3600.0,
    )
    assert [c for c in consumer.commits if c[:2] == P0] == [(POSTS, 0, 2)]
    assert broker.acked == {(POSTS, 0, 0), (POSTS, 0, 1)}


def test_posts_held_for_an_objection_are_dropped_when_their_partition_is_revoked_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Post 0 waits for objection 0 (acknowledged before the post was read); the
    ``consume`` that returns the objection revokes the posts partition first. The
    objection is forwarded and committed; the post is not forwarded, and its partition
    is committed only at the revocation, at what had been forwarded (0)."""

    def objection_acknowledged(broker: Broker) -> None:
        broker.stable[0] = 1

    broker, consumer = run(
        [
            [
                ("assign", [P0, O0]),
                ("elsewhere", objection_acknowledged),
                ("records", [Msg(POSTS, 0)]),
            ],  # poll
            [],  # consume: post 0 waits for objection 0
            [("revoke", [P0]), ("records", [Msg(OBJECTIONS, 0)])],  # consume, while it waits
        ],
        monkeypatch,
    )
    assert broker.acked == {(OBJECTIONS, 0, 0)}
    assert (OBJECTIONS, 0, 1) in consumer.commits
    assert [c for c in consumer.commits if c[:2] == P0] == [(POSTS, 0, 0)]
