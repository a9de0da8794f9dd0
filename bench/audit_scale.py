"""``enforcer audit --user`` on a large decisions topic: how long one user's timeline takes.

    nice -n 10 python -m bench.audit_scale [--records 10000000] [--runs 3]

On a fresh local broker (``deploy/kafka/local-kafka``, its own data dir under /tmp and a
free port, stopped at the end; or ``--bootstrap``), it fills a fresh set of the three
audit topics (8 partitions each, retention forever):

* ``--records`` Decision records (the real schema, encoded by the codec as the worker
  writes them, keyed by post id, on the partition librdkafka's default partitioner gives
  the key) of ``--users`` users over ``--span-days`` days, in time order: 80% PUBLISHED,
  10% BLOCKED (each reason), 7% RETRACTED with a cause, 3% PUBLISHED by a replay;
* a ConsentReceipt every 25 decisions (a random user's objection or withdrawal, keyed
  by user) and a Retraction for a third of the objections;
* the audited user's own story spread through all of it: ``--user-posts`` posts at even
  intervals on two platforms, an objection on one platform (a third of the way), its
  repeat, a withdrawal, an objection on every platform (at 60%) and a withdrawal, each
  with its receipt, the RETRACTED decisions of the posts then live (on each post's own
  partition, at the receipt's time) and their Retraction; posts made while objected are
  BLOCKED.

The records' timestamps are their ``decided_at``/``applied_at``/``retracted_at`` (the
topics are created with ``CreateTime``, each partition written by one producer in time
order, so its timestamps never go down): this stands in for the ``LogAppendTime`` of the
enforcer's audit topics, which a fill of minutes could not spread over days.
``--producers`` processes produce, each the partitions ``p % producers == k``, with
confluent-kafka batching.

Then it times ``enforcer audit --user <audited user> --format json`` (a subprocess, as an
operator runs it), ``--runs`` times each, interleaved: the whole history; a one-hour
``--from``/``--to`` window around one of the user's posts (no objection applied in
it); and a one-hour window around the objection on every platform (its exposure window
needs every post live then, so all of the user's history). It checks each windowed
timeline against the whole one restricted to the window, and the whole one against
the story. Results: ``bench/results/audit-scale-<UTC timestamp>.json`` (sizes, bytes
on disk, seconds per run, records a second, the code's commit, the load average).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from bench.run import LOCAL_KAFKA, free_port, machine, say
from streams.serde.codec import CONSENT_RECEIPT, DECISION, RETRACTION, Codec

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PARTITIONS = 8
RECEIPT_EVERY = 25  # one receipt of a random user every this many decisions
POLICY = "uk-legitimate-interests-2024-09"
HOUR_MS = 3_600_000
MASK = (1 << 64) - 1
REASONS = ("NOT_PUBLIC", "MINOR", "COUNTRY_EXCLUDED", "PLATFORM_EXCLUDED", "OBJECTED")
PLATFORMS = ("FACEBOOK", "INSTAGRAM")
CHANNELS = ("IN_APP", "WEB_FORM", "EMAIL", "SUPPORT")


def partition_of(key: str, partitions: int = PARTITIONS) -> int:
    """librdkafka's default partitioner for a non-empty key (as the worker's producers)."""
    return (zlib.crc32(key.encode()) & 0xFFFFFFFF) % partitions


def mix(i: int, salt: int) -> int:
    """A well-spread 64-bit number from ``i`` (the same in every producer process)."""
    h = (i * 0x9E3779B97F4A7C15 + salt * 0xBF58476D1CE4E5B9) & MASK
    h ^= h >> 31
    h = (h * 0x94D049BB133111EB) & MASK
    return h ^ (h >> 29)


class Layout:
    """Where everything is: slot ``i`` (0 <= i < records) is one decision at
    ``t0 + i * span // records``."""

    def __init__(self, records: int, users: int, user_posts: int, span_ms: int, t0: int):
        self.records, self.users, self.span_ms, self.t0 = records, users, span_ms, t0
        self.user_posts = user_posts
        self.user = f"user-{users:07d}"  # the others are user-0000000 .. users-1

    def at(self, i: int) -> int:
        return self.t0 + i * self.span_ms // self.records

    def post_id(self, i: int) -> str:
        return f"s1-p{i}"


def story(lay: Layout) -> dict[str, Any]:
    """The audited user's records by slot: ``decisions`` and ``receipts`` (slot ->
    [(topic kind, key, record)]), and what the timeline must show."""
    n, u = lay.records, lay.user
    at_slot: dict[int, list[tuple[str, str, dict]]] = {}
    post_slots = {int((j + 0.5) * n / lay.user_posts): j for j in range(lay.user_posts)}
    events = [  # (share of the span, event id, action, platform)
        (0.33, "a-obj-fb", "OBJECT", "FACEBOOK"),
        (0.36, "a-obj-fb", "OBJECT", "FACEBOOK"),  # sent again: IGNORED_REPEATED_EVENT_ID
        (0.45, "a-withdraw-1", "WITHDRAW", None),
        (0.60, "a-obj-all", "OBJECT", None),
        (0.80, "a-withdraw-2", "WITHDRAW", None),
    ]
    # an event's slot is never a post's slot
    event_slots = {}
    for share, eid, action, platform in events:
        s = int(share * n)
        while s in post_slots or s in event_slots:
            s += 1
        event_slots[s] = (eid, action, platform)
    objected: set[str] = set()
    seen: set[str] = set()
    live: dict[str, str] = {}  # post id -> platform
    expect = {"posts": 0, "decisions": 0, "receipts": 0, "retracted": 0, "exposures": 0}
    for s in sorted({*post_slots, *event_slots}):
        t = lay.at(s)
        out = at_slot.setdefault(s, [])
        if s in post_slots:
            j = post_slots[s]
            pid, platform = lay.post_id(s), PLATFORMS[j % 2]
            if platform in objected:
                outcome, reason = "BLOCKED", "OBJECTED"
            elif j % 7 == 3:
                outcome, reason = "BLOCKED", "NOT_PUBLIC"
            else:
                outcome, reason = "PUBLISHED", "ELIGIBLE"
                live[pid] = platform
            out.append(("decisions", pid, decision(pid, u, outcome, reason, t, s)))
            expect["posts"] += 1
            expect["decisions"] += 1
            continue
        eid, action, platform = event_slots[s]
        scope = set(PLATFORMS) if platform is None else {platform}
        retracted: list[str] = []
        if eid in seen:
            outcome = "IGNORED_REPEATED_EVENT_ID"
        else:
            seen.add(eid)
            outcome = "APPLIED"
            if action == "OBJECT":
                objected |= scope
                retracted = sorted(p for p, pl in live.items() if pl in scope)
                for pid in retracted:
                    del live[pid]
                expect["exposures"] += 1
            else:
                objected -= scope
        out.append(
            ("receipts", u, receipt(eid, u, action, platform, outcome, objected, retracted, t, s))
        )
        expect["receipts"] += 1
        for pid in retracted:
            out.append(("decisions", pid, decision(pid, u, "RETRACTED", "OBJECTED", t, s, eid)))
            expect["decisions"] += 1
        if retracted:
            out.append(("retractions", u, retraction(u, eid, platform, retracted, t)))
            expect["retracted"] += len(retracted)
    windows = {
        # one hour around a post in the middle of the span (no objection applied in it)
        "window": lay.at(min(post_slots, key=lambda s: abs(s - n // 2))),
        # one hour around the objection on every platform
        "window_objection": lay.at(next(s for s, e in event_slots.items() if e[0] == "a-obj-all")),
    }
    return {"at_slot": at_slot, "expect": expect, "windows": windows}


def decision(
    pid: str, uid: str, outcome: str, reason: str, t: int, i: int, cause: str | None = None
) -> dict[str, Any]:
    return {
        "post_id": pid,
        "user_id": uid,
        "outcome": outcome,
        "reason": reason,
        "policy_version": POLICY,
        "decided_at": t,
        "source_topic": "posts" if outcome != "RETRACTED" else "objections",
        "source_partition": i % PARTITIONS,
        "source_offset": i // PARTITIONS,
        "replay_id": None,
        "cause": cause,
    }


def receipt(
    eid: str,
    uid: str,
    action: str,
    platform: str | None,
    outcome: str,
    objected: set[str],
    retracted: list[str],
    t: int,
    i: int,
) -> dict[str, Any]:
    return {
        "event_id": eid,
        "user_id": uid,
        "action": action,
        "platform": platform,
        "channel": CHANNELS[i % 4],
        "occurred_at": t - 1500,
        "applied_occurred_at": t - 1500,
        "outcome": outcome,
        "objected_platforms": sorted(objected),
        "posts_retracted": len(retracted),
        "applied_at": t,
        "source_topic": "objections",
        "source_partition": i % PARTITIONS,
        "source_offset": i // RECEIPT_EVERY,
    }


def retraction(uid: str, eid: str, platform: str | None, posts: list[str], t: int) -> dict:
    return {
        "user_id": uid,
        "objection_event_id": eid,
        "platform": platform,
        "post_ids": posts,
        "retracted_at": t,
    }


def other_decision(lay: Layout, i: int, pid: str) -> dict[str, Any]:
    h = mix(i, 1)
    uid = f"user-{h % lay.users:07d}"
    roll = (h >> 32) % 100
    d = decision(pid, uid, "PUBLISHED", "ELIGIBLE", lay.at(i), i)
    if 80 <= roll < 90:
        d["outcome"], d["reason"] = "BLOCKED", REASONS[roll % 5]
    elif 90 <= roll < 97:
        d.update(outcome="RETRACTED", reason="OBJECTED", cause=f"s1-e{(h >> 40) % (i + 1)}")
        d["source_topic"] = "objections"
    elif roll >= 97:
        d["replay_id"] = f"replay-{(h >> 40) % 1000:04d}"
    return d


def other_receipt(lay: Layout, i: int) -> tuple[str, dict, dict | None]:
    h = mix(i, 2)
    uid = f"user-{h % lay.users:07d}"
    action = "OBJECT" if (h >> 32) % 10 < 7 else "WITHDRAW"
    platform = (None, "FACEBOOK", "INSTAGRAM")[(h >> 36) % 3]
    objected = set(PLATFORMS) if platform is None else {platform}
    posts = [f"s1-p{(h >> 40) % (i + 1) + k}" for k in range((h >> 44) % 3 + 1)]
    retracted = posts if action == "OBJECT" and (h >> 48) % 3 == 0 else []
    r = receipt(
        f"s1-e{i}",
        uid,
        action,
        platform,
        "APPLIED",
        objected if action == "OBJECT" else set(),
        retracted,
        lay.at(i),
        i,
    )
    back = retraction(uid, f"s1-e{i}", platform, retracted, lay.at(i)) if retracted else None
    return uid, r, back


def fill_part(job: dict[str, Any]) -> dict[str, int]:
    """Produce the records of the partitions ``p % producers == k`` (a process)."""
    lay = Layout(job["records"], job["users"], job["user_posts"], job["span_ms"], job["t0"])
    mine = {p for p in range(PARTITIONS) if p % job["producers"] == job["k"]}
    topics = job["topics"]
    codec = Codec()
    enc = {
        kind: (lambda d, name=name, topic=topics[kind]: codec.encode(name, d, topic))
        for kind, name in (
            ("decisions", DECISION),
            ("receipts", CONSENT_RECEIPT),
            ("retractions", RETRACTION),
        )
    }
    producer = Producer(
        {
            "bootstrap.servers": job["bootstrap"],
            "linger.ms": 200,
            "batch.size": 1_000_000,
            "batch.num.messages": 100_000,
            "queue.buffering.max.messages": 2_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "compression.type": "none",  # as the worker's producers
            "enable.idempotence": True,  # one partition's records stay in order
            "log_level": 3,
        }
    )
    at_slot = story(lay)["at_slot"]
    counts = {"decisions": 0, "receipts": 0, "retractions": 0, "bytes": 0}

    def send(kind: str, key: str, record: dict, t: int, p: int) -> None:
        value = enc[kind](record)
        counts[kind] += 1
        counts["bytes"] += len(value)
        while True:
            try:
                producer.produce(topics[kind], value, key.encode(), partition=p, timestamp=t)
                return
            except BufferError:
                producer.poll(0.05)

    crc = zlib.crc32
    for i in range(lay.records):
        pid = f"s1-p{i}"
        own = at_slot.get(i)
        if own is not None:
            for kind, key, record in own:
                p = partition_of(key)
                if p in mine:
                    send(kind, key, record, lay.at(i), p)
        elif (p := (crc(pid.encode()) & 0xFFFFFFFF) % PARTITIONS) in mine:
            send("decisions", pid, other_decision(lay, i, pid), lay.at(i), p)
        if i % RECEIPT_EVERY == RECEIPT_EVERY - 1:
            uid = f"user-{mix(i, 2) % lay.users:07d}"
            if (p := partition_of(uid)) in mine:
                uid, r, back = other_receipt(lay, i)
                send("receipts", uid, r, lay.at(i), p)
                if back is not None:
                    send("retractions", uid, back, lay.at(i), p)
        if i % 65536 == 0:
            producer.poll(0)
    left = producer.flush(600)
    if left:
        raise RuntimeError(f"{left} records not delivered")
    return counts


def create_topics(bootstrap: str, topics: dict[str, str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    config = {
        "retention.ms": "-1",
        "retention.bytes": "-1",
        "message.timestamp.type": "CreateTime",  # see the module's doc
        "message.timestamp.before.max.ms": str(2**63 - 1),
    }
    futures = admin.create_topics(
        [NewTopic(t, PARTITIONS, 1, config=config) for t in topics.values()]
    )
    for future in futures.values():
        future.result()


def delete_topics(bootstrap: str, topics: dict[str, str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    for future in admin.delete_topics(list(topics.values())).values():
        with contextlib.suppress(Exception):
            future.result()


@contextlib.contextmanager
def local_broker(workdir: Path) -> Iterator[tuple[str, Path]]:
    """A fresh broker of ``deploy/kafka/local-kafka`` in ``workdir``; stopped after."""
    args = ["--port", str(free_port()), "--dir", str(workdir / "kafka")]
    result = subprocess.run(
        [str(LOCAL_KAFKA), "start", *args], capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0:
        raise RuntimeError(f"local-kafka start failed: {result.stderr[-2000:]}")
    try:
        yield result.stdout.strip().splitlines()[-1], workdir / "kafka" / "data"
    finally:
        subprocess.run([str(LOCAL_KAFKA), "stop", *args], capture_output=True, timeout=180)


def bytes_on_disk(data: Path | None, topic: str) -> int | None:
    if data is None:
        return None
    total = 0
    for d in data.glob(f"{topic}-*"):
        if d.name.rsplit("-", 1)[0] == topic:
            total += sum(f.stat().st_blocks * 512 for f in d.iterdir() if f.is_file())
    return total


def audit_command(bootstrap: str, topics: dict[str, str], user: str, *window: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streams",
        "audit",
        "--bootstrap-servers",
        bootstrap,
        "--decisions-topic",
        topics["decisions"],
        "--receipts-topic",
        topics["receipts"],
        "--retractions-topic",
        topics["retractions"],
        "--user",
        user,
        "--format",
        "json",
        *window,
    ]


def run_audit(command: list[str]) -> tuple[float, dict[str, Any], dict[str, list[float]]]:
    """Seconds, the JSON timeline and the load averages before and after one audit."""
    load = {"before": list(os.getloadavg())}
    started = time.monotonic()
    out = subprocess.run(command, capture_output=True, text=True, timeout=7200, cwd=ROOT)
    seconds = time.monotonic() - started
    load["after"] = list(os.getloadavg())
    if out.returncode != 0:
        raise RuntimeError(f"enforcer audit failed: {out.stderr[-2000:]}")
    return seconds, json.loads(out.stdout), load


def restricted(whole: dict[str, Any], start: int, end: int) -> dict[str, Any]:
    """The whole timeline restricted to [start, end] (end by the records' time, which is
    their decided/applied time here). Exposures are compared whole: the story's
    retractions share their objection's time, so none ends after the window."""
    posts = {
        pid: [d for d in ds if d["logged_at"] <= end]
        for pid, ds in whole["decisions"].items()
        if any(start <= d["decided_at"] and d["logged_at"] <= end for d in ds)
    }
    return {
        "user_id": whole["user_id"],
        "receipts": [r for r in whole["receipts"] if start <= r["applied_at"] <= end],
        "decisions": posts,
        "retractions": [r for r in whole["retractions"] if start <= r["retracted_at"] <= end],
        "exposures": [e for e in whole["exposures"] if start <= e["applied_at"] <= end],
    }


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], capture_output=True, text=True, cwd=ROOT, check=False
    ).stdout.strip()


def git_commit(at_start: str) -> dict[str, Any]:
    """The commit measured: HEAD when the run started and when it ended (others may
    commit meanwhile), and whether streams/ differed from HEAD at the end."""
    return {
        "commit_at_start": at_start,
        "commit": git("rev-parse", "HEAD"),
        "streams_changed_since": bool(git("status", "--porcelain", "streams")),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=10_000_000, help="decision records")
    ap.add_argument("--users", type=int, default=None, help="users (default records / 20)")
    ap.add_argument("--user-posts", type=int, default=300, help="the audited user's posts")
    ap.add_argument("--span-days", type=float, default=30.0, help="time the records cover")
    ap.add_argument("--producers", type=int, default=2, help="producer processes")
    ap.add_argument("--runs", type=int, default=3, help="repetitions of each audit")
    ap.add_argument("--bootstrap", default=None, help="an existing broker (default: a fresh one)")
    ap.add_argument("--workdir", default=None, help="default: a new directory under /tmp")
    ap.add_argument("--topics-prefix", default=None, help="reuse the topics of an earlier fill")
    ap.add_argument("--keep", action="store_true", help="keep the topics (with --bootstrap)")
    args = ap.parse_args(argv)
    load_at_start = list(os.getloadavg())
    commit_at_start = git("rev-parse", "HEAD")
    users = args.users or max(1000, args.records // 20)
    span_ms = int(args.span_days * 86_400_000)
    t0 = (int(time.time() * 1000) - span_ms - 86_400_000) // HOUR_MS * HOUR_MS
    reuse = args.topics_prefix is not None
    if reuse and not args.bootstrap:
        ap.error("--topics-prefix needs --bootstrap (a fresh broker has no topics)")
    prefix = args.topics_prefix or f"audit-scale-{int(time.time())}"
    if reuse:
        t0 = int(prefix.rsplit("-t", 1)[1])
    else:
        prefix = f"{prefix}-t{t0}"
    topics = {k: f"{prefix}-{k}" for k in ("decisions", "receipts", "retractions")}
    lay = Layout(args.records, users, args.user_posts, span_ms, t0)
    plan = story(lay)
    workdir = Path("/tmp")
    with contextlib.ExitStack() as stack:
        if args.bootstrap:
            bootstrap, data = args.bootstrap, None
        else:
            workdir = Path(args.workdir or tempfile.mkdtemp(prefix="audit-scale-", dir="/tmp"))
            workdir.mkdir(parents=True, exist_ok=True)
            say(f"disk: {shutil.disk_usage(workdir).free / 2**30:.0f} GiB free under {workdir}")
            bootstrap, data = stack.enter_context(local_broker(workdir))
            say(f"broker {bootstrap}, data in {data}")
        fill: dict[str, Any] = {}
        if not reuse:
            create_topics(bootstrap, topics)
            say(f"filling {args.records:,} decisions with {args.producers} producer(s)")
            started = time.monotonic()
            job = {
                "bootstrap": bootstrap,
                "topics": topics,
                "records": args.records,
                "users": users,
                "user_posts": args.user_posts,
                "span_ms": span_ms,
                "t0": t0,
                "producers": args.producers,
            }
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(args.producers) as pool:
                parts = pool.map(fill_part, [{**job, "k": k} for k in range(args.producers)])
            fill = {k: sum(p[k] for p in parts) for k in parts[0]}
            fill["seconds"] = round(time.monotonic() - started, 1)
            say(f"filled in {fill['seconds']} s: {fill}")
        result = measure(args, bootstrap, topics, lay, plan, data, fill, users)
        result["machine"]["load_average_at_start"] = load_at_start
        result["code"] = git_commit(commit_at_start)
        if args.bootstrap and not args.keep and not reuse:
            delete_topics(bootstrap, topics)
    if not args.workdir and not args.bootstrap:
        shutil.rmtree(workdir, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"audit-scale-{result['timestamp']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    say(f"wrote {path}")
    return 0 if all(result["checks"].values()) else 1


def measure(
    args: argparse.Namespace,
    bootstrap: str,
    topics: dict[str, str],
    lay: Layout,
    plan: dict[str, Any],
    data: Path | None,
    fill: dict[str, Any],
    users: int,
) -> dict[str, Any]:
    timestamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    cases: dict[str, list[str]] = {"whole": []}
    bounds: dict[str, tuple[int, int]] = {}
    for name, centre in plan["windows"].items():
        start, end = centre - HOUR_MS // 2, centre + HOUR_MS // 2 - 1
        bounds[name] = (start, end)
        cases[name] = ["--from", str(start), "--to", str(end)]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
    outputs: dict[str, dict[str, Any]] = {}
    for rep in range(args.runs):
        for name, window in cases.items():
            seconds, line, load = run_audit(audit_command(bootstrap, topics, lay.user, *window))
            scans = {s["topic"].rsplit("-", 1)[1]: s for s in line["scans"]}
            runs[name].append(
                {
                    "seconds": round(seconds, 2),
                    "load_average_before": load["before"],
                    "load_average_after": load["after"],
                    "scans": {
                        k: {f: s[f] for f in ("partitions", "records", "decoded", "seconds")}
                        for k, s in scans.items()
                    },
                }
            )
            outputs[name] = {k: v for k, v in line.items() if k != "scans"}
            say(
                f"{name} run {rep + 1}: {seconds:.1f} s, load {load['before'][0]:.1f} before, "
                f"{load['after'][0]:.1f} after"
            )
    whole = outputs["whole"]
    expect = plan["expect"]
    checks = {
        "whole_matches_story": (
            len(whole["decisions"]) == expect["posts"]
            and sum(len(ds) for ds in whole["decisions"].values()) == expect["decisions"]
            and len(whole["receipts"]) == expect["receipts"]
            and sum(len(r["post_ids"]) for r in whole["retractions"]) == expect["retracted"]
            and len(whole["exposures"]) == expect["exposures"]
        )
    }
    for name, (start, end) in bounds.items():
        checks[f"{name}_equals_whole_restricted"] = outputs[name] == restricted(whole, start, end)
    decisions_total = fill.get("decisions") or sum(
        s["scans"]["decisions"]["records"] for s in runs["whole"][:1]
    )

    def summary(name: str) -> dict[str, Any]:
        secs = [r["seconds"] for r in runs[name]]
        read = [r["scans"]["decisions"]["records"] for r in runs[name]]
        return {
            "seconds": secs,
            "seconds_min": min(secs),
            "seconds_median": sorted(secs)[len(secs) // 2],
            "decision_records_read": read,
            # the topic's decisions over the command's whole time (reading and starting)
            "topic_records_per_second_median": round(
                decisions_total / sorted(secs)[len(secs) // 2]
            ),
            "records_read_per_second_median": round(
                sorted(read)[len(read) // 2] / sorted(secs)[len(secs) // 2]
            ),
        }

    return {
        "benchmark": "audit-scale",
        "timestamp": timestamp,
        "config": {
            "decision_records": args.records,
            "users": users,
            "audited_user": lay.user,
            "audited_user_posts": args.user_posts,
            "partitions": PARTITIONS,
            "span_days": args.span_days,
            "producers": args.producers,
            "runs": args.runs,
            "windows": {
                name: {"from": s, "to": e, "hours": round((e + 1 - s) / HOUR_MS, 3)}
                for name, (s, e) in bounds.items()
            },
            "timestamps": "CreateTime = decided/applied time, in order per partition",
            "broker": "external" if args.bootstrap else "deploy/kafka/local-kafka, 1 node",
        },
        "fill": fill,
        "bytes_on_disk": {k: bytes_on_disk(data, t) for k, t in topics.items()},
        "expected_timeline": expect,
        "runs": runs,
        "summary": {name: summary(name) for name in cases},
        "checks": checks,
        "machine": {**machine(), "load_average_at_end": list(os.getloadavg())},
        "nice": os.nice(0),
    }


if __name__ == "__main__":
    sys.exit(main())
