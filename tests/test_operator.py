"""Operators: replay after withdrawal and policy changes, dry runs, replay under live
traffic, the generator, and the embedded demo."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.core.consent import EMPTY, apply
from streams.traffic.generator import TrafficGenerator
from tests.enforcer_env import Deployment, run_enforcer, wait_objections
from tests.support import ROOT, decisions_by_post, live_view, objection, post

POLICY = (
    'version = "{version}"\ncountries = {countries}\nvisibilities = ["PUBLIC"]\n'
    "platforms = {platforms}\nadults_only = true\n"
)


@pytest.fixture
def env(kafka: str, names, tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(kafka, names, tmp_path).create_topics()
    yield deployment
    deployment.close()


def policy_file(
    tmp_path: Path,
    version: str,
    countries: list[str],
    platforms: tuple[str, ...] = ("FACEBOOK", "INSTAGRAM"),
) -> str:
    path = tmp_path / f"{version}.toml"
    path.write_text(
        POLICY.format(
            version=version,
            countries=str(countries).replace("'", '"'),
            platforms=str(list(platforms)).replace("'", '"'),
        )
    )
    return str(path)


def replay(env: Deployment, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return run_enforcer(env, "replay", *args, timeout=timeout)


def changes(output: str) -> dict[tuple[str, str], int]:
    """The summary table of a replay: (change, reason) -> posts."""
    rows = re.findall(r"^(PUBLISHED|RETRACTED|UNCHANGED)\s+([A-Z_]+)\s+(\d+)$", output, re.M)
    return {(c, r): int(n) for c, r, n in rows}


def test_withdrawal_then_replay_readmits_blocked_posts(env: Deployment) -> None:
    n = env.names
    worker = env.worker()
    env.sender().objections(n.objections, [objection("o", "u", occurred_at=1000)]).flush()
    wait_objections(worker, 1)
    env.sender().posts(
        n.posts, [post("p1", "u"), post("p2", "u", platform="INSTAGRAM"), post("other", "v")]
    ).flush()
    decisions = env.reader(n.decisions)
    decisions.wait_count(3)
    env.sender().objections(
        n.objections, [objection("w", "u", "WITHDRAW", occurred_at=2000)]
    ).flush()
    wait_objections(worker, 2)

    first = replay(env, "--users", "u")
    assert first.returncode == 0, first.stderr
    assert changes(first.stdout) == {("PUBLISHED", "ELIGIBLE"): 2}
    replay_id = re.search(r"^replay (\w+):", first.stdout, re.M).group(1)
    got = decisions_by_post(decisions.wait_count(5))
    for pid in ("p1", "p2"):
        assert [d["outcome"] for d in got[pid]] == ["BLOCKED", "PUBLISHED"]
        assert got[pid][1]["replay_id"] == replay_id and got[pid][0]["replay_id"] is None
        assert got[pid][1]["source_topic"] == n.posts
    assert set(live_view(env.reader(n.training).wait_count(3))) == {"p1", "p2", "other"}

    second = replay(env, "--users", "u")  # idempotent: nothing changes, nothing is written
    assert second.returncode == 0, second.stderr
    assert changes(second.stdout) == {("UNCHANGED", "ELIGIBLE"): 2}
    assert len(decisions.settle()) == 5


def test_policy_adds_a_country_then_replay_publishes(env: Deployment, tmp_path: Path) -> None:
    n = env.names
    worker = env.worker("--policy", policy_file(tmp_path, "gb-only", ["GB"]))
    env.sender().posts(n.posts, [post("gb", "u"), post("fr", "v", author_country="FR")]).flush()
    decisions = env.reader(n.decisions)
    decisions.wait_count(2)
    assert worker.stop() == 0
    env.worker("--policy", policy_file(tmp_path, "gb-fr", ["GB", "FR"]))

    # dry run: prints what would change and writes nothing
    dry = replay(env, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would change" in dry.stdout and re.search(r"PUBLISHED\s+ELIGIBLE\s+fr", dry.stdout)
    assert changes(dry.stdout) == {("PUBLISHED", "ELIGIBLE"): 1, ("UNCHANGED", "ELIGIBLE"): 1}
    assert len(decisions.settle()) == 2
    training = env.reader(n.training)
    assert set(live_view(training.settle())) == {"gb"}

    real = replay(env)
    assert real.returncode == 0, real.stderr
    assert changes(real.stdout) == {("PUBLISHED", "ELIGIBLE"): 1, ("UNCHANGED", "ELIGIBLE"): 1}
    live = live_view(training.wait_count(2))
    assert live["fr"]["policy_version"] == "gb-fr"
    assert live["gb"]["policy_version"] == "gb-only"  # unchanged posts are not re-published


def test_policy_removes_a_platform_then_replay_retracts(env: Deployment, tmp_path: Path) -> None:
    n = env.names
    worker = env.worker()
    env.sender().posts(n.posts, [post("fb", "u"), post("ig", "u", platform="INSTAGRAM")]).flush()
    training = env.reader(n.training)
    training.wait_count(2)
    assert worker.stop() == 0
    env.worker("--policy", policy_file(tmp_path, "fb-only", ["GB"], ("FACEBOOK",)))
    result = replay(env, "--from", "2000-01-01T00:00:00Z")
    assert result.returncode == 0, result.stderr
    assert changes(result.stdout) == {
        ("RETRACTED", "PLATFORM_EXCLUDED"): 1,
        ("UNCHANGED", "ELIGIBLE"): 1,
    }
    training.wait_for(lambda rs: set(live_view(rs)) == {"fb"}, what="tombstone for ig")
    got = decisions_by_post(env.reader(n.decisions).wait_count(3))
    assert (got["ig"][-1]["outcome"], got["ig"][-1]["reason"]) == ("RETRACTED", "PLATFORM_EXCLUDED")
    assert got["ig"][-1]["replay_id"] and got["ig"][-1]["policy_version"] == "fb-only"


def test_replay_under_live_traffic_and_objections_leaks_nothing(env: Deployment) -> None:
    n = env.names
    env.worker()
    gen = TrafficGenerator(users=150, seed=3, objector_share=0.3, objection_rate=0.1)
    first = list(gen.records(3000))
    later = list(gen.records(3000))
    sender = env.sender()
    topic = {"posts": n.posts, "objections": n.objections}
    for r in first:
        sender.raw(topic[r.topic_kind], r.value, r.key)
    sender.flush()
    decisions = env.reader(n.decisions)
    first_posts = [r for r in first if r.kind == "post"]
    decisions.wait_count(len(first_posts), timeout=90)

    def live_traffic() -> None:
        s = env.sender()
        for r in later:
            s.raw(topic[r.topic_kind], r.value, r.key)
        s.flush()

    thread = threading.Thread(target=live_traffic)
    thread.start()
    result = replay(env)
    thread.join()
    assert result.returncode == 0, result.stderr
    all_posts = {r.datum["post_id"] for r in first + later if r.kind == "post"}
    decisions.wait_for(
        lambda rs: all_posts <= {r.key.decode() for r in rs}, timeout=90, what="every post decided"
    )
    final = {}
    for r in first + later:
        if r.kind == "objection":
            final[r.datum["user_id"]] = apply(final.get(r.datum["user_id"], EMPTY), r.datum)
    live = live_view(env.reader(n.training).settle(quiet=2.0))
    leaks = [p for p in live.values() if final.get(p["user_id"], EMPTY).objected(p["platform"])]
    assert leaks == []


def test_replay_refuses_without_a_worker_or_with_a_bad_range(env: Deployment) -> None:
    no_worker = replay(env)
    assert no_worker.returncode == 2
    assert "no worker of app id" in no_worker.stderr and "Traceback" not in no_worker.stderr
    bad = replay(env, "--from", "2030-01-01", "--to", "2020-01-01")
    assert bad.returncode == 2 and "--from is after --to" in bad.stderr
    garbage = replay(env, "--from", "yesterday")
    assert garbage.returncode == 2 and "--from must be ISO 8601" in garbage.stderr


def test_generate_is_deterministic(env: Deployment) -> None:
    def records(seed: int) -> list[bytes]:
        gen = TrafficGenerator(users=50, seed=seed, bad_ratio=0.05, objection_rate=0.1)
        return [r.value for r in gen.records(500)]

    assert records(9) == records(9) and records(9) != records(10)
    n = env.names
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams",
            "generate",
            "--bootstrap-servers",
            env.kafka,
            *n.flags(),
            "--count",
            "400",
            "--users",
            "30",
            "--bad-ratio",
            "0.05",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    counts = dict(kv.split("=") for kv in result.stdout.split())
    assert sum(int(v) for v in counts.values()) >= 400 and int(counts["bad"]) > 0


def test_demo_prints_a_summary_and_leaves_no_process(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams",
            "demo",
            "--duration",
            "12",
            "--rate",
            "500",
            "--partitions",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = result.stdout[result.stdout.rindex("summary") :]
    published = int(re.search(r"published\s+(\d+)", summary).group(1))
    blocked = int(re.search(r"blocked\s+(\d+)", summary).group(1))
    assert published > 0 and blocked > 0, summary
    leftovers = subprocess.run(
        ["pgrep", "-af", "enforcer-demo-"], capture_output=True, text=True
    ).stdout
    assert leftovers.strip() == "", leftovers
