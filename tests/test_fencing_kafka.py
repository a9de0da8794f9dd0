"""Fencing against the real broker (``--fencing on``; docs/operations.md, "Fencing"): a
worker whose partition has a new owner cannot write outputs or table changes for it
any more, and what it wrote in its open transaction is never visible to a
``read_committed`` reader.

The first test plays the new owner itself (``init_transactions`` with the partition's
transactional id) and runs in the suite; the second freezes a worker (SIGSTOP of its
process group) past its session timeout while another takes over, and runs with
``ENFORCER_CHAOS_ZOMBIE=1`` (about two minutes: the group waits 60 s for the frozen
member)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from streams.core.records import partition_for_user
from tests.chaos.harness import independent_check, wait_all_decided
from tests.enforcer_env import Deployment
from tests.support import Record, live_view, objection, post

FENCING = ("--fencing", "on")


@pytest.fixture
def env(kafka: str, names, tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(kafka, names, tmp_path, partitions=2).create_topics()
    yield deployment
    deployment.close()


def read_all(bootstrap: str, topic: str, isolation: str = "read_committed") -> list[Record]:
    """Every record of ``topic`` as a reader with ``isolation`` sees it now."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"fencing-check-{topic}",
            "enable.auto.commit": False,
            "isolation.level": isolation,
        }
    )
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        records: list[Record] = []
        deadline = time.monotonic() + 20
        idle = 0
        while time.monotonic() < deadline and idle < 3:
            msgs = consumer.consume(10000, timeout=0.5)
            idle = 0 if msgs else idle + 1
            for m in msgs:
                if not m.error():
                    records.append(Record(m.topic(), m.partition(), m.offset(), m.key(), m.value()))
        return records
    finally:
        consumer.close()


def user_on(partition: int, partitions: int = 2, prefix: str = "user") -> str:
    n = 0
    while partition_for_user(f"{prefix}{n}".encode(), partitions) != partition:
        n += 1
    return f"{prefix}{n}"


def test_a_new_owners_init_transactions_stops_the_old_one(env: Deployment) -> None:
    """The test takes over partition 0 the way a new owner does; the worker's next
    write for it fails, it stops (exit 70) without committing, and its restart (which
    fences the test's producer in turn) processes the input again."""
    n, user = env.names, user_on(0)
    worker = env.worker(*FENCING)
    training = env.reader(n.training)
    env.sender().posts(n.posts, [post("p-before", user)]).flush()
    training.wait_for(lambda rs: "p-before" in live_view(rs), what="p-before published")

    usurper = Producer({"bootstrap.servers": env.kafka, "transactional.id": f"{n.app_id}-gate-0"})
    usurper.init_transactions(30)
    env.sender().posts(n.posts, [post("p-after", user)]).flush()
    assert worker.wait_exit(60) == 70
    log = worker.full_log()
    assert "exiting, nothing more is committed" in log, worker.log()
    time.sleep(2)
    assert "p-after" not in live_view(read_all(env.kafka, n.training))
    # nothing of the fenced worker's last transaction reached a read_committed reader
    decided = {r.key for r in read_all(env.kafka, n.decisions)}
    assert b"p-after" not in decided and b"p-before" in decided

    worker.start()  # same data dir: its input offset was not committed past p-after
    training.wait_for(lambda rs: "p-after" in live_view(rs), what="p-after published")
    with pytest.raises(Exception, match=r"(?i)fenc"):
        usurper.begin_transaction()
        usurper.produce(n.training, b"x", b"usurped", 0)
        usurper.commit_transaction(10)


@pytest.mark.skipif(
    os.environ.get("ENFORCER_CHAOS_ZOMBIE") != "1",
    reason="about two minutes; ENFORCER_CHAOS_ZOMBIE=1 runs it (make chaos territory)",
)
def test_a_frozen_worker_writes_nothing_after_another_took_over(
    env: Deployment, tmp_path: Path
) -> None:
    """Worker A decides a user's posts while they flow and is frozen in the middle of
    them (records fetched or decided, not committed); B takes over after A's session
    timeout and applies the user's objection, sent while A is frozen; then A is thawed.
    Whatever A does with what it had fetched, nothing of it is visible: no post of the
    user live, no decision made after the thaw, no ledger entry of the user left."""
    # ENFORCER_FENCING=off runs it against a worker without fencing (it fails: the
    # zombie's late publications stay live)
    fencing = ("--fencing", os.environ.get("ENFORCER_FENCING") or "on")
    n, user = env.names, user_on(1)
    a = env.worker(*fencing, data_dir=tmp_path / "a")
    sender = env.sender()
    stop = threading.Event()
    sent: list[str] = []

    def flow() -> None:
        i = 0
        while not stop.is_set():
            sent.append(f"z-{i}")
            sender.posts(n.posts, [post(f"z-{i}", user)])
            sender.producer.poll(0)
            i += 1
            time.sleep(0.005)
        sender.flush()

    thread = threading.Thread(target=flow, daemon=True)
    thread.start()
    time.sleep(4)
    os.killpg(a.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(0.5)
        stop.set()
        thread.join(30)
        env.sender().objections(n.objections, [objection("e-1", user)]).flush()
        b = env.worker(*fencing, start=False, data_dir=tmp_path / "b")
        b.start(wait=False)
        b.wait_ready(240)
        training = env.reader(n.training)
        training.wait_for(
            lambda rs: not any(p.startswith("z-") for p in live_view(rs)),
            timeout=120,
            what="the user's posts retracted by B",
        )
    finally:
        thawed_at = int(time.time() * 1000)
        os.killpg(a.proc.pid, signal.SIGCONT)
    code = a.wait_exit(60)
    assert code == 70, a.log()
    time.sleep(3)
    live = live_view(read_all(env.kafka, n.training))
    assert not [p for p in live if p.startswith("z-")], "a post of the objecting user is live"
    decisions = [r.value for r in read_all(env.kafka, n.decisions) if r.value]
    late = [d for d in decisions if d.get("decided_at", 0) > thawed_at]
    # A's re-keying stage is not fenced: once thawed it may forward posts again, which B
    # decides again as it did before (BLOCKED, OBJECTED). What A could still write from
    # its stale state is a PUBLISHED decision, or one B never made.
    before = {
        (d["post_id"], d["outcome"], d["reason"])
        for d in decisions
        if d.get("decided_at", 0) <= thawed_at
    }
    foreign = [
        d
        for d in late
        if d["outcome"] == "PUBLISHED" or (d["post_id"], d["outcome"], d["reason"]) not in before
    ]
    assert not foreign, (
        f"{len(foreign)} decisions made after A was thawed are visible: {foreign[:3]}"
    )
    ledger: dict[bytes, bytes | None] = {}
    for r in read_all(env.kafka, f"{n.app_id}-ledger-changelog"):
        ledger[r.key] = r.raw
    prefix = len(user.encode()).to_bytes(2, "big") + user.encode()
    assert not [k for k, v in ledger.items() if k.startswith(prefix) and v is not None]
    # A really had written something that B's init_transactions aborted, or was about to
    uncommitted = read_all(env.kafka, n.training, "read_uncommitted")
    assert len(uncommitted) >= len(read_all(env.kafka, n.training))
    # and `enforcer verify`, the operator's check from the topics alone, finds nothing
    # either: called, once every post is decided, as the chaos runs call it
    wait_all_decided(env.kafka, n, 60)
    check = independent_check(env.kafka, n)
    assert check["verify_exit"] == 0, check["verify_output"]
