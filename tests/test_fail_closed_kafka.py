"""Fail closed on every edge (issue 16), against the real broker: retention gaps, a
record too large, a user with 30,000 live posts who objects, events dated in the
future, replay against another partition count, and the re-keying stage's commits
under rebalances while traffic flows."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.core.records import (
    DLQ_REFERENCE,
    KIND,
    KIND_POST,
    SRC_OFFSET,
    SRC_PARTITION,
    SRC_TOPIC,
    partition_for_user,
)
from tests.enforcer_env import Deployment, metric, run_enforcer, wait_metric, wait_objections
from tests.support import CODEC, Record, decisions_by_post, live_view, objection, post


@pytest.fixture
def env(kafka: str, names, tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(kafka, names, tmp_path).create_topics()
    yield deployment
    deployment.close()


def _delete_everything(kafka: str, topic: str) -> int:
    """Delete every record of a topic, as retention would; how many there were."""
    admin = AdminClient({"bootstrap.servers": kafka})
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    reader = Consumer({"bootstrap.servers": kafka, "group.id": "watermarks"})
    deleted, targets = 0, []
    try:
        for p in partitions:
            low, high = reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                deleted += high - low
                targets.append(TopicPartition(topic, p, high))
    finally:
        reader.close()
    for future in admin.delete_records(targets).values():
        future.result(timeout=30)
    return deleted


def _live_keys(records: list[Record]) -> set[bytes]:
    """The keys live on training-ingest (without decoding every record)."""
    live: set[bytes] = set()
    for r in records:
        if r.raw is None:
            live.discard(r.key)
        else:
            live.add(r.key)
    return live


def test_a_retention_gap_in_the_internal_topic_stops_the_worker_unless_accepted(
    env: Deployment,
) -> None:
    """A worker down longer than the retention of its input: its committed offset points
    at deleted records, which may have been objections. It stops with one line naming
    the range; with --accept-data-loss it resumes at the earliest record, counts and
    logs what was lost."""
    n = env.names
    settings = env.settings()
    topic, user = settings.user_events_topic, "long-gone"
    partition = partition_for_user(user.encode(), env.partitions)
    producer = Producer({"bootstrap.servers": env.kafka, "enable.idempotence": True})
    for i in range(30):  # what the re-keying stage would have written for 30 posts
        headers = [(KIND, KIND_POST), (SRC_TOPIC, n.posts.encode()), (SRC_PARTITION, b"0")]
        headers.append((SRC_OFFSET, str(i).encode()))
        value = CODEC.encode("Post", post(f"p{i}", user))
        producer.produce(topic, value, user.encode(), partition, headers=headers)
    assert producer.flush(30) == 0
    admin = AdminClient({"bootstrap.servers": env.kafka})
    tp = TopicPartition(topic, partition, 20)
    admin.delete_records([tp])[tp].result(30)  # offsets 0-19 gone
    committed = ConsumerGroupTopicPartitions(n.app_id, [TopicPartition(topic, partition, 5)])
    admin.alter_consumer_group_offsets([committed])[n.app_id].result(30)

    stopped = env.worker(start=False)
    stopped.start(wait=False)
    assert stopped.wait_exit() == 70
    line = f"{topic}[{partition}] offsets 5 to 19 (15 records) were deleted"
    assert line in stopped.full_log()
    assert "--accept-data-loss" in stopped.full_log()
    assert env.reader(n.decisions).settle(quiet=1.0) == []  # nothing was decided

    worker = env.worker("--accept-data-loss")
    decided = decisions_by_post(env.reader(n.decisions).wait_count(10))
    assert set(decided) == {f"p{i}" for i in range(20, 30)}
    wait_metric(worker, "enforcer_skipped_records_total", f'{{topic="{topic}"}}', 15)
    env.sender().posts(n.posts, [post("after", user)]).flush()  # and live traffic flows
    env.reader(n.training).wait_for(
        lambda rs: "after" in live_view(rs), what="a post produced after the restart"
    )


def test_a_retention_gap_in_objections_stops_the_worker_and_in_posts_is_skipped(
    env: Deployment,
) -> None:
    n = env.names
    worker = env.worker()
    env.sender().objections(n.objections, [objection("o1", "a")]).flush()
    wait_objections(worker, 1)
    assert worker.stop() == 0  # commits what it forwarded

    # objections produced while no worker ran, deleted by retention before any read them
    env.sender().objections(n.objections, [objection(f"lost{i}", "b") for i in range(3)]).flush()
    assert _delete_everything(env.kafka, n.objections) == 4  # o1 was read already
    stopped = env.worker(start=False)
    stopped.start(wait=False)
    assert stopped.wait_exit() == 70
    log = stopped.full_log()
    assert re.search(rf"{re.escape(n.objections)}\[\d+\] offsets \d+ to \d+ \(3 records\)", log), (
        log
    )
    assert "objection events may be lost" in log

    accepting = env.worker("--accept-data-loss")
    skipped = f'{{topic="{n.objections}"}}'
    wait_metric(accepting, "enforcer_skipped_records_total", skipped, 3)
    assert accepting.stop() == 0

    # posts lost the same way are skipped without the flag: none is published
    env.sender().posts(n.posts, [post("lost-1", "c"), post("lost-2", "c")]).flush()
    _delete_everything(env.kafka, n.posts)
    worker = env.worker()
    wait_metric(worker, "enforcer_skipped_records_total", f'{{topic="{n.posts}"}}', 2)
    env.sender().posts(n.posts, [post("kept", "c")]).flush()
    got = decisions_by_post(env.reader(n.decisions).wait_count(1))
    assert set(got) == {"kept"}


def test_a_post_of_1_5_mb_goes_to_the_dlq_as_a_reference_and_the_worker_goes_on(
    env: Deployment,
) -> None:
    """The post arrives compressed (the broker takes it), but it cannot be republished:
    the DLQ gets a reference record, and every restart does not meet it again."""
    n = env.names
    worker = env.worker()
    big = Producer(
        {
            "bootstrap.servers": env.kafka,
            "compression.type": "gzip",
            "message.max.bytes": 4_000_000,
        }
    )
    value = CODEC.encode("Post", post("huge", "u", text="x" * 1_500_000))
    big.produce(n.posts, value, b"u", headers=[("trace", b"t1")])
    assert big.flush(30) == 0
    env.sender().posts(n.posts, [post("small", "u")]).flush()
    dlq = env.reader(n.dlq).wait_count(1)
    record = dlq[0]
    headers = dict(record.headers)
    assert record.value is None and record.key is None
    assert b"record too large" in headers["error"]
    assert int(headers[DLQ_REFERENCE]) > 1_500_000
    assert headers["source.topic"] == n.posts.encode()
    env.reader(n.training).wait_for(lambda rs: "small" in live_view(rs), what="the next post")
    assert worker.alive()
    assert worker.stop() == 0
    env.worker()  # a restart does not meet the record again
    assert len(env.reader(n.dlq).settle(quiet=2.0)) == 1


def test_a_user_with_30000_live_posts_who_objects_is_retracted_in_bounded_records(
    env: Deployment,
) -> None:
    n = env.names
    env.worker()
    count = 30_000
    sender = env.sender()
    sender.posts(n.posts, (post(f"prolific-post-{i:06d}", "prolific") for i in range(count)))
    sender.flush()
    training = env.reader(n.training)
    training.wait_for(lambda rs: len(_live_keys(rs)) == count, what="all posts live", timeout=180)
    env.sender().objections(n.objections, [objection("stop", "prolific")]).flush()
    retractions = env.reader(n.retractions).wait_for(
        lambda rs: sum(len(r.value["post_ids"]) for r in rs) >= count,
        what="every post retracted",
        timeout=180,
    )
    assert len(retractions) > 1
    assert all(r.value["objection_event_id"] == "stop" for r in retractions)
    assert len({pid for r in retractions for pid in r.value["post_ids"]}) == count
    assert all(len(r.raw) < 1_000_000 for r in retractions)
    training.wait_for(lambda rs: not _live_keys(rs), what="no post live", timeout=120)


def test_events_dated_in_the_future_are_applied_when_read(env: Deployment) -> None:
    n = env.names
    worker = env.worker()
    year_3000 = 32_503_680_000_000
    now = int(time.time() * 1000)
    env.sender().objections(
        n.objections,
        [
            objection("forged-withdrawal", "f", "WITHDRAW", occurred_at=year_3000),
            objection("wrong-clock-objection", "g", "OBJECT", occurred_at=year_3000),
        ],
    ).flush()
    wait_objections(worker, 2)
    # later genuine events (within the allowed skew) win over both
    env.sender().objections(
        n.objections,
        [
            objection("genuine-objection", "f", "OBJECT", occurred_at=now + 60_000),
            objection("genuine-withdrawal", "g", "WITHDRAW", occurred_at=now + 60_000),
        ],
    ).flush()
    wait_objections(worker, 4)
    env.sender().posts(n.posts, [post("by-f", "f"), post("by-g", "g")]).flush()
    got = decisions_by_post(env.reader(n.decisions).wait_count(2))
    assert (got["by-f"][0]["outcome"], got["by-f"][0]["reason"]) == ("BLOCKED", "OBJECTED")
    assert got["by-g"][0]["outcome"] == "PUBLISHED"
    assert metric(worker, "enforcer_clamped_objection_events_total") == 2


def test_replay_routes_by_the_internal_topics_partition_count(
    kafka: str, names, tmp_path: Path
) -> None:
    """A replay run with another --partitions than the worker's must still read each
    user's state where it is (before: requests landed on partitions holding none of
    the user's consent, and an objecting user's posts were published)."""
    env = Deployment(kafka, names, tmp_path, partitions=6).create_topics()
    try:
        n = env.names
        users = [u for u in (f"user-{i}" for i in range(50)) if _moves(u, 6, 8)][:3]
        worker = env.worker()
        env.sender().objections(n.objections, [objection(f"o-{u}", u) for u in users]).flush()
        wait_objections(worker, len(users))
        env.sender().posts(n.posts, [post(f"p-{u}", u) for u in users]).flush()
        env.reader(n.decisions).wait_count(len(users))
        result = run_enforcer(env, "replay", partitions=8, timeout=120)
        assert result.returncode == 0, result.stderr
        assert re.search(rf"^UNCHANGED\s+OBJECTED\s+{len(users)}$", result.stdout, re.M), (
            result.stdout
        )
        assert live_view(env.reader(n.training).settle(quiet=1.0)) == {}
    finally:
        env.close()


def _moves(user: str, a: int, b: int) -> bool:
    key = user.encode()
    return partition_for_user(key, a) != partition_for_user(key, b)


def test_no_input_is_lost_or_leaked_while_workers_join_and_leave(env: Deployment) -> None:
    """Rebalances of the re-keying stage and the gate while posts and objections flow:
    every post gets a decision, and no post of an objecting user is ever published.
    (The re-keying stage commits only what it forwarded, also when a partition is
    revoked in the middle of a fetched batch.)"""
    n = env.names
    first = env.worker()
    objectors = [f"objector-{i}" for i in range(20)]
    env.sender().objections(n.objections, [objection(f"o-{u}", u) for u in objectors]).flush()
    wait_objections(first, len(objectors))
    sent: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        sender = env.sender()
        i = 0
        while not stop.is_set() and i < 20_000:
            batch = [post(f"t-{i + j}", f"user-{(i + j) % 400}") for j in range(100)]
            batch += [post(f"x-{i + j}", objectors[j % 20]) for j in range(0, 100, 10)]
            sender.posts(n.posts, batch)
            sent.extend(p["post_id"] for p in batch)
            sender.flush()
            i += 100
            time.sleep(0.05)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        time.sleep(2)  # traffic flows (not a readiness wait)
        second = env.worker(data_dir=env.tmp_path / "second")  # both groups rebalance
        time.sleep(3)
        assert second.stop() == 0  # and again
        time.sleep(2)
        third = env.worker(data_dir=env.tmp_path / "third")
        time.sleep(2)
    finally:
        stop.set()
        thread.join(60)
    wanted = {p.encode() for p in sent}
    decisions = env.reader(n.decisions)
    decisions.wait_for(
        lambda rs: wanted <= {r.key for r in rs}, what="a decision for every post", timeout=180
    )
    published = {r.key for r in decisions.records if r.value["outcome"] == "PUBLISHED"}
    assert not {p for p in published if p.startswith(b"x-")}
    live = _live_keys(env.reader(n.training).settle(quiet=2.0))
    assert not [p for p in live if p.startswith(b"x-")]
    assert {p for p in wanted if p.startswith(b"t-")} <= live
    assert first.alive() and third.alive()


def test_a_post_never_overtakes_an_objection_acknowledged_before_it(env: Deployment) -> None:
    """An objection acknowledged before a post was produced is applied before the post
    is decided, even while the objection's partition is held by a re-keying stage that
    does not forward it (a slow or frozen worker, or one whose session has not timed
    out yet): the post waits. Before, the post was published at once and retracted
    only once the objection came through."""
    n = env.names
    worker = env.worker()
    stalled = Consumer(
        {
            "bootstrap.servers": env.kafka,
            "group.id": f"{n.app_id}-rekey",  # the re-keying stages' group
            "partition.assignment.strategy": "cooperative-sticky",
            "enable.auto.commit": False,
            "session.timeout.ms": 10000,
        }
    )
    try:
        held: list[int] = []

        def on_assign(consumer: Consumer, partitions: list) -> None:
            held.extend(tp.partition for tp in partitions)

        stalled.subscribe([n.objections], on_assign=on_assign)
        deadline = time.monotonic() + 60
        while not held:
            stalled.poll(0.2)
            assert time.monotonic() < deadline, "the stalled stage got no objections partition"
        wait_metric(worker, "enforcer_ready", "", 1)
        sender = env.sender()
        sender.raw(
            n.objections, CODEC.encode("ObjectionEvent", objection("held", "u")), b"u", held[0]
        )
        sender.flush()  # acknowledged by the broker before the post is produced
        sender.posts(n.posts, [post("after-objection", "u"), post("bystander", "v")]).flush()
        decisions = env.reader(n.decisions)
        quiet_until = time.monotonic() + 4
        while time.monotonic() < quiet_until:  # the stalled stage keeps its partitions
            stalled.poll(0.1)
            decisions.poll(0.1)
        assert decisions.records == [], "a post was decided before the objection was applied"
    finally:
        stalled.close()  # leaves the group: a worker's stage takes the partition over
    got = decisions_by_post(decisions.wait_count(2))
    assert (got["after-objection"][0]["outcome"], got["after-objection"][0]["reason"]) == (
        "BLOCKED",
        "OBJECTED",
    )
    assert got["bystander"][0]["outcome"] == "PUBLISHED"
    training = env.reader(n.training).settle(quiet=1.0)
    assert b"after-objection" not in {r.key for r in training}
