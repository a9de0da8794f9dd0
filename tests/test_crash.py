"""kill -9 of the worker in the middle of a stream, then restart: no leak, no loss."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from streams.core.consent import EMPTY, apply
from streams.core.policy import load_policy
from streams.core.records import partition_for_user
from streams.traffic.generator import TrafficGenerator
from tests.enforcer_env import Deployment, run_enforcer
from tests.support import live_view


@pytest.mark.parametrize("restart", ["same-data-dir", "failover-to-new-data-dir"])
def test_kill_9_mid_stream_then_restart(kafka: str, names, tmp_path: Path, restart: str) -> None:
    """The restart is the same worker (static membership: it takes its partitions back
    at once), or a worker elsewhere with no local state (it waits for the broker to
    time the killed member out, then restores the tables from their changelogs)."""
    env = Deployment(kafka, names, tmp_path).create_topics()
    try:
        gen = TrafficGenerator(
            users=400, seed=42, objector_share=0.25, objection_rate=0.08, bad_ratio=0.01
        )
        records = list(gen.records(20_000))
        posts = [r.datum for r in records if r.kind == "post"]
        events = [r.datum for r in records if r.kind == "objection"]
        bad = [r for r in records if r.kind == "bad"]
        topic = {"posts": names.posts, "objections": names.objections}
        by_post_id = env.sender("consistent_random")
        by_event_id = env.sender("murmur2_random")

        def produce(batch) -> None:
            for r in batch:
                (by_event_id if r.topic_kind == "objections" else by_post_id).raw(
                    topic[r.topic_kind], r.value, r.key
                )
            by_post_id.flush()
            by_event_id.flush()

        # the first half is waiting when the worker starts; the second half arrives after
        # the restart, when the first half's objections are in the consent table
        produce(records[:10_000])
        worker = env.worker()
        decisions = env.reader(names.decisions)
        decisions.wait_count(len(posts) // 4, timeout=120)
        worker.kill()  # SIGKILL: no shutdown, no commit
        processed_before_kill = len(decisions.records)
        assert processed_before_kill < len(posts), "the worker finished before it was killed"

        env.worker(data_dir=None if restart == "same-data-dir" else tmp_path / "elsewhere")
        produce(records[10_000:])
        post_ids = {p["post_id"] for p in posts}

        def all_posts_decided(rs) -> bool:
            return post_ids <= {r.key.decode() for r in rs}

        try:
            decisions.wait_for(all_posts_decided, timeout=180, what="a decision for every post")
        except AssertionError as exc:
            undecided = post_ids - {r.key.decode() for r in decisions.records}
            by_partition = Counter(
                partition_for_user(p["user_id"].encode(), env.partitions)
                for p in posts
                if p["post_id"] in undecided
            )
            raise AssertionError(
                f"{exc}: {len(undecided)} posts undecided, by gate partition "
                f"{dict(sorted(by_partition.items()))}"
            ) from None
        dlq = env.reader(names.dlq).wait_for(
            lambda rs: (
                len(
                    {
                        (
                            r.headers["source.topic"],
                            r.headers["source.offset"],
                            r.headers["source.partition"],
                        )
                        for r in rs
                    }
                )
                >= len(bad)
            ),
            timeout=60,
            what="every malformed record in the DLQ",
        )
        assert {r.headers["source.topic"].decode() for r in dlq} <= set(topic.values())

        training = env.reader(names.training).settle(quiet=3.0)
        decisions.settle()
        live = live_view(training)
        final = {}
        for e in events:
            final[e["user_id"]] = apply(final.get(e["user_id"], EMPTY), e)
        # no leak: no live post of a user objecting on its platform
        leaks = [p for p in live.values() if final.get(p["user_id"], EMPTY).objected(p["platform"])]
        assert leaks == [], f"{len(leaks)} posts of objected users are live"
        # no loss: every eligible post of a user who never objected is live
        policy = load_policy()
        never_objected = {p["user_id"] for p in posts} - {e["user_id"] for e in events}
        expected = {
            p["post_id"]
            for p in posts
            if p["user_id"] in never_objected and policy.reason(p, False).value == "ELIGIBLE"
        }
        missing = expected - set(live)
        assert not missing, f"{len(missing)} eligible posts missing from training-ingest"
        assert len(expected) > 1000
        # objectors' posts were actually retracted or blocked (the test exercises both)
        outcomes = {(d.value["outcome"], d.value["reason"]) for d in decisions.records}
        assert ("RETRACTED", "OBJECTED") in outcomes and ("BLOCKED", "OBJECTED") in outcomes
        # every objection event has its receipt; then the independent check of the topics
        # (issue 18): every input accounted for, nothing published while objected
        env.reader(names.receipts).wait_for(
            lambda rs: (
                len({(r.value["source_partition"], r.value["source_offset"]) for r in rs})
                >= len(events)
            ),
            timeout=60,
            what="a receipt for every objection event",
        )
        checked = run_enforcer(env, "verify", "--grace", "0")
        assert checked.returncode == 0, checked.stdout[:8000] + checked.stderr[-2000:]
    finally:
        env.close()
