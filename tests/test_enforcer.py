"""The enforcer against the real broker: what a user of its topics would check.

Outputs are read back with ``read_committed``; every wait polls with a deadline.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.enforcer_env import Deployment, wait_objections
from tests.support import (
    CODEC,
    SECRET_TEXT,
    SECRET_URL,
    decisions_by_post,
    live_view,
    objection,
    post,
)


@pytest.fixture
def env(kafka: str, names, tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(kafka, names, tmp_path).create_topics()
    yield deployment
    deployment.close()


def test_every_policy_reason_is_decided_and_audited(env: Deployment) -> None:
    n = env.names
    worker = env.worker()
    env.sender().objections(n.objections, [objection("e1", "objector")]).flush()
    wait_objections(worker, 1)
    cases = {
        "eligible": post("eligible", "alice"),
        "friends": post("friends", "alice", visibility="FRIENDS"),
        "private-minor": post("private-minor", "bob", visibility="PRIVATE", author_is_adult=False),
        "minor": post("minor", "bob", author_is_adult=False),
        "french": post("french", "carol", author_country="FR"),
        "objected": post("objected", "objector"),
    }
    env.sender().posts(n.posts, cases.values()).flush()
    decisions = decisions_by_post(env.reader(n.decisions).wait_count(len(cases)))
    got = {pid: (d[0]["outcome"], d[0]["reason"]) for pid, d in decisions.items()}
    assert got == {
        "eligible": ("PUBLISHED", "ELIGIBLE"),
        "friends": ("BLOCKED", "NOT_PUBLIC"),
        "private-minor": ("BLOCKED", "NOT_PUBLIC"),
        "minor": ("BLOCKED", "MINOR"),
        "french": ("BLOCKED", "COUNTRY_EXCLUDED"),
        "objected": ("BLOCKED", "OBJECTED"),
    }
    for pid, [d] in decisions.items():
        assert d["policy_version"] == "uk-legitimate-interests-2024-09"
        assert d["source_topic"] == n.posts and d["source_offset"] >= 0
        assert d["user_id"] == cases[pid]["user_id"]
    training = env.reader(n.training).wait_count(1)
    record = training[0].value
    assert training[0].key == b"eligible"
    assert record["text"] == SECRET_TEXT and record["media_urls"] == [SECRET_URL]
    assert record["policy_version"] == "uk-legitimate-interests-2024-09"
    assert set(live_view(env.reader(n.training).settle())) == {"eligible"}


def test_platform_excluded_by_a_custom_policy(env: Deployment, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(
        'version = "fb-only"\ncountries = ["GB", "FR"]\nvisibilities = ["PUBLIC"]\n'
        'platforms = ["FACEBOOK"]\nadults_only = true\n'
    )
    env.worker("--policy", str(policy))
    n = env.names
    env.sender().posts(
        n.posts,
        [
            post("fb", "u"),
            post("ig", "u", platform="INSTAGRAM"),
            post("fr", "u", author_country="FR"),
        ],
    ).flush()
    decisions = decisions_by_post(env.reader(n.decisions).wait_count(3))
    assert {p: d[0]["reason"] for p, d in decisions.items()} == {
        "fb": "ELIGIBLE",
        "ig": "PLATFORM_EXCLUDED",
        "fr": "ELIGIBLE",
    }
    assert all(d[0]["policy_version"] == "fb-only" for d in decisions.values())


def test_objection_on_one_platform_blocks_only_that_platform(env: Deployment) -> None:
    n = env.names
    worker = env.worker()
    env.sender().objections(n.objections, [objection("e1", "u", platform="INSTAGRAM")]).flush()
    wait_objections(worker, 1)
    env.sender().posts(n.posts, [post("fb", "u"), post("ig", "u", platform="INSTAGRAM")]).flush()
    decisions = decisions_by_post(env.reader(n.decisions).wait_count(2))
    assert decisions["fb"][0]["outcome"] == "PUBLISHED"
    assert (decisions["ig"][0]["outcome"], decisions["ig"][0]["reason"]) == ("BLOCKED", "OBJECTED")
    assert set(live_view(env.reader(n.training).settle())) == {"fb"}


def test_objection_after_posts_retracts_them(env: Deployment) -> None:
    n = env.names
    env.worker()
    env.sender().posts(
        n.posts, [post("a1", "alice"), post("a2", "alice", platform="INSTAGRAM"), post("b1", "bob")]
    ).flush()
    training = env.reader(n.training)
    training.wait_count(3)
    env.sender().objections(n.objections, [objection("obj-1", "alice")]).flush()
    retractions = env.reader(n.retractions).wait_count(1)
    assert retractions[0].key == b"alice"
    r = retractions[0].value
    assert r["objection_event_id"] == "obj-1" and r["platform"] is None
    assert sorted(r["post_ids"]) == ["a1", "a2"]
    training.wait_for(lambda rs: set(live_view(rs)) == {"b1"}, what="tombstones for a1, a2")
    tombstones = [rec.key for rec in training.records if rec.raw is None]
    assert sorted(tombstones) == [b"a1", b"a2"]
    decisions = decisions_by_post(env.reader(n.decisions).wait_count(5))
    for pid in ("a1", "a2"):
        assert [(d["outcome"], d["reason"]) for d in decisions[pid]] == [
            ("PUBLISHED", "ELIGIBLE"),
            ("RETRACTED", "OBJECTED"),
        ]
        assert decisions[pid][1]["source_topic"] == n.objections
    # a later post of alice is blocked, and a repeated objection retracts nothing more
    env.sender().objections(n.objections, [objection("obj-1", "alice")]).flush()
    env.sender().posts(n.posts, [post("a3", "alice")]).flush()
    decisions = decisions_by_post(env.reader(n.decisions).wait_count(6))
    assert decisions["a3"][0]["reason"] == "OBJECTED"
    assert len(env.reader(n.retractions).settle()) == 1


def test_platform_objection_after_posts_retracts_only_that_platform(env: Deployment) -> None:
    n = env.names
    env.worker()
    env.sender().posts(n.posts, [post("fb", "u"), post("ig", "u", platform="INSTAGRAM")]).flush()
    training = env.reader(n.training)
    training.wait_count(2)
    env.sender().objections(n.objections, [objection("e", "u", platform="FACEBOOK")]).flush()
    [retraction] = env.reader(n.retractions).wait_count(1)
    assert retraction.value["platform"] == "FACEBOOK" and retraction.value["post_ids"] == ["fb"]
    training.wait_for(lambda rs: set(live_view(rs)) == {"ig"}, what="tombstone for fb")


def test_withdrawal_readmits_later_posts_only(env: Deployment) -> None:
    n = env.names
    worker = env.worker()
    env.sender().objections(n.objections, [objection("o", "u", occurred_at=1000)]).flush()
    wait_objections(worker, 1)
    env.sender().posts(n.posts, [post("while-objected", "u")]).flush()
    decisions = env.reader(n.decisions)
    decisions.wait_count(1)
    env.sender().objections(
        n.objections, [objection("w", "u", "WITHDRAW", occurred_at=2000)]
    ).flush()
    wait_objections(worker, 2)
    env.sender().posts(n.posts, [post("after", "u")]).flush()
    got = decisions_by_post(decisions.wait_count(2))
    assert [d["reason"] for d in got["while-objected"]] == ["OBJECTED"]
    assert [d["outcome"] for d in got["after"]] == ["PUBLISHED"]
    assert set(live_view(env.reader(n.training).settle())) == {"after"}


def test_out_of_order_and_duplicate_objection_events(env: Deployment) -> None:
    n = env.names
    worker = env.worker()
    events = [
        objection("w-new", "u1", "WITHDRAW", occurred_at=2000),
        objection("o-old", "u1", "OBJECT", occurred_at=1000),  # older, arrives later: no effect
        objection("o-u2", "u2", "OBJECT", occurred_at=1000),
        objection("o-u2", "u2", "WITHDRAW", occurred_at=3000),  # repeated event id: ignored
    ]
    for e in events:  # one at a time, so that arrival order is the order above
        env.sender().objections(n.objections, [e]).flush()
    wait_objections(worker, 4)
    env.sender().posts(n.posts, [post("p-u1", "u1"), post("p-u2", "u2")]).flush()
    got = decisions_by_post(env.reader(n.decisions).wait_count(2))
    assert got["p-u1"][0]["outcome"] == "PUBLISHED"
    assert (got["p-u2"][0]["outcome"], got["p-u2"][0]["reason"]) == ("BLOCKED", "OBJECTED")


def test_inputs_with_different_partitioners_and_partition_counts(
    kafka: str, names, tmp_path: Path
) -> None:
    from tests.support import create_topics

    # upstream topics exist already, with partition counts unlike the worker's
    create_topics(kafka, {names.posts: 3, names.objections: 5})
    env = Deployment(kafka, names, tmp_path).create_topics()
    try:
        worker = env.worker()
        rnd = random.Random(7)
        users = [f"user-{i}" for i in range(200)]
        objectors = set(rnd.sample(users, 80))
        # objections keyed by an event id, murmur2 (Java's default partitioner)
        env.sender("murmur2_random").objections(
            names.objections,
            [objection(f"e-{u}", u) for u in sorted(objectors)],
            key=lambda e: e["event_id"].encode(),
        ).flush()
        wait_objections(worker, len(objectors))
        # posts keyed by post id (or null), librdkafka's default partitioner
        posts = [post(f"{u}-p{j}", u) for u in users for j in range(3)]
        sender = env.sender("consistent_random")
        for i, p in enumerate(posts):
            sender.raw(
                names.posts, CODEC.encode("Post", p), None if i % 2 else p["post_id"].encode()
            )
        sender.flush()
        decisions = decisions_by_post(env.reader(names.decisions).wait_count(len(posts), 90))
        for p in posts:
            [d] = decisions[p["post_id"]]
            expected = "OBJECTED" if p["user_id"] in objectors else "ELIGIBLE"
            assert d["reason"] == expected, p["post_id"]
        live = live_view(env.reader(names.training).settle())
        assert {r["user_id"] for r in live.values()} == set(users) - objectors
    finally:
        env.close()


def test_malformed_inputs_go_to_the_dlq_and_the_worker_keeps_running(env: Deployment) -> None:
    n = env.names
    worker = env.worker()
    good = CODEC.encode("Post", post("good", "u"))
    objection_bytes = CODEC.encode("ObjectionEvent", objection("e", "u"))
    bad = {
        b"garbage": (n.posts, b"not avro at all " + SECRET_TEXT.encode()),
        b"truncated": (n.posts, good[:-7]),
        b"unknown-fingerprint": (n.posts, b"\xc3\x01" + b"\x11" * 8 + good[10:]),
        b"confluent-without-registry": (n.posts, b"\x00\x00\x00\x00\x2a" + good[10:]),
        b"objection-on-posts": (n.posts, objection_bytes),
        b"empty-user": (n.posts, CODEC.encode("Post", post("x", ""))),
        b"bad-country": (n.posts, CODEC.encode("Post", post("y", "u", author_country="gb1"))),
        b"null-value": (n.objections, None),
        b"post-on-objections": (n.objections, good),
        b"trailing-bytes": (n.objections, objection_bytes + b"\x00"),
    }
    sender = env.sender()
    for key, (topic, value) in bad.items():
        # the input's own headers, one named like a header of the internal topic
        sender.raw(topic, value, key, headers=[("trace", key), ("source.key", b"spoof")])
    sender.raw(n.posts, good, b"good").flush()
    dlq = env.reader(n.dlq).wait_count(len(bad))
    by_key = {r.key: r for r in dlq}
    assert set(by_key) == set(bad), "the DLQ keeps the input's key"
    for key, (topic, value) in bad.items():
        record = by_key[key]
        assert record.raw == value, "the DLQ keeps the input's bytes unchanged"
        assert record.headers["trace"] == key, "and the input's own headers"
        assert record.headers["source.topic"].decode() == topic
        assert int(record.headers["source.partition"]) >= 0
        assert int(record.headers["source.offset"]) >= 0
        assert record.headers["error"], key
    assert b"unknown schema fingerprint" in by_key[b"unknown-fingerprint"].headers["error"]
    assert b"truncated" in by_key[b"truncated"].headers["error"]
    assert b"expected a Post record" in by_key[b"objection-on-posts"].headers["error"]
    decisions = env.reader(n.decisions).wait_count(1)
    assert decisions[0].key == b"good" and decisions[0].value["outcome"] == "PUBLISHED"
    assert worker.alive()
    # every input offset ended as a decision or a DLQ record
    assert len(env.reader(n.decisions).settle()) + len(env.reader(n.dlq).settle()) == len(bad) + 1
    log = worker.full_log()
    assert SECRET_TEXT not in log and SECRET_URL not in log


@pytest.mark.parametrize("lose_data_dir", [False, True], ids=["same-data-dir", "data-dir-deleted"])
def test_state_survives_restart(env: Deployment, lose_data_dir: bool) -> None:
    n = env.names
    worker = env.worker()
    env.sender().objections(n.objections, [objection("o", "objector")]).flush()
    env.sender().posts(
        n.posts,
        [post("live-1", "later-objector"), post("live-2", "later-objector", platform="INSTAGRAM")],
    ).flush()
    wait_objections(worker, 1)
    training = env.reader(n.training)
    training.wait_count(2)
    assert worker.stop() == 0, worker.log()
    if lose_data_dir:
        shutil.rmtree(env.data_dir)
    worker = env.worker()
    # consent state: the objection made before the restart still blocks
    env.sender().posts(n.posts, [post("after-restart", "objector")]).flush()
    # ledger: posts published before the restart are retracted by a later objection
    env.sender().objections(n.objections, [objection("o2", "later-objector")]).flush()
    decisions = decisions_by_post(env.reader(n.decisions).wait_count(5))
    assert decisions["after-restart"][-1]["reason"] == "OBJECTED"
    [retraction] = env.reader(n.retractions).wait_count(1)
    assert sorted(retraction.value["post_ids"]) == ["live-1", "live-2"]
    training.wait_for(lambda rs: live_view(rs) == {}, what="both posts retracted")
    # no input was decided twice across a clean stop
    assert len(decisions["live-1"]) == 2 and decisions["live-1"][0]["outcome"] == "PUBLISHED"
