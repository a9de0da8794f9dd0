"""Failover: how long after a worker is killed its partitions decide posts again on
another worker, without standby replicas (cold) and with one (warm).

    python -m bench.failover [--runs 3] [--users 1000000] [--posts 1000000]

On one local broker (or ``--bootstrap``): the app's topics with 8 partitions; its table
state pre-loaded by producing straight to the two changelog topics (consent state of
``--users`` users, 10% objecting, and ``--posts`` live posts of the others in the
ledger, each on its user's partition by ``records.partition_for_user``, in the formats
the worker writes); then, per run, two workers on fresh data dirs (``--standby-replicas
0`` cold, ``1`` warm; runs interleaved), both ready and steady, a trickle of posts of
users of every partition, SIGKILL of one worker's process group, and from the
decisions topic, per partition the killed worker held, the time from the kill to the
first decision of a post produced after it. The survivor's log gives when its
rebalance started (the broker timed the killed member out) and how long restoring the
tables took. Results: ``bench/results/failover-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import psutil
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from bench.run import broker, free_port, machine, say, settings_for, versions, worker_command
from streams.core.consent import ALL, ConsentState, Mark, encode_state
from streams.core.records import partition_for_user
from streams.kafka.connection import librdkafka_config
from streams.kafka.topics import asked_until_answered, ensure_topics
from streams.serde.codec import Codec
from streams.settings import Settings
from streams.state.ledger import entry_key

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PARTITIONS = 8
REKEY_SESSION_TIMEOUT_S = 30.0  # the re-keying consumer's longest session (rekey/stage.py)
OBJECTOR_EVERY = 10  # every tenth user objects to every platform


def user_id(i: int) -> str:
    return f"user-{i:07d}"


def preload(bootstrap: str, s: Settings, users: int, posts: int) -> dict[str, Any]:
    """Produce the tables' state straight to their changelog topics."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 50,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1_000_000,
            "enable.idempotence": True,
        }
    )
    consent_topic, ledger_topic = s.changelog_topic("consent"), s.changelog_topic("ledger")
    started = time.monotonic()

    def send(topic: str, key: bytes, value: bytes, partition: int) -> None:
        while True:
            try:
                producer.produce(topic, value, key, partition)
                return
            except BufferError:
                producer.poll(0.05)

    base = 1_767_225_600_000
    for i in range(users):
        user = user_id(i)
        event = f"seed-{i}"
        state = ConsentState({ALL: Mark(base + i, i % OBJECTOR_EVERY == 0, event)}, (event,))
        key = user.encode()
        send(consent_topic, key, encode_state(state), partition_for_user(key, PARTITIONS))
        if i % 10000 == 0:
            producer.poll(0)
    for j in range(posts):
        u = (j * 7) % users
        if u % OBJECTOR_EVERY == 0:  # an objector has no live post
            u = (u + 1) % users
        user = user_id(u)
        platform = b"FACEBOOK" if j % 5 < 3 else b"INSTAGRAM"
        partition = partition_for_user(user.encode(), PARTITIONS)
        send(ledger_topic, entry_key(user, f"seed-post-{j:07d}"), platform, partition)
        if j % 10000 == 0:
            producer.poll(0)
    left = producer.flush(300)
    if left:
        raise RuntimeError(f"{left} changelog records not delivered")
    return {"users": users, "posts": posts, "seconds": round(time.monotonic() - started, 1)}


class Worker:
    """An ``enforcer worker`` in its own process group (the re-keying stage with it)."""

    def __init__(
        self, s: Settings, workdir: Path, name: str, standby: int, session_timeout: int
    ) -> None:
        self.name = name
        self.data_dir = workdir / f"{name}-state"
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.port = free_port()
        self.log_path = workdir / f"{name}.log"
        self.instance_id = Settings(app_id=s.app_id, data_dir=self.data_dir).instance_id
        log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self.started = time.time()
        self.proc = subprocess.Popen(
            worker_command(
                s,
                self.data_dir,
                self.port,
                partitions=PARTITIONS,
                extra=(
                    "--standby-replicas",
                    str(standby),
                    "--session-timeout",
                    str(session_timeout),
                ),
                log_level="info",
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
        log.close()

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
        try:
            url = f"http://127.0.0.1:{self.port}/ready"
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def cpu(self) -> float:
        try:
            proc = psutil.Process(self.proc.pid)
            procs = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            return 0.0
        total = 0.0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def rss(self) -> int:
        try:
            return psutil.Process(self.proc.pid).memory_info().rss
        except psutil.Error:
            return 0

    def kill(self) -> float:
        """SIGKILL the process group; returns the time of the kill."""
        at = time.time()
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        return at

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_lines(self) -> list[tuple[float, str]]:
        """(time, line) of the log's lines that start with a timestamp."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            m = LOG_TIME.match(line)
            if m:
                t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                out.append((t, line))
        return out


LOG_TIME = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+)\]")


class Trickle(threading.Thread):
    """Posts at a steady rate, of users of every partition in turn; remembers when each
    was sent and which partition its user is on."""

    def __init__(self, s: Settings, rate: int, users: int, tag: str) -> None:
        super().__init__(daemon=True)
        self.s, self.rate, self.tag = s, rate, tag
        self.codec = Codec()
        by_partition: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
        i = 1
        while min(len(v) for v in by_partition.values()) < 200 and i < users:
            user = user_id(i)
            by_partition[partition_for_user(user.encode(), PARTITIONS)].append(user)
            i += 1
        self.users = by_partition
        self.sent: dict[str, tuple[int, float]] = {}  # post id -> (partition, time sent)
        self.stop_event = threading.Event()

    def run(self) -> None:
        producer = Producer(librdkafka_config(self.s, {"linger.ms": 5}))
        started = time.monotonic()
        n = 0
        while not self.stop_event.is_set():
            due = int((time.monotonic() - started) * self.rate) + 1
            while n < due:
                partition = n % PARTITIONS
                users = self.users[partition]
                user = users[(n // PARTITIONS) % len(users)]
                post_id = f"{self.tag}-{n}"
                value = self.codec.encode(
                    "Post",
                    {
                        "post_id": post_id,
                        "user_id": user,
                        "platform": "FACEBOOK",
                        "visibility": "PUBLIC",
                        "author_country": "GB",
                        "author_is_adult": True,
                        "created_at": int(time.time() * 1000),
                        "text": "failover benchmark",
                        "media_urls": [],
                    },
                )
                self.sent[post_id] = (partition, time.time())
                producer.produce(self.s.posts_topic, value, post_id.encode())
                n += 1
            producer.poll(0)
            time.sleep(max(0.0, started + n / self.rate - time.monotonic()))
        producer.flush(30)


class Decisions(threading.Thread):
    """Reads the decisions topic from its end: (post id, decision record timestamp)."""

    def __init__(self, s: Settings) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer(
            librdkafka_config(
                s,
                {
                    "group.id": f"failover-reader-{time.time_ns()}",
                    "enable.auto.commit": False,
                    "fetch.wait.max.ms": 20,
                },
            )
        )
        tps = [TopicPartition(s.decisions_topic, p) for p in range(PARTITIONS)]
        for tp in tps:
            tp.offset = asked_until_answered(
                partial(self.consumer.get_watermark_offsets, tp, 10), "decisions end"
            )[1]
        self.consumer.assign(tps)
        self.seen: list[tuple[str, float]] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            for msg in self.consumer.consume(1000, 0.2):
                if msg.error() or msg.key() is None:
                    continue
                self.seen.append((msg.key().decode(), msg.timestamp()[1] / 1000))
        self.consumer.close()


def assignment(admin: AdminClient, s: Settings) -> dict[str, list[int]]:
    """Group instance id -> partitions of the internal topic it holds (active)."""
    group = admin.describe_consumer_groups([s.app_id])[s.app_id].result(timeout=30)
    out: dict[str, list[int]] = {}
    for member in group.members:
        parts = [
            tp.partition
            for tp in member.assignment.topic_partitions
            if tp.topic == s.user_events_topic
        ]
        out[member.group_instance_id or member.member_id] = sorted(parts)
    return out


def admin_consumer(s: Settings) -> Consumer:
    return Consumer(librdkafka_config(s, {"group.id": "failover-sizes"}))


def changelog_size(consumer: Consumer, s: Settings, partitions: list[int]) -> int:
    """Records in these partitions of both changelog topics (high minus low watermark)."""
    total = 0
    for table in ("consent", "ledger"):
        for p in partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(s.changelog_topic(table), p), timeout=10
            )
            total += high - low
    consumer.close()
    return total


def first_decisions(
    trickle: Trickle, decisions: Decisions, after: float
) -> dict[int, float | None]:
    """Per partition, the time of the first decision of a post sent after ``after``."""
    first: dict[int, float | None] = {p: None for p in range(PARTITIONS)}
    for post_id, at in list(decisions.seen):
        sent = trickle.sent.get(post_id)
        if sent is None or sent[1] <= after:
            continue
        p = sent[0]
        if first[p] is None or at < first[p]:
            first[p] = at
    return first


def wait_steady(workers: list[Worker], trickle: Trickle, decisions: Decisions) -> dict:
    """Every partition decides posts within a second, and both workers' CPU is back to
    what the trickle costs (a standby has caught up with the changelog)."""
    started = time.time()
    last = {w.name: w.cpu() for w in workers}
    quiet = 0
    while time.time() - started < 900:
        time.sleep(2.0)
        now = time.time()
        cpu = {w.name: w.cpu() for w in workers}
        busy = max((cpu[n] - last[n]) / 2.0 for n in cpu)
        last = cpu
        recent = first_decisions(trickle, decisions, now - 3.0)
        lag_ok = all(t is not None for t in recent.values())
        # a worker (with its re-keying process) costs 0.2-0.4 of a core at the trickle,
        # on this 2-core machine with the broker beside it; a standby catching up, a core
        quiet = quiet + 1 if lag_ok and busy < 0.5 else 0
        if quiet >= 5 and now - started >= 15:
            return {"seconds": round(now - started, 1), "worker_cores_at_end": round(busy, 2)}
    raise RuntimeError("the workers never became steady")


def survivor_log(worker: Worker, killed_at: float) -> dict[str, Any]:
    """From the survivor's log after the kill: when its rebalance began, and when its
    tables' recovery started and ended."""
    out: dict[str, Any] = {}
    marks = {
        "rebalance_started": ("Rebalancing", "rebalanc", "revoked", "Assigned", "Revoking"),
        "restore_started": ("Restoring state from changelog topics",),
        "restore_done": ("Done reading from changelog topics",),
        "recovery_complete": ("Recovery complete",),
    }
    for t, line in worker.log_lines():
        if t < killed_at - 0.5:
            continue
        for name, needles in marks.items():
            if name not in out and any(n in line for n in needles):
                out[name] = round(t - killed_at, 3)
    return out


def one_run(
    s: Settings,
    workdir: Path,
    mode: str,
    index: int,
    users: int,
    rate: int,
    admin: AdminClient,
    keep_logs: Path | None = None,
    session_timeout: int = 60,
) -> dict[str, Any]:
    standby = 1 if mode == "warm" else 0
    say(f"run {index} ({mode}): starting two workers")
    workers = [
        Worker(s, workdir, f"{mode}{index}-{n}", standby, session_timeout) for n in ("a", "b")
    ]
    decisions = Decisions(s)
    decisions.start()
    trickle: Trickle | None = None
    try:
        t0 = time.time()
        while not all(w.ready() for w in workers):
            if time.time() - t0 > 900:
                raise RuntimeError("workers not ready after 900 s")
            time.sleep(0.5)
        ready_after = time.time() - t0
        say(f"run {index} ({mode}): both ready after {ready_after:.0f} s")
        trickle = Trickle(s, rate, users, f"fo-{mode}{index}-{time.time_ns() % 10**9}")
        trickle.start()
        steady = wait_steady(workers, trickle, decisions)
        held = assignment(admin, s)
        victim, survivor = workers[1], workers[0]
        victim_parts = held.get(victim.instance_id, [])
        survivor_parts = held.get(survivor.instance_id, [])
        if not victim_parts or sorted(victim_parts + survivor_parts) != list(range(PARTITIONS)):
            raise RuntimeError(f"unexpected assignment {held}")
        rss = {w.name: w.rss() for w in workers}
        # cold means cold: the survivor has no copy of the victim's table partitions
        tables = survivor.data_dir.glob(f"**/*{s.app_id}*")
        survivor_dbs = sorted(str(p.name) for p in tables)
        say(f"run {index} ({mode}): killing {victim.name} (partitions {victim_parts})")
        load_at_kill = os.getloadavg()
        killed_at = victim.kill()
        # what a cold survivor has to read: the victim's changelog partitions, whole
        changelog_records = changelog_size(admin_consumer(s), s, victim_parts)
        deadline = killed_at + 300
        while time.time() < deadline:
            time.sleep(1.0)
            first = first_decisions(trickle, decisions, killed_at)
            if all(first[p] is not None for p in range(PARTITIONS)) and (
                time.time() - max(v for v in first.values() if v is not None) > 3
            ):
                break
        first = first_decisions(trickle, decisions, killed_at)
        trickle.stop_event.set()
        per_partition = {
            p: None if first[p] is None else round(first[p] - killed_at, 3)
            for p in range(PARTITIONS)
        }
        failover = [per_partition[p] for p in victim_parts]
        own = [per_partition[p] for p in survivor_parts]
        log = survivor_log(survivor, killed_at)
        restore = None
        if "restore_started" in log and "restore_done" in log:
            restore = round(log["restore_done"] - log["restore_started"], 3)
        result = {
            "mode": mode,
            "victim_changelog_records": changelog_records,
            "standby_replicas": standby,
            "ready_after_start_s": round(ready_after, 1),
            "steady": steady,
            "victim_partitions": victim_parts,
            "survivor_partitions": survivor_parts,
            "survivor_table_dirs_before_kill": survivor_dbs,
            "rss_before_kill_bytes": rss,
            "first_decision_after_kill_s": per_partition,
            "failover_s": None if None in failover else max(failover),
            "survivor_own_partitions_s": None if None in own else max(own),
            "survivor_log_s": log,
            "restore_s": restore,
            "load_average_at_kill": [round(x, 1) for x in load_at_kill],
            "restore_records_per_s": (
                round(changelog_records / restore) if restore and mode == "cold" else None
            ),
        }
        say(
            f"run {index} ({mode}): failover {result['failover_s']} s, survivor's own "
            f"partitions {result['survivor_own_partitions_s']} s, log {log}"
        )
        return result
    finally:
        if keep_logs is not None:
            keep_logs.mkdir(parents=True, exist_ok=True)
            for w in workers:
                with contextlib.suppress(OSError):
                    shutil.copy(w.log_path, keep_logs / w.log_path.name)
        if trickle is not None:
            trickle.stop_event.set()
            trickle.join(35)
        decisions.stop_event.set()
        for w in workers:
            w.stop()
        decisions.join(10)


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in ("cold", "warm"):
        mine = [r for r in runs if r["mode"] == mode]
        fields = ("failover_s", "survivor_own_partitions_s", "restore_s", "restore_records_per_s")
        for field in fields:
            values = [r[field] for r in mine if r[field] is not None]
            if values:
                out.setdefault(mode, {})[field] = {
                    "median": round(statistics.median(values), 3),
                    "min": min(values),
                    "max": max(values),
                    "n": len(values),
                }
        starts = [r["survivor_log_s"].get("rebalance_started") for r in mine]
        starts = [v for v in starts if v is not None]
        if starts:
            out.setdefault(mode, {})["rebalance_started_s"] = {
                "median": round(statistics.median(starts), 3),
                "min": min(starts),
                "max": max(starts),
                "n": len(starts),
            }
    return out


def commit() -> dict[str, Any]:
    """The commit measured, and the files of the shared tree that differed from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30
        ).stdout.rstrip("\n")

    return {
        "head": git("rev-parse", "HEAD"),
        "modified": [line[3:] for line in git("status", "--short", "-uno").splitlines()],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each mode (interleaved)")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--posts", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=200, help="posts per second during a run")
    parser.add_argument("--bootstrap", help="an existing broker instead of a fresh local one")
    parser.add_argument("--keep-logs", type=Path, help="copy the workers' logs here")
    parser.add_argument(
        "--session-timeout", type=int, default=60, help="the workers' --session-timeout (s)"
    )
    parser.add_argument(
        "--modes", default="cold,warm", help="which runs, in this order each round: cold, warm"
    )
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - {"cold", "warm"}:
        parser.error("--modes: cold, warm or both (comma-separated)")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS / f"failover-{stamp}.json"
    with tempfile.TemporaryDirectory(prefix="failover-") as tmp:
        workdir = Path(tmp)
        with broker(args.bootstrap, workdir) as (bootstrap, kafka_version, _pid):
            prefix = f"fo-{stamp.lower()}"
            s = settings_for(bootstrap, prefix, f"{prefix}-posts", f"{prefix}-objections")
            ensure_topics(s, create_inputs=True)
            say(f"pre-loading {args.users:,} users' consent and {args.posts:,} live posts")
            loaded = preload(bootstrap, s, args.users, args.posts)
            say(f"pre-loaded in {loaded['seconds']} s")
            admin = AdminClient({"bootstrap.servers": bootstrap})
            runs = []
            for i in range(args.runs):
                for mode in modes:
                    runs.append(
                        one_run(
                            s,
                            workdir,
                            mode,
                            i,
                            args.users,
                            args.rate,
                            admin,
                            args.keep_logs,
                            args.session_timeout,
                        )
                    )
                    # every run so far, in case a later one fails
                    result = {
                        "started": stamp,
                        "config": {
                            "users": args.users,
                            "live_posts": args.posts,
                            "partitions": PARTITIONS,
                            "workers": 2,
                            "rate_posts_per_s": args.rate,
                            "gate_session_timeout_s": args.session_timeout,
                            "rekey_session_timeout_s": min(
                                REKEY_SESSION_TIMEOUT_S, args.session_timeout
                            ),
                            "broker": "external" if args.bootstrap else "local, one node",
                        },
                        "preload": loaded,
                        "commit": commit(),
                        "worker_env": {
                            k: v for k, v in os.environ.items() if k.startswith("ENFORCER_")
                        },
                        "versions": versions(None, kafka_version),
                        "machine": machine(),
                        "runs": runs,
                        "summary": summary(runs),
                    }
                    out_path.write_text(json.dumps(result, indent=2) + "\n")
    say(f"results in {out_path}")
    print(json.dumps(summary(runs), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
