"""``enforcer audit --from/--to`` against the real broker: a windowed timeline is the
whole timeline restricted to the window, both when no objection is applied in the
window (decisions read from the window on, then only the partitions of the posts found
there from their beginning, for those posts' earlier decisions) and when one is (its
exposure window lists every post then live: all of the history is read)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from streams.cli import audit as audit_module
from streams.cli.audit import as_json, audit
from streams.serde.codec import Codec
from tests.enforcer_env import Deployment, run_enforcer
from tests.support import objection, post

QUIET_S = 1.0  # the window's ends lie in the middle of a pause this long


def now_ms() -> int:
    return int(time.time() * 1000)


def restricted(whole: dict[str, Any], start: int, end: int) -> dict[str, Any]:
    """The whole timeline restricted to [start, end]: the receipts applied in it, the
    posts with a decision in it (each with its decisions up to ``end``), the retractions
    made in it and the exposure windows of the objections applied in it (their posts'
    retractions here are all inside the window too)."""
    return {
        "user_id": whole["user_id"],
        "receipts": [r for r in whole["receipts"] if start <= r["applied_at"] <= end],
        "decisions": {
            pid: [d for d in ds if d["logged_at"] <= end]
            for pid, ds in whole["decisions"].items()
            if any(start <= d["decided_at"] and d["logged_at"] <= end for d in ds)
        },
        "retractions": [r for r in whole["retractions"] if start <= r["retracted_at"] <= end],
        "exposures": [e for e in whole["exposures"] if start <= e["applied_at"] <= end],
    }


def timeline(env: Deployment, *window: str) -> dict[str, Any]:
    out = run_enforcer(env, "audit", "--user", "a", "--format", "json", *window, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_windowed_audit_is_the_whole_timeline_restricted(
    kafka: str, names, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = Deployment(kafka, names, tmp_path, partitions=2).create_topics()
    try:
        env.worker()
        send = env.sender()
        decisions = env.reader(names.decisions)
        receipts = env.reader(names.receipts)

        def posts(*ps: dict) -> None:
            before = len(decisions.records)
            send.posts(names.posts, ps).flush()
            decisions.wait_count(before + len(ps), timeout=60)
            decisions.settle(0.5)

        def events(*evts: dict) -> None:
            before = len(receipts.records)
            send.objections(names.objections, evts).flush()
            receipts.wait_count(before + len(evts), timeout=60)
            decisions.settle(0.5)

        def boundary() -> int:
            time.sleep(QUIET_S / 2)
            at = now_ms()
            time.sleep(QUIET_S / 2)
            return at

        # before both windows: a's posts on two platforms, and others' ("ab" contains
        # "a": its records pass the byte prefilter and are decoded, then left out)
        posts(
            post("a-p1", "a"),
            post("a-p2", "a", platform="INSTAGRAM"),
            post("a-p3", "a"),
            post("ab-p1", "ab"),
            post("c-p1", "c"),
        )
        w1_start = boundary()
        # window 1, no objection: a-p1 is sent again, no longer public (retracted,
        # cause post:a-p1), a-p4 is new
        posts(post("a-p1", "a", visibility="PRIVATE"), post("a-p4", "a"), post("ab-p2", "ab"))
        w1_end = boundary() - 1
        w2_start = w1_end + 1
        # window 2: a objects on FACEBOOK (a-p3 and a-p4 retracted; a-p2 live, out of
        # scope), then a FACEBOOK post of a's is blocked
        events(objection("a-1", "a", platform="FACEBOOK", occurred_at=now_ms() - 1000))
        posts(post("a-p5", "a"), post("c-p2", "c"))
        w2_end = boundary() - 1
        # after: a withdraws and posts again
        events(objection("a-2", "a", "WITHDRAW", occurred_at=now_ms() - 1000))
        posts(post("a-p6", "a"))

        whole = timeline(env)
        whole.pop("scans")
        assert set(whole["decisions"]) == {f"a-p{i}" for i in range(1, 7)}
        w1 = (w1_start, w1_end)
        w2 = (w2_start, w2_end)

        # window 1 (the two passes): a-p1's earlier PUBLISHED decision comes with its
        # retraction in the window
        got = timeline(env, "--from", str(w1[0]), "--to", str(w1[1]))
        scans = {s["topic"]: s for s in got.pop("scans")}
        assert got == restricted(whole, *w1)
        assert set(got["decisions"]) == {"a-p1", "a-p4"}
        p1 = [(d["outcome"], d["cause"]) for d in got["decisions"]["a-p1"]]
        assert p1 == [("PUBLISHED", None), ("RETRACTED", "post:a-p1")]
        assert got["exposures"] == [] and got["receipts"] == []
        assert scans[names.decisions]["partitions"] == 2

        # window 2 (an objection applied: every post live then, a-p2 from before)
        got = timeline(env, "--from", str(w2[0]), "--to", str(w2[1]))
        got.pop("scans")
        assert got == restricted(whole, *w2)
        [exposure] = got["exposures"]
        live = {p["post_id"]: p["cause"] for p in exposure["live_posts"]}
        assert live == {"a-p2": None, "a-p3": "a-1", "a-p4": "a-1"}
        assert [r["event_id"] for r in got["receipts"]] == ["a-1"]

        # without the clock margin (worker and broker share this clock), the first
        # pass of window 1 starts at the window: fewer records are read, same timeline
        monkeypatch.setattr(audit_module, "CLOCK_MARGIN_MS", 0)
        settings = env.settings()
        full = json.loads(as_json(audit(settings, Codec(), "a")))
        near = json.loads(as_json(audit(settings, Codec(), "a", *w1)))
        full_read = {s["topic"]: s["records"] for s in full.pop("scans")}
        near_read = {s["topic"]: s["records"] for s in near.pop("scans")}
        assert full == whole
        assert near == restricted(whole, *w1)
        assert near_read[names.decisions] < full_read[names.decisions]
    finally:
        env.close()
