"""State at scale: RSS and disk of the enforcer and of the Kafka Streams peer holding the
consent state of 1,000,000 users and 1,000,000 live posts, each built from the inputs.

    python -m bench.state_scale [--users N] [--live-posts N] [--reps R] [--systems a,b]
    python -m bench.state_scale figures [bench/results/state-scale-<ts>.json] [--write]

On one local broker (``bench.run.broker``; or ``--bootstrap``), the inputs are produced
once: an OBJECT event for every user (keyed by user id), followed at once by a WITHDRAW
for nine users in ten, so that every user has consent state, 10% objecting to every
platform (users ``bench.failover.user_id(i)``, ``i % OBJECTOR_EVERY == 0`` objecting, as
in the failover benchmark); then ``--live-posts`` eligible posts (public, adult, GB,
FACEBOOK or INSTAGRAM) of the users who do not object, post ``j`` by user ``7 j mod
users`` (the next user for an objector's number, as ``bench.failover.preload`` places
its live posts). Every post is published, so each becomes a live entry (the enforcer's
ledger, the peer's ``live`` store).

Per repetition and system (the order rotating): first the system on empty input topics
(ready, then 10 s: its idle RSS and data dir), then on the data set with an app id,
group and state dir of its own: one ``enforcer worker`` as the benchmarks start it (the
settings as shipped, fencing on, its receipts on a topic of its own) or the Kafka
Streams peer (at-least-once, one re-keying and one deciding stream thread, the JVM
options of ``bench.peer_streams.JVM_OPTS``). Every 0.5 s the RSS of each of its
processes; once every post has a decision (the worker's ``enforcer_decisions_total``;
the peer's decisions topic, which has no transactions), 10 s to settle (commits,
changelog flushes), then: RSS, the data dir (``du`` in bytes, allocated and apparent,
and per store), the JVM's heap (``jcmd``); then a clean stop (SIGTERM) and the data dir
again (neither system offers a RocksDB flush; closing flushes the memtables), the
changelog topics' partition dirs on the broker (``du``), and, read back, the live
entries of each changelog (last value per key not a tombstone) and their key and value
bytes, and the distinct post ids on the decisions topic. Results:
``bench/results/state-scale-<timestamp>.json``; ``figures --write`` puts the table into
README.md between ``<!-- state-scale:begin -->`` and ``<!-- state-scale:end -->``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from confluent_kafka import Consumer

from bench import peer_streams, stats
from bench.failover import OBJECTOR_EVERY, commit, user_id
from bench.figures import median_range, results
from bench.matrix import create_topics, output_specs, read_all, start_system, watermarks
from bench.report import write_between
from bench.run import broker, machine, say, settings_for, stop, versions, wait_ready
from streams.kafka.topics import ensure_topics
from streams.serde.codec import Codec
from streams.settings import Settings
from streams.traffic.generator import BASE_TIME_MS, Generated
from streams.traffic.produce import produce_records, traffic_producer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
BEGIN, END = "<!-- state-scale:begin -->", "<!-- state-scale:end -->"
PARTITIONS = 8
SYSTEMS = ("enforcer", "streams")
DESCRIBE = {
    "enforcer": "the enforcer as shipped (one worker: gate process + re-keying process; "
    "fencing on)",
    "streams": "Kafka Streams 4.1.1 peer, at_least_once (1 re-keying + 1 deciding stream "
    "thread, one JVM)",
}
NAMES = {"enforcer": "enforcer (as shipped)", "streams": "Kafka Streams, at-least-once"}
SETTLE_S = 10.0
TIMEOUT_S = 1800.0
# the stores' names in each system, as a table of this benchmark: "consent" or "posts"
STORES = {"consent": "consent", "ledger": "posts", "live": "posts"}


# -- the data set ------------------------------------------------------------------------
def objector(i: int) -> bool:
    """Whether user ``i`` objects (to every platform) at the end of the objection events."""
    return i % OBJECTOR_EVERY == 0


def post_owner(j: int, users: int) -> int:
    """The user of live post ``j``: never an objector."""
    u = (j * 7) % users
    return (u + 1) % users if objector(u) else u


def objection_events(users: int, codec: Codec) -> Iterator[Generated]:
    """Per user an OBJECT (every platform), then a later WITHDRAW unless the user objects;
    keyed by user id, so a user's events are in one input partition, in order."""
    for i in range(users):
        user = user_id(i)
        actions = ("OBJECT",) if objector(i) else ("OBJECT", "WITHDRAW")
        for n, action in enumerate(actions):
            event = {
                "event_id": f"ss-e{i}-{n}",
                "user_id": user,
                "action": action,
                "platform": None,
                "occurred_at": BASE_TIME_MS + n * users + i,
                "channel": "IN_APP",
            }
            value = codec.encode("ObjectionEvent", event)
            yield Generated("objection", "objections", user.encode(), value)


def live_posts(users: int, posts: int, codec: Codec) -> Iterator[Generated]:
    """``posts`` posts the policy publishes, of users who do not object."""
    for j in range(posts):
        post_id = f"ss-p{j:07d}"
        post = {
            "post_id": post_id,
            "user_id": user_id(post_owner(j, users)),
            "platform": "FACEBOOK" if j % 5 < 3 else "INSTAGRAM",
            "visibility": "PUBLIC",
            "author_country": "GB",
            "author_is_adult": True,
            "created_at": BASE_TIME_MS + 2 * users + j,
            "text": "state at scale: a post that stays live in the ledger",
            "media_urls": [],
        }
        yield Generated("post", "posts", post_id.encode(), codec.encode("Post", post))


def produce_inputs(s: Settings, users: int, posts: int) -> dict[str, Any]:
    """The data set onto ``s``'s input topics (objection events first, then posts)."""
    started = time.monotonic()
    codec = Codec()
    producer = traffic_producer(s)
    counts = produce_records(producer, s, objection_events(users, codec))
    counts += produce_records(producer, s, live_posts(users, posts, codec))
    left = producer.flush(300)
    if left:
        raise RuntimeError(f"{left} input records not delivered")
    return {
        "objection_events": counts["objection"],
        "posts": counts["post"],
        "users": users,
        "objecting_users": sum(1 for i in range(users) if objector(i)),
        "seconds": round(time.monotonic() - started, 1),
    }


# -- measuring -----------------------------------------------------------------------------
class Memory(threading.Thread):
    """Every 0.5 s the RSS of each process of a tree (the root as ``main``, a child
    started by multiprocessing's spawn as ``child``, others by their names), their peaks
    and the peak of their sum; every 5 s the load average."""

    def __init__(self, pid: int, loads: list[list[float]], child: str | None = None) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.child = child  # what to call a spawned child process (else its name)
        self.peak: dict[str, int] = {}
        self.peak_total = 0
        self.loads = loads
        self.run_loads: list[float] = []
        self.stopping = threading.Event()

    def now(self) -> dict[str, int]:
        """RSS in bytes by process now."""
        out: dict[str, int] = {}
        with contextlib.suppress(psutil.Error):
            out["main"] = self.root.memory_info().rss
            for child in self.root.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    name = child.name()
                    if self.child and "spawn_main" in " ".join(child.cmdline()):
                        name = self.child
                    elif "resource_tracker" in " ".join(child.cmdline()):
                        name = "resource_tracker"  # multiprocessing's, beside the stage
                    out[name] = out.get(name, 0) + child.memory_info().rss
        return out

    def sample(self) -> dict[str, int]:
        rss = self.now()
        for name, value in rss.items():
            self.peak[name] = max(self.peak.get(name, 0), value)
        self.peak_total = max(self.peak_total, sum(rss.values()))
        return rss

    def run(self) -> None:
        n = 0
        while not self.stopping.wait(0.5):
            self.sample()
            if n % 10 == 0:
                load = os.getloadavg()
                self.loads.append([round(time.time(), 1), *(round(x, 2) for x in load)])
                self.run_loads.append(load[0])
            n += 1


def du(path: Path) -> dict[str, Any]:
    """Bytes under ``path``: allocated (``du -sB1``) and apparent (``du -sb``), and per
    store (a path component named after a table: consent, ledger, live), allocated."""
    if not path.exists():
        return {"allocated": 0, "apparent": 0, "stores": {}}

    def run(flag: str) -> int:
        out = subprocess.run(["du", flag, str(path)], capture_output=True, text=True, timeout=300)
        return int(out.stdout.split()[0]) if out.returncode == 0 and out.stdout else 0

    stores: dict[str, int] = {}
    for f in path.rglob("*"):
        with contextlib.suppress(OSError):
            if not f.is_file():
                continue
            for part in f.relative_to(path).parts[:-1]:
                m = re.match(r"(consent|ledger|live)(-\d+\.db)?$", part)
                if m:
                    table = STORES[m.group(1)]
                    stores[table] = stores.get(table, 0) + f.stat().st_blocks * 512
                    break
    return {"allocated": run("-sB1"), "apparent": run("-sb"), "stores": stores}


def scrape(port: int) -> dict[str, float]:
    """The worker's metrics, summed over labels, by name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name = re.split(r"[{ ]", line, maxsplit=1)[0]
        with contextlib.suppress(ValueError):
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def jvm_heap(pid: int) -> dict[str, Any]:
    """The JVM's heap flags and its heap now (``jcmd``), in bytes."""
    out: dict[str, Any] = {"jvm_options": list(peer_streams.JVM_OPTS)}

    def jcmd(*args: str) -> str:
        done = subprocess.run(["jcmd", str(pid), *args], capture_output=True, text=True, timeout=60)
        return done.stdout

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        flags = jcmd("VM.flags")
        for name in ("InitialHeapSize", "MaxHeapSize", "MaxDirectMemorySize"):
            m = re.search(rf"-XX:{name}=(\d+)", flags)
            if m:
                out[name] = int(m.group(1))
        heap = jcmd("GC.heap_info")
        m = re.search(
            r"heap\s+total (?:reserved )?(\d+)K, (?:committed (\d+)K, )?used (\d+)K", heap
        )
        if m:
            out["heap_total_bytes"] = int(m.group(2) or m.group(1)) * 1024
            out["heap_used_bytes"] = int(m.group(3)) * 1024
        out["heap_info"] = heap.strip().splitlines()[1:4]
    return out


def broker_bytes(data_dir: Path | None, topic: str) -> int | None:
    """Bytes of a topic's partition dirs on the local broker (``du -sB1``)."""
    if data_dir is None:
        return None
    dirs = [
        str(p)
        for p in data_dir.glob(f"{topic}-*")
        if re.fullmatch(r"\d+", p.name[len(topic) + 1 :])
    ]
    if not dirs:
        return 0
    out = subprocess.run(["du", "-scB1", *dirs], capture_output=True, text=True, timeout=300)
    return int(out.stdout.splitlines()[-1].split()[0])


def changelogs(ctx: Context, s: Settings) -> dict[str, Any]:
    """Each changelog topic of the app: bytes on the broker, records, and its live
    entries read back (last value per key, tombstones remove) with their bytes."""
    consumer = Consumer({"bootstrap.servers": ctx.bootstrap, "group.id": "state-scale-sizes"})
    try:
        topics = sorted(
            t
            for t in consumer.list_topics(timeout=10).topics
            if t.startswith(f"{s.app_id}-") and t.endswith("-changelog")
        )
    finally:
        consumer.close()
    out: dict[str, Any] = {}
    for topic in topics:
        last: dict[bytes, int | None] = {}
        n = [0, 0]

        def each(msg: Any, last: dict[bytes, int | None] = last, n: list[int] = n) -> None:
            value = msg.value()
            n[0] += 1
            n[1] += len(msg.key() or b"") + len(value or b"")
            last[msg.key()] = None if value is None else len(value)

        read_all(ctx.bootstrap, topic, each)
        live = {k: v for k, v in last.items() if v is not None}
        table = "consent" if "-consent-" in topic else "posts"
        out[topic] = {
            "table": table,
            "broker_bytes": broker_bytes(ctx.broker_data, topic),
            "records": n[0],
            "record_bytes": n[1],
            "keys": len(last),
            "live": len(live),
            "live_key_bytes": sum(len(k or b"") for k in live),
            "live_value_bytes": sum(live.values()),
        }
    return out


def distinct_decided(ctx: Context, topic: str) -> int:
    """Distinct post ids (keys) on a decisions topic."""
    keys: set[bytes] = set()
    read_all(ctx.bootstrap, topic, lambda m: keys.add(m.key()))
    return len(keys)


@dataclasses.dataclass
class Context:
    """One benchmark's broker (its data dir when local), data set and scratch dir."""

    bootstrap: str
    broker_data: Path | None
    workdir: Path
    run: str
    posts: int
    users: int
    loads: list[list[float]]

    @property
    def inputs(self) -> tuple[str, str]:
        return f"ss-{self.run}-posts", f"ss-{self.run}-objections"

    @property
    def empty(self) -> tuple[str, str]:
        return f"ss-{self.run}-empty-posts", f"ss-{self.run}-empty-objections"


def one_run(ctx: Context, system: str, rep: int, idle: bool) -> dict[str, Any]:
    """``system`` on the data set (or, ``idle``, on empty inputs): its figures."""
    prefix = f"ss-{ctx.run}-{system}-{'idle' if idle else 'state'}{rep}"
    posts_topic, objections_topic = ctx.empty if idle else ctx.inputs
    s = settings_for(ctx.bootstrap, prefix, posts_topic, objections_topic, receipts=True)
    if system == "enforcer":
        ensure_topics(s, create_inputs=False)
    else:
        create_topics(ctx.bootstrap, output_specs(s))
    state_dir = ctx.workdir / f"{prefix}-state"
    load_before = os.getloadavg()
    proc, port = start_system(system, s, prefix, ctx.workdir, peer_python=Path(sys.executable))
    # the worker's children: its re-keying stage (spawned) and multiprocessing's tracker
    memory = Memory(proc.pid, ctx.loads, "rekey" if system == "enforcer" else None)
    memory.start()
    watcher = Consumer({"bootstrap.servers": ctx.bootstrap, "group.id": f"ss-w-{prefix}"})
    result: dict[str, Any] = {"system": system, "rep": rep, "idle": idle, "prefix": prefix}
    started = time.monotonic()
    try:
        wait_ready(port, proc, timeout=900, every=0.5, what=system)
        result["ready_s"] = round(time.monotonic() - started, 1)
        if not idle:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{system} exited with {proc.returncode} ({prefix}.log)")
                if system == "enforcer":
                    decided = scrape(port).get("enforcer_decisions_total", 0.0)
                else:  # at-least-once: no transaction markers, offsets count records
                    decided = watermarks(watcher, [s.decisions_topic])
                if decided >= ctx.posts:
                    break
                if time.monotonic() - started > TIMEOUT_S:
                    raise RuntimeError(f"{system}: {decided:.0f} of {ctx.posts} decided")
                time.sleep(0.5)
            result["decided_s"] = round(time.monotonic() - started, 1)
            say(f"  {prefix}: every post decided after {result['decided_s']} s; settling")
        time.sleep(SETTLE_S)
        settled = memory.sample()
        result["rss_settled"] = {**settled, "total": sum(settled.values())}
        result["disk_settled"] = du(state_dir)
        if system == "enforcer":
            metrics = scrape(port)
            result["metrics"] = {
                k: v
                for k, v in metrics.items()
                if k.startswith(
                    ("enforcer_decisions", "enforcer_objection_events", "enforcer_inputs")
                )
            }
        else:
            result["jvm"] = jvm_heap(proc.pid)
    finally:
        memory.stopping.set()
        watcher.close()
        stop(proc)
        memory.join(5)
    result["exit_code"] = proc.returncode
    result["rss_peak"] = {**memory.peak, "total": memory.peak_total}
    result["disk_stopped"] = du(state_dir)
    loads = [*memory.run_loads, load_before[0], os.getloadavg()[0]]
    result["load_average_1m"] = {"min": round(min(loads), 2), "max": round(max(loads), 2)}
    if not idle:
        result["changelogs"] = changelogs(ctx, s)
        result["posts_decided"] = distinct_decided(ctx, s.decisions_topic)
    shutil.rmtree(state_dir, ignore_errors=True)
    return result


# -- figures -------------------------------------------------------------------------------
def flat(run: dict[str, Any]) -> dict[str, float]:
    """The numbers of one run to summarize, by name."""
    out: dict[str, float] = {
        "rss_peak_total": run["rss_peak"]["total"],
        "rss_settled_total": run["rss_settled"]["total"],
        "rss_settled_main": run["rss_settled"].get("main", 0),
        "rss_settled_children": run["rss_settled"]["total"] - run["rss_settled"].get("main", 0),
        "rss_settled_rekey": run["rss_settled"].get("rekey", 0),
        "rss_peak_main": run["rss_peak"].get("main", 0),
        "rss_peak_rekey": run["rss_peak"].get("rekey", 0),
        "disk_settled": run["disk_settled"]["allocated"],
        "disk_stopped": run["disk_stopped"]["allocated"],
        "disk_stopped_apparent": run["disk_stopped"]["apparent"],
        "disk_settled_apparent": run["disk_settled"]["apparent"],
        "ready_s": run.get("ready_s", 0.0),
    }
    for when in ("settled", "stopped"):
        for table, n in run[f"disk_{when}"]["stores"].items():
            out[f"disk_{when}_{table}"] = n
    if "decided_s" in run:
        out["decided_s"] = run["decided_s"]
    for v in run.get("changelogs", {}).values():
        t = v["table"]
        out[f"changelog_broker_bytes_{t}"] = v["broker_bytes"] or 0
        out[f"changelog_records_{t}"] = v["records"]
        out[f"live_{t}"] = v["live"]
        out[f"live_logical_bytes_{t}"] = v["live_key_bytes"] + v["live_value_bytes"]
    if run.get("jvm", {}).get("heap_total_bytes"):
        out["jvm_heap_committed"] = run["jvm"]["heap_total_bytes"]
        out["jvm_heap_used"] = run["jvm"]["heap_used_bytes"]
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per system (``<system>`` loaded, ``<system>-idle``), median/min/max of each figure."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    groups: dict[str, list[dict[str, float]]] = {}
    for run in runs:
        key = run["system"] + ("-idle" if run["idle"] else "")
        groups.setdefault(key, []).append(flat(run))
    for key, rows in groups.items():
        names = sorted({n for row in rows for n in row})
        out[key] = {n: stats.summarize([row[n] for row in rows if n in row]) for n in names}
    return out


def per_entry(summary: dict[str, Any], users: int, posts: int) -> dict[str, dict[str, float]]:
    """Bytes per user and per live post, from the medians: the state dir's stores after a
    clean stop, the changelogs on the broker and read back (key + value of the live
    entries), and the RSS over an idle system's (empty state) per entry."""
    out: dict[str, dict[str, float]] = {}
    for system in SYSTEMS:
        s = summary.get(system)
        if not s:
            continue

        def med(name: str, s: dict[str, Any] = s) -> float:
            return s.get(name, {}).get("median", 0.0)

        idle = summary.get(f"{system}-idle", {})
        consent = med("live_consent") or users
        live = med("live_posts") or posts
        rss_delta = med("rss_settled_total") - idle.get("rss_settled_total", {}).get("median", 0)
        peak_delta = med("rss_peak_total") - idle.get("rss_settled_total", {}).get("median", 0)
        out[system] = {
            "disk_per_user": med("disk_stopped_consent") / consent,
            "disk_per_live_post": med("disk_stopped_posts") / live,
            "disk_per_entry": med("disk_stopped") / (consent + live),
            "disk_settled_per_entry": med("disk_settled") / (consent + live),
            "changelog_broker_per_user": med("changelog_broker_bytes_consent") / consent,
            "changelog_broker_per_live_post": med("changelog_broker_bytes_posts") / live,
            "logical_per_user": med("live_logical_bytes_consent") / consent,
            "logical_per_live_post": med("live_logical_bytes_posts") / live,
            "rss_settled_over_idle_bytes": rss_delta,
            "rss_peak_over_idle_bytes": peak_delta,
            "rss_settled_over_idle_per_entry": rss_delta / (consent + live),
            "rocksdb_disk_per_logical_byte": med("disk_stopped")
            / max(1.0, med("live_logical_bytes_consent") + med("live_logical_bytes_posts")),
        }
    return out


def _mb(s: dict[str, float] | None, digits: int = 0) -> str:
    """``median (min-max)`` of a figure in bytes, in MiB."""
    return median_range(s, digits, 1 / 2**20)


def _n(s: dict[str, float] | None) -> str:
    """The median of a count."""
    return f"{s['median']:,.0f}" if s else "-"


def rows(system: str, cfg: dict[str, Any], summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, cell) of ``system``'s column in the README's table."""
    m = summary[system]
    idle = summary.get(f"{system}-idle", {})
    e = per_entry(summary, cfg["users"], cfg["live_posts"]).get(system, {})
    if system == "enforcer":
        tracker = m["rss_settled_children"]["median"] - m["rss_settled_rekey"]["median"]
        parts = (
            f"{_mb(m.get('rss_settled_main'))} / {_mb(m.get('rss_settled_rekey'))} "
            f"(+ {tracker / 2**20:.0f}: multiprocessing's resource tracker)"
        )
        heap = "-"
    else:
        parts = "one JVM"
        heap = (
            f"`{' '.join(cfg['jvm_options'][:2])}`; committed {_mb(m.get('jvm_heap_committed'))}"
            f", used {_mb(m.get('jvm_heap_used'))}"
        )
    return [
        ("from start to every post decided, s", median_range(m.get("decided_s"))),
        ("RSS idle (empty state: ready + 10 s), MiB", _mb(idle.get("rss_settled_total"))),
        ("RSS peak while building the state, MiB", _mb(m.get("rss_peak_total"))),
        ("RSS after every decision + 10 s, MiB", f"**{_mb(m.get('rss_settled_total'))}**"),
        ("of which the gate / the re-keying process, MiB", parts),
        (
            "RSS after + 10 s over idle, per entry (user or live post), bytes",
            f"{e.get('rss_settled_over_idle_per_entry', 0):,.0f}",
        ),
        (
            "state dir after + 10 s, MiB allocated (apparent)",
            f"{_mb(m.get('disk_settled'))} ({_mb(m.get('disk_settled_apparent'))})",
        ),
        (
            "state dir after a clean stop, MiB allocated (apparent)",
            f"**{_mb(m.get('disk_stopped'))}** ({_mb(m.get('disk_stopped_apparent'))})",
        ),
        (
            "its stores per user / per live post (after the stop), bytes",
            f"{e.get('disk_per_user', 0):,.0f} / {e.get('disk_per_live_post', 0):,.0f}",
        ),
        (
            "changelog topics on the broker, consent + posts, MiB",
            f"{_mb(m.get('changelog_broker_bytes_consent'), 1)} + "
            f"{_mb(m.get('changelog_broker_bytes_posts'), 1)}",
        ),
        (
            "changelog records written, consent / posts",
            f"{_n(m.get('changelog_records_consent'))} / {_n(m.get('changelog_records_posts'))}",
        ),
        (
            "live entries read back from the changelogs, consent / posts",
            f"{_n(m.get('live_consent'))} / {_n(m.get('live_posts'))}",
        ),
        (
            "a live entry's key + value, per user / per live post, bytes",
            f"{e.get('logical_per_user', 0):,.0f} / {e.get('logical_per_live_post', 0):,.0f}",
        ),
        ("JVM heap, MiB", heap),
    ]


def table(result: dict[str, Any]) -> str:
    """The README's table of one results file."""
    cfg = result["config"]
    summary = summarize(result["runs"])  # from the runs: this code's figures
    systems = [s for s in SYSTEMS if s in summary]
    loads = result["load_average"]
    head = result["commit"]["head"][:7]
    dirty = ", other files of the shared tree modified" if result["commit"]["modified"] else ""
    n = {s: summary[s]["rss_settled_total"]["n"] for s in systems}
    counted = " and ".join(f"{k} run{'s' if k > 1 else ''} of each" for k in set(n.values()))
    columns = {s: rows(s, cfg, summary) for s in systems}
    lines = [
        f"`{Path(result['file']).name}` (commit `{head}`{dirty}): {cfg['users']:,} users' "
        f"consent state (each user one or two objection events, {cfg['objecting_share']:.0%} "
        f"objecting) and {cfg['live_posts']:,} live posts, built by each system from the "
        f"inputs; {cfg['partitions']} partitions; {result['machine']['cores']} cores, "
        f"{result['versions']['kafka']} ({cfg['broker']}); median (min-max) of {counted} "
        "(plus as many on empty inputs); 1-minute load average "
        f"{loads['min']:.1f}-{loads['max']:.1f} during the runs (a shared machine; the "
        f"benchmark at nice {cfg['nice']}):",
        "",
        "| | " + " | ".join(NAMES[s] for s in systems) + " |",
        "|---|" + "---|" * len(systems),
    ]
    for i, (label, _) in enumerate(columns[systems[0]]):
        lines.append(f"| {label} | " + " | ".join(columns[s][i][1] for s in systems) + " |")
    return "\n".join(lines) + "\n"


def figures(argv: list[str]) -> int:
    """Print (``--write``: put into README.md) the table of a results file."""
    text = "\n".join(table(r) for r in results(argv, "state-scale-*.json"))
    if "--write" in argv and not write_between(README, text, BEGIN, END):
        print(f"no {BEGIN} / {END} in {README}", file=sys.stderr)
        return 1
    print(text, end="")
    return 0


# -- main ----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["figures"]:
        return figures(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--live-posts", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--bootstrap", help="an existing broker (no broker-side sizes then)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep-logs", type=Path, help="copy the systems' logs here")
    args = parser.parse_args(argv)
    systems = tuple(x for x in args.systems.split(",") if x)
    if not systems or set(systems) - set(SYSTEMS):
        parser.error(f"--systems: some of {', '.join(SYSTEMS)}")
    if "streams" in systems:
        peer_streams.build()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    out_path = args.out / f"state-scale-{stamp}.json"
    loads: list[list[float]] = []
    runs: list[dict[str, Any]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="state-scale-") as tmp:
        workdir = Path(tmp)
        with broker(args.bootstrap, workdir) as (bootstrap, kafka, _pid):
            data_dir = None if args.bootstrap else workdir / "kafka" / "data"
            ctx = Context(
                bootstrap, data_dir, workdir, stamp.lower(), args.live_posts, args.users, loads
            )
            inputs = settings_for(bootstrap, f"ss-{ctx.run}-data", *ctx.inputs)
            ensure_topics(inputs, create_inputs=True)
            ensure_topics(
                settings_for(bootstrap, f"ss-{ctx.run}-empty", *ctx.empty), create_inputs=True
            )
            say(f"producing objection events of {args.users:,} users and {args.live_posts:,} posts")
            data = produce_inputs(inputs, args.users, args.live_posts)
            say(f"produced in {data['seconds']} s")
            result: dict[str, Any] = {
                "started": stamp,
                "config": {
                    "users": args.users,
                    "live_posts": args.live_posts,
                    "reps": args.reps,
                    "systems": {s: DESCRIBE[s] for s in systems},
                    "objecting_share": 1 / OBJECTOR_EVERY,
                    "partitions": PARTITIONS,
                    "settle_s": SETTLE_S,
                    "jvm_options": list(peer_streams.JVM_OPTS),
                    "streams_guarantee": "at_least_once",
                    "enforcer_flags": "bench.run.worker_command defaults, --receipts-topic "
                    "of its own",
                    "broker": "external" if args.bootstrap else "local, one node",
                    "nice": os.nice(0),
                },
                "data": data,
                "commit": commit(),
                "worker_env": {k: v for k, v in os.environ.items() if k.startswith("ENFORCER_")},
                "versions": {
                    **versions(None, kafka),
                    "java": subprocess.run(
                        ["java", "-version"], capture_output=True, text=True
                    ).stderr.splitlines()[0],
                    "kafka_streams": "4.1.1",
                },
                "machine": machine(),
            }
            for rep, system in stats.order(systems, args.reps):
                for idle in (True, False):
                    say(f"rep {rep}: {system}{' on empty inputs' if idle else ''}")
                    try:
                        runs.append(one_run(ctx, system, rep, idle))
                    finally:
                        if args.keep_logs:
                            args.keep_logs.mkdir(parents=True, exist_ok=True)
                            for log in workdir.glob("*.log"):
                                shutil.copy(log, args.keep_logs / log.name)
                    r = runs[-1]
                    say(
                        f"  RSS peak {r['rss_peak']['total'] / 2**20:.0f} MB, settled "
                        f"{r['rss_settled']['total'] / 2**20:.0f} MB, state dir "
                        f"{r['disk_stopped']['allocated'] / 2**20:.0f} MB after the stop"
                    )
                    summary = summarize(runs)
                    result.update(
                        runs=runs,
                        summary=summary,
                        per_entry=per_entry(summary, args.users, args.live_posts),
                        load_average={
                            "min": min((x[1] for x in loads), default=0.0),
                            "max": max((x[1] for x in loads), default=0.0),
                            "samples": loads,
                        },
                        wall_seconds=round(time.monotonic() - started),
                    )
                    out_path.write_text(json.dumps(result, indent=2) + "\n")
    say(f"results in {out_path}")
    result["file"] = str(out_path)
    print(table(result), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
