"""Chaos harness for several workers of one app under faults (issue 17).

Three parts, usable on their own:

* ``Traffic``: a thread producing posts of many users, objections to every platform and
  to one, withdrawals, duplicate event and post ids and a few malformed records, and
  recording for each objection event when the broker acknowledged it.
* ``Nemesis``: a thread running fault steps (functions of this module, looked up by
  name in ``STEPS``) at given times while the traffic flows: SIGKILL and restart of a
  worker, SIGSTOP beyond the session timeout then SIGCONT (the zombie), scale 3 -> 1 -> 3
  on new, empty data dirs, SIGKILL of the leader broker of an internal partition, and a
  rebalance forced during a retraction.
* ``oracle``: computed from the topics alone (inputs, training-ingest, decisions,
  retractions, DLQ, read with ``read_committed``) and the acknowledgement times of the
  objection events: it does not use the enforcer's consent or policy code.

``run`` puts them together; ``python -m tests.chaos`` (``make chaos``) runs a longer
schedule on a cluster of its own and writes the results to ``tests/chaos/results/``.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from streams.kafka.topics import ensure_topics
from tests.support import CODEC, KafkaCluster, Names, Worker

ROOT = Path(__file__).resolve().parents[2]
PLATFORMS = ("FACEBOOK", "INSTAGRAM")


def now_ms() -> int:
    return int(time.time() * 1000)


def say(line: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {line}", flush=True)


# -- the workers --------------------------------------------------------------------------
class Fleet:
    """The workers of one app: slots of ``Worker``s, each restartable; new data dirs on
    request (a worker elsewhere)."""

    def __init__(self, bootstrap: str, names: Names, base: Path, partitions: int) -> None:
        self.bootstrap = bootstrap
        self.names = names
        self.base = base
        self.partitions = partitions
        self.slots: dict[int, Worker] = {}
        self.generation: dict[int, int] = defaultdict(int)
        self.all: list[Worker] = []
        self.down: set[int] = set()  # slots stopped on purpose (not restarted)
        self.lock = threading.Lock()

    def start(self, slot: int, new_dir: bool = False, wait: bool = True) -> Worker:
        if new_dir or slot not in self.slots:
            self.generation[slot] += 1
        self.down.discard(slot)
        data_dir = self.base / f"w{slot}-g{self.generation[slot]}"
        worker = Worker(self.bootstrap, self.names, data_dir, partitions=self.partitions)
        with self.lock:
            self.slots[slot] = worker
            self.all.append(worker)
        worker.start(wait=False)
        say(f"worker {slot} started (pid {worker.proc.pid}, {data_dir.name})")
        if wait:
            worker.wait_ready(180)
            say(f"worker {slot} ready")
        return worker

    def supervise(self, stop: threading.Event, exits: list[dict]) -> threading.Thread:
        """Restart, on the same data dir, a worker that exited by itself (exit 70: a
        supervisor's job); slots in ``self.down`` were stopped on purpose."""

        def loop() -> None:
            while not stop.wait(1.0):
                for slot, worker in list(self.slots.items()):
                    if slot in self.down or worker.proc is None or worker.alive():
                        continue
                    if worker.proc.returncode is not None and slot not in self.down:
                        exits.append({"at": now_ms(), "slot": slot, "code": worker.proc.returncode})
                        say(f"worker {slot} exited with {worker.proc.returncode}; restarting")
                        self.start(slot, wait=False)

        thread = threading.Thread(target=loop, name="chaos-supervisor", daemon=True)
        thread.start()
        return thread

    def running(self) -> list[int]:
        return sorted(s for s, w in self.slots.items() if w.alive())

    def stop_all(self) -> None:
        for worker in self.all:
            if worker.alive():
                with contextlib.suppress(OSError):
                    os.killpg(worker.proc.pid, signal.SIGCONT)
                try:
                    worker.stop(30)
                except AssertionError:
                    worker.kill()

    def logs(self) -> list[str]:
        return sorted({str(w.log_path) for w in self.all})


# -- traffic -------------------------------------------------------------------------------
@dataclass(eq=False)
class Traffic(threading.Thread):
    """Posts and objection events at about ``rate`` records a second until stopped."""

    bootstrap: str
    names: Names
    rate: float = 150.0
    users: int = 400
    objector_share: float = 0.3
    seed: int = 17
    stop_event: threading.Event = field(default_factory=threading.Event)
    acked: dict[str, int] = field(default_factory=dict)  # event id -> broker ack, ms
    sent: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        threading.Thread.__init__(self, name="chaos-traffic", daemon=True)
        self.rng = random.Random(self.seed)
        self.producer = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.timeout.ms": 300000,
            }
        )
        self.sent = defaultdict(int, self.sent)
        self.user_ids = [f"u{n:05d}" for n in range(self.users)]
        self.objectors = set(self.rng.sample(self.user_ids, int(self.users * self.objector_share)))
        self.posts_of: dict[str, int] = defaultdict(int)
        self.last_post: dict | None = None
        self.last_event: dict | None = None
        self.n = 0
        self.lock = threading.Lock()

    def _produce(self, topic: str, value: bytes | None, key: bytes, on_delivery=None) -> None:
        while True:
            try:
                if on_delivery is None:
                    self.producer.produce(topic, value, key)
                else:
                    self.producer.produce(topic, value, key, on_delivery=on_delivery)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.producer.poll(0)

    def post(self, user_id: str, **overrides: Any) -> dict:
        self.n += 1
        self.posts_of[user_id] += 1
        r = self.rng.random
        record = {
            "post_id": f"p{self.n:07d}-{user_id}",
            "user_id": user_id,
            "platform": self.rng.choice(PLATFORMS),
            "visibility": "PUBLIC" if r() < 0.9 else self.rng.choice(("FRIENDS", "PRIVATE")),
            "author_country": "GB" if r() < 0.9 else "FR",
            "author_is_adult": r() < 0.95,
            "created_at": now_ms(),
            "text": "chaos",
            "media_urls": [],
        }
        record.update(overrides)
        self._send_post(record)
        self.last_post = record
        return record

    def _send_post(self, record: dict) -> None:
        self._produce(self.names.posts, CODEC.encode("Post", record), record["user_id"].encode())
        self.sent["posts"] += 1

    def objection(self, user_id: str, action: str, platform: str | None) -> dict:
        self.n += 1
        event = {
            "event_id": f"e{self.n:07d}-{user_id}",
            "user_id": user_id,
            "action": action,
            "platform": platform,
            "occurred_at": now_ms(),
            "channel": "IN_APP",
        }
        self._send_event(event)
        self.last_event = event
        return event

    def _send_event(self, event: dict) -> None:
        event_id = event["event_id"]

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                self.errors.append(f"{event_id}: {err}")
            else:
                self.acked.setdefault(event_id, now_ms())

        self._produce(
            self.names.objections,
            CODEC.encode("ObjectionEvent", event),
            event["user_id"].encode(),
            delivered,
        )
        self.sent["objections"] += 1

    def step(self) -> None:
        """One record of the mix."""
        r = self.rng.random()
        with self.lock:
            if r < 0.80:
                self.post(self.rng.choice(self.user_ids))
            elif r < 0.90:
                user = self.rng.choice(sorted(self.objectors))
                action = "OBJECT" if self.rng.random() < 0.7 else "WITHDRAW"
                platform = None if self.rng.random() < 0.5 else self.rng.choice(PLATFORMS)
                self.objection(user, action, platform)
            elif r < 0.94 and self.last_post is not None:
                self._send_post(self.last_post)  # the same post again
                self.sent["duplicate_posts"] += 1
            elif r < 0.97 and self.last_event is not None:
                self._send_event(self.last_event)  # the same event id again
                self.sent["duplicate_events"] += 1
            elif r < 0.985:
                topic = self.rng.choice((self.names.posts, self.names.objections))
                self._produce(topic, os.urandom(self.rng.randint(0, 40)), b"garbage")
                self.sent["malformed"] += 1
            else:
                self.post(self.rng.choice(self.user_ids))

    def run(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        try:
            while not self.stop_event.is_set():
                self.step()
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -1.0:
                    next_at = time.monotonic()
        except Exception:  # reported by the oracle's caller
            self.errors.append(traceback.format_exc())
        finally:
            self.producer.flush(300)

    def finish(self) -> None:
        self.stop_event.set()
        self.join(330)


# -- the nemesis ---------------------------------------------------------------------------
@dataclass
class Context:
    """What the fault steps act on."""

    fleet: Fleet
    traffic: Traffic
    cluster: KafkaCluster | None
    names: Names
    log: list[dict] = field(default_factory=list)

    def note(self, step: str, **details: Any) -> None:
        self.log.append({"at": now_ms(), "step": step, **details})
        say(f"nemesis: {step} {details}")


def kill_restart(ctx: Context, worker: int = 0, down: float = 5.0) -> None:
    """SIGKILL a worker (gate and re-keying stage), restart it on the same data dir."""
    w = ctx.fleet.slots[worker]
    ctx.note("kill", worker=worker, pid=w.proc.pid)
    ctx.fleet.down.add(worker)
    w.kill()
    time.sleep(down)
    ctx.fleet.start(worker)
    ctx.note("restarted", worker=worker)


def freeze(ctx: Context, worker: int = 1, seconds: float = 75.0) -> None:
    """SIGSTOP a worker's processes for longer than the session timeouts (the gate's
    consumer 60 s, the re-keying consumer's 30 s), then SIGCONT: a zombie."""
    w = ctx.fleet.slots[worker]
    ctx.note("freeze", worker=worker, pid=w.proc.pid, seconds=seconds)
    os.killpg(w.proc.pid, signal.SIGSTOP)
    time.sleep(seconds)
    os.killpg(w.proc.pid, signal.SIGCONT)
    ctx.note("thaw", worker=worker)


def scale_in_out(ctx: Context, keep: int = 0, down: float = 30.0) -> None:
    """3 -> 1 -> 3: stop every worker but ``keep`` (SIGTERM), wait, start them again on
    new, empty data dirs."""
    gone = [s for s in ctx.fleet.running() if s != keep]
    ctx.note("scale_in", stopped=gone)
    for slot in gone:
        ctx.fleet.down.add(slot)
        ctx.fleet.slots[slot].stop(60)
    time.sleep(down)
    for slot in gone:
        ctx.fleet.start(slot, new_dir=True, wait=False)
    for slot in gone:
        ctx.fleet.slots[slot].wait_ready(180)
    ctx.note("scale_out", started=gone)


def kill_leader_broker(
    ctx: Context, table: str = "consent", partition: int = 0, down: float = 10.0
) -> None:
    """SIGKILL the leader broker of an internal (changelog) partition, restart it."""
    if ctx.cluster is None:
        ctx.note("kill_leader_broker skipped: one broker")
        return
    topic = f"{ctx.names.app_id}-{table}-changelog"
    leader = ctx.cluster.leader_of(topic, partition)
    if leader is None:
        ctx.note("kill_leader_broker skipped: no leader", topic=topic)
        return
    ctx.note("kill_broker", node=leader, topic=topic, partition=partition)
    ctx.cluster.kill(leader)
    time.sleep(down)
    ctx.cluster.restart(leader)
    ctx.note("broker_restarted", node=leader)


def rebalance_during_retraction(ctx: Context, posts: int = 300, extra_for: float = 20.0) -> None:
    """A user with many live posts objects, and a worker joins at that moment (and
    leaves again later): a rebalance while the retraction is being done."""
    t = ctx.traffic
    with t.lock:
        user = f"heavy{t.n:07d}"
        for _ in range(posts):
            t.post(user, visibility="PUBLIC", author_country="GB", author_is_adult=True)
    time.sleep(8.0)  # the posts are decided and published
    with t.lock:
        t.objection(user, "OBJECT", None)
    slot = max(ctx.fleet.slots) + 1
    ctx.note("retraction_and_join", user=user, posts=posts, worker=slot)
    ctx.fleet.start(slot, new_dir=True, wait=False)
    time.sleep(extra_for)
    ctx.fleet.down.add(slot)
    ctx.fleet.slots[slot].stop(60)
    ctx.note("extra_worker_left", worker=slot)


STEPS: dict[str, Callable[..., None]] = {
    "kill_restart": kill_restart,
    "freeze": freeze,
    "scale_in_out": scale_in_out,
    "kill_leader_broker": kill_leader_broker,
    "rebalance_during_retraction": rebalance_during_retraction,
}


class Nemesis(threading.Thread):
    """Runs ``schedule``: (seconds after start, step name, keyword arguments), in order;
    a step starts at its time or when the previous one ended, whichever is later."""

    def __init__(self, ctx: Context, schedule: Iterable[tuple[float, str, dict]]) -> None:
        super().__init__(name="chaos-nemesis", daemon=True)
        self.ctx = ctx
        self.schedule = list(schedule)
        self.errors: list[str] = []

    def run(self) -> None:
        start = time.monotonic()
        for at, name, kwargs in self.schedule:
            delay = start + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                STEPS[name](self.ctx, **kwargs)
            except Exception:
                self.errors.append(f"{name}: {traceback.format_exc()}")
                say(f"nemesis step {name} failed:\n{self.errors[-1]}")


# -- the oracle ------------------------------------------------------------------------------
@dataclass
class Rec:
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: dict


def read_topic(bootstrap: str, topic: str) -> list[Rec]:
    """Every record of a topic up to its end now, read_committed."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"chaos-oracle-{topic}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        md = consumer.list_topics(topic, timeout=30).topics[topic]
        ends = {}
        for p in md.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        out: list[Rec] = []
        position = dict.fromkeys(ends, -1)
        deadline = time.monotonic() + 300
        while any(position[p] + 1 < ends[p] for p in ends) and time.monotonic() < deadline:
            # the position, not the last record: a transaction's commit marker (fencing)
            # takes the last offset and is never received
            for tp in consumer.position([TopicPartition(topic, p) for p in ends]):
                if tp.offset > 0:
                    position[tp.partition] = max(position[tp.partition], tp.offset - 1)
            for m in consumer.consume(10000, timeout=1.0):
                if m.error():
                    continue
                position[m.partition()] = m.offset()
                out.append(
                    Rec(
                        m.partition(),
                        m.offset(),
                        m.timestamp()[1],
                        m.key(),
                        m.value(),
                        dict(m.headers() or []),
                    )
                )
        return out
    finally:
        consumer.close()


def _decode(raw: bytes | None) -> dict | None:
    try:
        return None if raw is None else CODEC.decode(raw)[1]
    except Exception:
        return None


def load_rules(path: Path = ROOT / "streams" / "core" / "default_policy.toml") -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


def eligible(post: dict, rules: dict) -> bool:
    """The policy's checks other than consent (the default policy file, read here)."""
    return (
        post["visibility"] in rules["visibilities"]
        and (post["author_is_adult"] or not rules.get("adults_only", True))
        and post["author_country"] in rules["countries"]
        and post["platform"] in rules["platforms"]
    )


# consent, as the contract states it, in the oracle's own code: per (user, platform) and
# for every platform, the event with the greatest (occurred_at, OBJECT over WITHDRAW,
# event_id) wins; a platform is objected when the greater of its own mark and the
# every-platform mark is an OBJECT; an event id seen before is ignored.
def _mark(event: dict) -> tuple[int, bool, str]:
    return (int(event["occurred_at"]), event["action"] == "OBJECT", event["event_id"])


def _objects(every: tuple | None, own: tuple | None) -> bool:
    if own is None:
        return every is not None and every[1]
    if every is None or own > every:
        return own[1]
    return every[1]


def _marks(events: Iterable[dict], slot: str | None) -> list[tuple]:
    return [_mark(e) for e in events if e["platform"] == slot]


def _best(events: Iterable[dict], slot: str | None) -> tuple | None:
    marks = _marks(events, slot)
    return max(marks) if marks else None


def objected(events: Iterable[dict], platform: str) -> bool:
    """Whether the user objects on ``platform`` after ``events`` (deduplicated)."""
    events = list(events)
    return _objects(_best(events, None), _best(events, platform))


def in_force(before: list[dict], maybe: list[dict], platform: str) -> bool:
    """True when the user objects on ``platform`` whatever subset of ``maybe`` (events
    the gate may or may not have applied before the post) is added to ``before``."""
    every, own = _best(before, None), _best(before, platform)
    everies = [every, *(m for m in _marks(maybe, None) if every is None or m > every)]
    owns = [own, *(m for m in _marks(maybe, platform) if own is None or m > own)]
    return all(_objects(a, o) for a in everies for o in owns)


def oracle(bootstrap: str, names: Names, acked: dict[str, int], rules: dict | None = None) -> dict:
    """The counts, from the topics and the objection events' acknowledgement times."""
    rules = rules or load_rules()
    posts_raw = read_topic(bootstrap, names.posts)
    events_raw = read_topic(bootstrap, names.objections)
    training = read_topic(bootstrap, names.training)
    decisions = read_topic(bootstrap, names.decisions)
    retractions = read_topic(bootstrap, names.retractions)
    dlq = read_topic(bootstrap, names.dlq)

    posts: dict[str, dict] = {}  # post id -> first copy; t = its CreateTime
    copies: dict[str, int] = defaultdict(int)
    malformed_inputs = 0
    for r in posts_raw:
        p = _decode(r.value)
        if p is None or "post_id" not in p:
            malformed_inputs += 1
            continue
        copies[p["post_id"]] += 1
        if p["post_id"] not in posts:
            posts[p["post_id"]] = {**p, "t": r.timestamp}
    events_by_user: dict[str, dict[str, dict]] = defaultdict(dict)  # first copy per id
    unacked = 0
    for r in events_raw:
        e = _decode(r.value)
        if e is None or "event_id" not in e:
            malformed_inputs += 1
            continue
        ack = acked.get(e["event_id"])
        if ack is None:
            unacked += 1
            ack = r.timestamp + 10**12  # not known: never counted as in force before a post
        mine = events_by_user[e["user_id"]]
        if e["event_id"] not in mine:
            mine[e["event_id"]] = {**e, "ack": ack, "t": r.timestamp}

    published: dict[str, list[int]] = defaultdict(list)  # post id -> offsets of values
    live: dict[str, bool] = {}
    training.sort(key=lambda r: (r.partition, r.offset))
    for r in training:
        pid = r.key.decode()
        if r.value is not None:
            published[pid].append(r.timestamp)
        live[pid] = r.value is not None
    decided: dict[str, list[dict]] = defaultdict(list)
    objected_decisions: dict[str, list[int]] = defaultdict(list)  # user -> times
    for r in decisions:
        d = _decode(r.value)
        if d is not None:
            decided[d["post_id"]].append({**d, "t": r.timestamp})
            if d["reason"] == "OBJECTED":
                objected_decisions[d["user_id"]].append(r.timestamp)

    leaks_in_force: list[dict] = []
    leaks_late: list[dict] = []
    missing: list[str] = []
    undecided: list[str] = []
    for pid, p in posts.items():
        events = list(events_by_user.get(p["user_id"], {}).values())
        ds = decided.get(pid, [])
        if not ds:
            undecided.append(pid)
        if published.get(pid) and events:
            before = [e for e in events if e["ack"] < p["t"]]
            last_decision = max((d["t"] for d in ds), default=now_ms())
            maybe = [e for e in events if e["ack"] >= p["t"] and e["t"] <= last_decision]
            if before and in_force(before, maybe, p["platform"]):
                # had a gate applied the objection before this post was published (it
                # decided another post of the user OBJECTED since the objection was
                # acknowledged)? Then state was lost; if not, the objection reached the
                # gate after the post (re-keying order)
                since, until = max(e["ack"] for e in before), min(published[pid])
                applied = any(since <= t < until for t in objected_decisions[p["user_id"]])
                leaks_in_force.append(
                    {
                        "kind": "state_lost" if applied else "objection_not_yet_at_gate",
                        "post_id": pid,
                        "user_id": p["user_id"],
                        "post_t": p["t"],
                        "published_at": published[pid],
                        "decisions": [(d["outcome"], d["reason"], d["t"]) for d in ds],
                    }
                )
        if live.get(pid) and events and objected(events, p["platform"]):
            leaks_late.append(
                {
                    "post_id": pid,
                    "user_id": p["user_id"],
                    "post_t": p["t"],
                    "decisions": [(d["outcome"], d["reason"], d["t"]) for d in ds],
                }
            )
        if not events and eligible(p, rules) and not live.get(pid):
            missing.append(pid)

    repeated_decisions = sum(
        max(0, len(ds) - copies.get(pid, 1)) for pid, ds in decided.items() if pid in posts
    )
    repeated_outputs = sum(max(0, len(ts) - copies.get(pid, 1)) for pid, ts in published.items())
    result = {
        "posts": len(posts),
        "post_copies": sum(copies.values()),
        "objection_events": sum(len(v) for v in events_by_user.values()),
        "objection_events_unacked": unacked,
        "objecting_users": len(events_by_user),
        "malformed_inputs": malformed_inputs,
        "dlq_records": len(dlq),
        "training_records": len(training),
        "live_at_end": sum(live.values()),
        "decisions": len(decisions),
        "retractions": len(retractions),
        "leaked_in_force": len(leaks_in_force),
        "leaked_in_force_state_lost": sum(x["kind"] == "state_lost" for x in leaks_in_force),
        "leaked_late_still_live": len(leaks_late),
        "eligible_never_objecting_not_live": len(missing),
        "undecided_posts": len(undecided),
        "repeated_decisions": repeated_decisions,
        "repeated_outputs": repeated_outputs,
        "examples": {
            "leaked_in_force": leaks_in_force[:20],
            "leaked_late_still_live": leaks_late[:20],
            "missing": missing[:20],
            "undecided": undecided[:20],
        },
        "leaked_in_force_users": sorted({x["user_id"] for x in leaks_in_force}),
        "leaked_late_users": sorted({x["user_id"] for x in leaks_late}),
    }
    return result


MUST_BE_ZERO = (
    "leaked_in_force",
    "leaked_late_still_live",
    "eligible_never_objecting_not_live",
    "undecided_posts",
    "local_state_differs_from_changelog",
)


def report(result: dict) -> str:
    lines = ["chaos oracle:"]
    for key in (
        "posts",
        "post_copies",
        "objection_events",
        "objecting_users",
        "malformed_inputs",
        "dlq_records",
        "decisions",
        "training_records",
        "live_at_end",
        "retractions",
        "local_partitions_checked",
    ):
        lines.append(f"  {key:40s} {result[key]:>8}")
    for key in MUST_BE_ZERO:
        flag = "" if result[key] == 0 else "   <-- must be 0"
        lines.append(f"  {key:40s} {result[key]:>8}{flag}")
    for key in (
        "leaked_in_force_state_lost",
        "repeated_decisions",
        "repeated_outputs",
        "objection_events_unacked",
    ):
        lines.append(f"  {key:40s} {result[key]:>8}   (reported)")
    return "\n".join(lines)


# -- the workers' local state against the changelogs ----------------------------------------
OFFSET_KEY = b"__faust\0offset__"  # Faust's persisted changelog offset, in each partition
DIRTY_KEY = b"\xff\xffenforcer.uncommitted-writes"  # streams/state/ledger.py


def _open_copy(path: Path) -> dict[bytes, bytes]:
    """Every key and value of a RocksDB partition, read from a copy (a stopped
    worker's LOCK file may be left behind)."""
    from rocksdict import Options, Rdict  # the worker's own dependency

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "db"
        shutil.copytree(path, copy, ignore=shutil.ignore_patterns("LOCK"))
        db = Rdict(str(copy), options=Options(raw_mode=True))
        try:
            return dict(db.items())
        finally:
            db.close()


def local_state_check(bootstrap: str, names: Names, data_dirs: Iterable[Path]) -> dict:
    """Each table partition every worker left on disk (after the run, the workers
    stopped) holds exactly what its changelog holds up to the offset it persisted, as
    read_committed reads it: a partition with a key missing, extra or different is a
    copy a worker could restore a takeover from without an objection or a live post.
    Partitions still marked as holding uncommitted writes are left out (a worker empties
    them when it opens them), as are those that persisted no offset."""
    changelogs: dict[str, dict[int, list[Rec]]] = {}
    checked = 0
    mismatched: list[dict] = []
    for data_dir in sorted(set(data_dirs)):
        for path in sorted((data_dir / "v1" / "tables").glob("*-*.db")):
            table, _, partition_s = path.name[: -len(".db")].rpartition("-")
            local = _open_copy(path)
            persisted = local.pop(OFFSET_KEY, None)
            if persisted is None or DIRTY_KEY in local:
                continue
            topic = f"{names.app_id}-{table}-changelog"
            if topic not in changelogs:
                by_part: dict[int, list[Rec]] = defaultdict(list)
                for rec in read_topic(bootstrap, topic):
                    by_part[rec.partition].append(rec)
                changelogs[topic] = by_part
            state: dict[bytes, bytes] = {}
            for rec in changelogs[topic][int(partition_s)]:
                if rec.offset > int(persisted):
                    break
                if rec.key is None:
                    continue
                if rec.value is None:
                    state.pop(rec.key, None)
                else:
                    state[rec.key] = rec.value
            checked += 1
            missing = [k for k in state if local.get(k) != state[k]]
            extra = [k for k in local if k not in state]
            if missing or extra:
                mismatched.append(
                    {
                        "db": f"{data_dir.name}/{path.name}",
                        "persisted_offset": int(persisted),
                        "missing_or_different": len(missing),
                        "extra": len(extra),
                        "examples": [k.decode("utf-8", "replace") for k in (missing + extra)[:5]],
                    }
                )
    return {
        "local_partitions_checked": checked,
        "local_state_differs_from_changelog": len(mismatched),
        "local_state_mismatches": mismatched[:20],
    }


# -- a run -------------------------------------------------------------------------------------
def independent_check(bootstrap: str, names: Names) -> dict:
    """``enforcer verify`` over the run's topics (issue 18): its exit code and output."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams",
            "verify",
            "--bootstrap-servers",
            bootstrap,
            *names.flags(),
            "--grace",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    return {"verify_exit": done.returncode, "verify_output": done.stdout[-6000:]}


def wait_all_decided(bootstrap: str, names: Names, timeout: float) -> None:
    """Until every decodable post has a decision (or the timeout)."""
    deadline = time.monotonic() + timeout
    want = {p["post_id"] for r in read_topic(bootstrap, names.posts) if (p := _decode(r.value))}
    while time.monotonic() < deadline:
        have = set()
        for r in read_topic(bootstrap, names.decisions):
            d = _decode(r.value)
            if d is not None:
                have.add(d["post_id"])
        left = want - have
        if not left:
            return
        say(f"waiting for {len(left)} decisions")
        time.sleep(5)


def run(
    bootstrap: str,
    work: Path,
    schedule: Iterable[tuple[float, str, dict]],
    *,
    duration: float,
    cluster: KafkaCluster | None = None,
    workers: int = 3,
    partitions: int = 6,
    rate: float = 150.0,
    users: int = 400,
    seed: int = 17,
    prefix: str | None = None,
    settle_timeout: float = 240.0,
) -> dict:
    """Topics, ``workers`` workers, traffic for ``duration`` seconds with the nemesis,
    then every worker running again until every post is decided, then the oracle."""
    names = Names(prefix or f"chaos-{seed}-{os.getpid()}-{int(time.time())}")
    work.mkdir(parents=True, exist_ok=True)
    ensure_topics(names.settings(bootstrap, partitions, work), create_inputs=True)
    fleet = Fleet(bootstrap, names, work, partitions)
    traffic = Traffic(bootstrap, names, rate=rate, users=users, seed=seed)
    ctx = Context(fleet, traffic, cluster, names)
    started = time.time()
    nemesis = Nemesis(ctx, schedule)
    stop_supervisor = threading.Event()
    exits: list[dict] = []
    try:
        for slot in range(workers):
            fleet.start(slot, wait=False)
        for slot in range(workers):
            fleet.slots[slot].wait_ready(180)
        fleet.supervise(stop_supervisor, exits)
        traffic.start()
        nemesis.start()
        time.sleep(duration)
        traffic.finish()
        say(f"traffic stopped: {dict(traffic.sent)}")
        nemesis.join()
        for slot in range(workers):  # everyone back for the end state
            if slot not in fleet.running():
                fleet.start(slot, new_dir=True, wait=False)
        wait_all_decided(bootstrap, names, settle_timeout)
        time.sleep(5)  # held removals settle and commit
        result = oracle(bootstrap, names, traffic.acked)
        result.update(independent_check(bootstrap, names))
    finally:
        stop_supervisor.set()
        fleet.stop_all()
    result.update(local_state_check(bootstrap, names, (w.data_dir for w in fleet.all)))
    result.update(
        {
            "app_id": names.app_id,
            "started": started,
            "seconds": round(time.time() - started, 1),
            "duration": duration,
            "rate": rate,
            "workers": workers,
            "partitions": partitions,
            "brokers": cluster.nodes if cluster else 1,
            "schedule": [list(s) for s in schedule] if isinstance(schedule, list) else None,
            "nemesis_log": ctx.log,
            "nemesis_errors": nemesis.errors,
            "worker_exits": exits,
            "traffic_errors": traffic.errors[:20],
            "sent": dict(traffic.sent),
            "worker_logs": fleet.logs(),
        }
    )
    say(report(result))
    return result


# schedules: (seconds after traffic starts, step, arguments)
SHORT = [
    (10, "kill_restart", {"worker": 0, "down": 3}),
    (35, "scale_in_out", {"keep": 0, "down": 15}),
]
LONG = [
    (15, "kill_restart", {"worker": 0, "down": 5}),
    (45, "freeze", {"worker": 1, "seconds": 75}),
    (150, "kill_leader_broker", {"table": "consent", "partition": 0, "down": 10}),
    (180, "scale_in_out", {"keep": 0, "down": 30}),
    (270, "rebalance_during_retraction", {"posts": 300}),
    (320, "freeze", {"worker": 2, "seconds": 75}),
    (420, "kill_restart", {"worker": 1, "down": 5}),
]
ZOMBIE = [
    (20, "freeze", {"worker": 1, "seconds": 75}),
]
SCHEDULES = {"short": SHORT, "long": LONG, "zombie": ZOMBIE}
