"""Issue 18 against the real broker: a receipt for every objection event, ``enforcer
audit`` of a user with objections, withdrawals, retractions and a replay, and
``enforcer verify`` passing on a clean run and failing, naming the record, when a
published record of an objecting user is injected into training-ingest by hand and
when an input offset has no record."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from streams.core.enforcement import training_record
from streams.core.policy import load_policy
from tests.enforcer_env import Deployment, run_enforcer
from tests.support import CODEC, objection, post

YEAR_3000 = 32_503_680_000_000


def enforcer(env: Deployment, command: str, *args: str, timeout: float = 120):
    return run_enforcer(env, command, *args, timeout=timeout)


def test_receipts_audit_and_verify(kafka: str, names, tmp_path: Path) -> None:
    env = Deployment(kafka, names, tmp_path, partitions=2).create_topics()
    try:
        worker = env.worker()
        send = env.sender()
        receipts = env.reader(names.receipts)
        decisions = env.reader(names.decisions)
        now = int(time.time() * 1000)

        def events(*evts, expect: int) -> list:
            send.objections(names.objections, evts).flush()
            return receipts.wait_count(expect, timeout=60)

        def posts(*ps, expect: int) -> list:
            send.posts(names.posts, ps).flush()
            return decisions.wait_count(expect, timeout=60)

        # user b objects before any post of theirs; user a's posts are live first
        events(objection("b-1", "b", occurred_at=now - 5000), expect=1)
        posts(
            post("a-p1", "a", platform="FACEBOOK"),
            post("a-p2", "a", platform="INSTAGRAM"),
            post("b-p1", "b"),
            expect=3,
        )
        # a objects on FACEBOOK (a-p1 retracted), repeats it, sends an older withdrawal,
        # objects on INSTAGRAM from the year 3000 (clamped; a-p2 retracted), then withdraws
        events(objection("a-1", "a", platform="FACEBOOK", occurred_at=now - 4000), expect=2)
        events(objection("a-1", "a", platform="FACEBOOK", occurred_at=now - 4000), expect=3)
        events(
            objection("a-0", "a", "WITHDRAW", platform="FACEBOOK", occurred_at=now - 4500),
            expect=4,
        )
        events(objection("a-2", "a", platform="INSTAGRAM", occurred_at=YEAR_3000), expect=5)
        got = events(objection("a-3", "a", "WITHDRAW", occurred_at=now + 60_000), expect=6)
        posts(post("a-p3", "a"), expect=6)  # 3 posts, 2 retractions, then a-p3
        send.raw(names.posts, b"not avro", b"k").flush()
        env.reader(names.dlq).wait_count(1, timeout=60)

        by_event = {}
        for r in got:
            by_event.setdefault(r.value["event_id"], []).append(r.value)
        outcomes = [(e, [r["outcome"] for r in rs]) for e, rs in by_event.items()]
        assert dict(outcomes) == {
            "b-1": ["APPLIED"],
            "a-1": ["APPLIED", "IGNORED_REPEATED_EVENT_ID"],
            "a-0": ["IGNORED_OLDER"],
            "a-2": ["CLAMPED_FROM_FUTURE"],
            "a-3": ["APPLIED"],
        }
        clamped = by_event["a-2"][0]
        assert clamped["occurred_at"] == YEAR_3000
        assert now - 60_000 < clamped["applied_occurred_at"] < YEAR_3000
        assert [by_event[e][0]["posts_retracted"] for e in ("b-1", "a-1", "a-0", "a-2", "a-3")] == [
            0,
            1,
            0,
            1,
            0,
        ]
        assert by_event["a-1"][0]["objected_platforms"] == ["FACEBOOK"]
        assert by_event["a-2"][0]["objected_platforms"] == ["FACEBOOK", "INSTAGRAM"]
        assert by_event["a-3"][0]["objected_platforms"] == []
        offsets = {(r.value["source_partition"], r.value["source_offset"]) for r in got}
        assert len(offsets) == 6 and all(r.key == r.value["user_id"].encode() for r in got)
        retracted = {
            d.value["post_id"]: d.value["cause"]
            for d in decisions.records
            if d.value["outcome"] == "RETRACTED"
        }
        assert retracted == {"a-p1": "a-1", "a-p2": "a-2"}
        assert all(
            d.value["cause"] is None for d in decisions.records if d.value["outcome"] != "RETRACTED"
        )

        # a replay republishes a's posts (withdrawn now)
        out = enforcer(env, "replay", "--users", "a")
        assert out.returncode == 0, out.stderr
        decisions.wait_count(8, timeout=60)

        audit = enforcer(env, "audit", "--user", "a", "--format", "json")
        assert audit.returncode == 0, audit.stderr
        line = json.loads(audit.stdout)
        assert [r["event_id"] for r in line["receipts"]] == ["a-1", "a-1", "a-0", "a-2", "a-3"]
        assert set(line["decisions"]) == {"a-p1", "a-p2", "a-p3"}
        p1 = [
            (d["outcome"], d["cause"], d["replay_id"] is not None)
            for d in line["decisions"]["a-p1"]
        ]
        assert p1 == [
            ("PUBLISHED", None, False),
            ("RETRACTED", "a-1", False),
            ("PUBLISHED", None, True),
        ]
        windows = {e["event_id"]: e for e in line["exposures"]}
        assert set(windows) == {"a-1", "a-2"}
        live_at_a1 = {p["post_id"]: p["cause"] for p in windows["a-1"]["live_posts"]}
        assert live_at_a1 == {"a-p1": "a-1", "a-p2": "a-2"}  # a-p2: not in a-1's scope
        a2 = {p["post_id"]: p for p in windows["a-2"]["live_posts"]}
        assert a2["a-p2"]["cause"] == "a-2" and 0 <= a2["a-p2"]["seconds_after_applied"] < 5
        scans = {s["topic"]: s for s in line["scans"]}
        assert scans[names.receipts]["partitions"] == 1  # read by key
        text = enforcer(env, "audit", "--user", "a")
        assert "CLAMPED_FROM_FUTURE" in text.stdout and "exposure windows" in text.stdout

        # verify: clean
        report = tmp_path / "report.html"
        ok = enforcer(env, "verify", "--grace", "0", "--report", str(report))
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "no violations" in ok.stdout
        # a-1 had to retract a-p1, a-2 a-p2, each before a-3 allowed them again
        assert re.search(r"objection_retractions_required +2\n", ok.stdout), ok.stdout
        assert "objection_retractions_missing" not in ok.stdout
        assert "objection-to-retraction latency: n=2 " in ok.stdout
        page = report.read_text()
        assert page.count("data:image/png;base64,") == 2 and "No violations" in page

        # a record of objecting user b injected into training-ingest by hand
        injected = training_record(post("b-leak", "b"), load_policy(), int(time.time() * 1000))
        send.raw(names.training, CODEC.encode("TrainingRecord", injected), b"b-leak").flush()
        bad = enforcer(env, "verify", "--grace", "0")
        assert bad.returncode == 1, bad.stdout + bad.stderr
        assert "published_while_objected: post b-leak of user b" in bad.stdout
        assert "published_without_decision: post b-leak" in bad.stdout
        assert "still_live: post b-leak" in bad.stdout
        send.raw(names.training, None, b"b-leak").flush()  # retract it again

        # an input offset with no record: a post sent while no worker runs
        worker.stop()
        send.posts(names.posts, [post("late", "c")]).flush()
        missing = enforcer(env, "verify", "--grace", "0")
        assert missing.returncode == 1, missing.stdout
        assert "unaccounted:" in missing.stdout and "(post late) has no decision" in missing.stdout
    finally:
        env.close()
