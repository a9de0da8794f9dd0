"""The benchmark of issue 20: the enforcer, Kafka Streams (at-least-once and
exactly_once_v2), the expert Quix peer and a true ceiling, each run several times,
interleaved, on one broker and one data set; equal outputs checked; latency with no
exclusion. ``make bench`` runs it.

    python -m bench.matrix [--posts N] [--reps R] [--systems a,b,...] [--quick]
                           [--latency-systems a,b] [--skip throughput|latency]

Throughput: every system in every round (the round's first system rotating), each on
its own output topics over the same pre-produced inputs (objection events of every
objector, then the posts). A run's clock starts when the system's first record lands on
its internal re-keyed topic(s) (polled every 50 ms; changelogs do not count) and stops at
the broker's append time of the decision that completed the set of post ids (each
distinct post id's first decision; retractions are extra decisions and do not count).
CPU of the system's process tree (psutil) and of the broker (``/proc/<pid>/stat``) over
the same window; peak RSS of the tree over the whole run. Then the outputs: every
system's outcome and reason per post (in the order written) and final
``training-ingest`` key set (last value per key, tombstones remove) must equal the first
run's; a difference is named and the command exits 1.

The ceiling (``bench/ceiling_pipeline.py``) writes, per input record, the records the
enforcer wrote in its first run of the matrix (counted on its topics), in two processes.

Latency: after the broker is warmed by unrelated traffic (a feed and a reader of a topic
of its own), each system is started on fresh topics, and once it reports ready, posts
are sent at a fixed rate (``bench/feed.py``, the send time in microseconds in the post
id); a sample is a post's send time to its first decision being readable by a
``read_committed`` reader, on this machine's clock. Every post sent counts (one never
decided counts as infinitely late). At 2,000 and 10,000 posts/s, then a short search for
the highest rate whose p99 stays under 100 ms.

Results: ``bench/results/matrix-<timestamp>.json``; ``python -m bench.report --write``
turns the newest into the README's table and a PNG.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from bench import peer_streams, stats
from bench.run import (
    broker,
    free_port,
    machine,
    poll_batch,
    produce_data,
    say,
    settings_for,
    stop,
    thread_cpu,
    topic_flags,
    versions,
    wait_ready,
    worker_command,
)
from streams.kafka.topics import ensure_topics, topic_specs
from streams.serde.codec import Codec
from streams.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 8
PEER_PYTHON = ROOT / ".venv-peer" / "bin" / "python"
SYSTEMS = ("enforcer", "enforcer-alos", "streams", "streams-eos", "quix", "ceiling")
# measured when asked for (--systems): the enforcer without its C fast path
OPTIONAL_SYSTEMS = ("enforcer-python",)
DESCRIBE = {
    "enforcer": "the enforcer as shipped (fencing on: transactions committed every 0.1 s)",
    "enforcer-alos": "the enforcer with fencing off (ENFORCER_FENCING=off: at-least-once)",
    "enforcer-python": "the enforcer as shipped without the C fast path (ENFORCER_NATIVE=0)",
    "streams": "Kafka Streams 4.1.1, at_least_once (1 re-keying + 1 deciding stream thread)",
    "streams-eos": "Kafka Streams 4.1.1, exactly_once_v2 (1 + 1 stream threads)",
    "quix": "Quix Streams 3.28.1, expert peer (re-keying process + 1 gate process)",
    "ceiling": "copy loops writing the enforcer's records per input (2 processes)",
}
# Kafka Streams' producer lingers 100 ms by default; for the latency runs it gets the
# enforcer's 5 ms (a latency-minded engineer's first setting)
STREAMS_LATENCY_CONFIG = {"linger.ms": "5"}


@dataclasses.dataclass
class Config:
    """Sizes of one matrix."""

    posts: int = 500_000
    users: int = 100_000
    objector_share: float = 0.1
    reps: int = 5
    systems: tuple[str, ...] = SYSTEMS
    latency_systems: tuple[str, ...] = ("enforcer", "enforcer-alos", "streams", "quix")
    latency_rates: tuple[int, ...] = (2000, 10000)
    latency_seconds: float = 20.0
    search_seconds: float = 15.0
    search_steps: int = 2
    broker_warmup_seconds: float = 30.0
    broker_warmup_rate: int = 10000
    drain_seconds: float = 10.0
    timeout: float = 900.0


QUICK = Config(
    posts=20_000,
    users=5_000,
    reps=1,
    latency_rates=(2000,),
    latency_seconds=5.0,
    search_steps=0,
    broker_warmup_seconds=5.0,
)


# -- topics, processes, CPU ----------------------------------------------------------------
def admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


def create_topics(bootstrap: str, topics: dict[str, dict[str, str]]) -> None:
    """Create ``topics`` (name -> config) with ``PARTITIONS`` partitions; wait for them."""
    client = admin(bootstrap)
    futures = client.create_topics(
        [NewTopic(t, PARTITIONS, 1, config=c) for t, c in topics.items()], request_timeout=30
    )
    for future in futures.values():
        with contextlib.suppress(Exception):
            future.result()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        known = client.list_topics(timeout=10).topics
        if all(t in known and len(known[t].partitions) == PARTITIONS for t in topics):
            return
        time.sleep(0.1)
    raise RuntimeError(f"topics not created: {list(topics)}")


def output_specs(s: Settings) -> dict[str, dict[str, str]]:
    """The output topics as the enforcer creates them (configs included: the audit topics
    are stamped with the broker's append time)."""
    skip = {s.replay_results_topic}
    return {
        spec.name: dict(spec.config)
        for spec in topic_specs(s)
        if spec.role == "output" and spec.name not in skip
    }


def internal_topics(system: str, s: Settings, prefix: str) -> list[str]:
    """The topic(s) whose first record starts a run's clock: the re-keyed inputs."""
    if system.startswith("enforcer"):
        return [s.user_events_topic]
    if system.startswith("streams"):
        return [f"{s.app_id}-posts-by-user", f"{s.app_id}-objections-by-user"]
    if system == "quix":
        return [f"repartition__{s.app_id}--by-user"]
    return [f"{prefix}-internal"]


@dataclasses.dataclass
class Calibration:
    """What the enforcer wrote in a run: records and bytes per kind of topic, per internal
    (re-keyed) record; the ceiling writes the same."""

    inputs: int
    outputs: dict[str, tuple[int, int]]  # kind -> (records, mean value bytes)


def start_system(
    system: str,
    s: Settings,
    prefix: str,
    workdir: Path,
    *,
    peer_python: Path,
    calibration: Calibration | None = None,
    latency: bool = False,
) -> tuple[subprocess.Popen, int | None]:
    """Start ``system`` on ``s``'s topics; (process, its /ready port or None)."""
    port = free_port()
    state = workdir / f"{prefix}-state"
    log = open(workdir / f"{prefix}.log", "ab")  # noqa: SIM115 - lives as long as the process
    env = None
    if system.startswith("enforcer"):
        cmd = worker_command(s, state, port, receipts=True, partitions=PARTITIONS)
        if system == "enforcer-alos":
            env = {**os.environ, "ENFORCER_FENCING": "off"}
        elif system == "enforcer-python":
            env = {**os.environ, "ENFORCER_NATIVE": "0"}
    elif system.startswith("streams"):
        cmd = peer_streams.command(
            s,
            state,
            guarantee="exactly_once_v2" if system == "streams-eos" else "at_least_once",
            threads=1,
            rekey_threads=1,
            receipts=True,
            web_port=port,
            config=STREAMS_LATENCY_CONFIG if latency else None,
        )
    elif system == "quix":
        cmd = [
            str(peer_python),
            "-m",
            "bench.peer_quix",
            "--bootstrap-servers",
            s.bootstrap_servers,
            *topic_flags(s),
            "--receipts-topic",
            s.receipts_topic,
            "--state-dir",
            str(state),
            "--partitions",
            str(PARTITIONS),
            "--processes",
            "1",
            "--web-port",
            str(port),
        ]
    elif system == "ceiling":
        if calibration is None:
            raise RuntimeError("the ceiling runs after an enforcer run (its record counts)")
        topics = {
            "decisions": s.decisions_topic,
            "training": s.training_topic,
            "changelog": f"{prefix}-changelog",
            "other": f"{prefix}-other",
        }
        cmd = [
            sys.executable,
            "-m",
            "bench.ceiling_pipeline",
            "--bootstrap-servers",
            s.bootstrap_servers,
            "--inputs",
            f"{s.posts_topic},{s.objections_topic}",
            "--internal",
            f"{prefix}-internal",
            "--group",
            prefix,
            "--inputs-count",
            str(calibration.inputs),
        ]
        for kind, (count, size) in calibration.outputs.items():
            if count:
                cmd += ["--output", f"{kind}={topics[kind]}:{count}:{size}"]
        port = None
    else:
        raise ValueError(f"unknown system {system!r}")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    return proc, port


def proc_stat_cpu(pid: int) -> float:
    """CPU seconds (utime + stime) of one process, from ``/proc/<pid>/stat``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(root: psutil.Process) -> float:
    total = 0.0
    with contextlib.suppress(psutil.Error):
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
    return total


def tree_rss(root: psutil.Process) -> int:
    total = 0
    with contextlib.suppress(psutil.Error):
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
    return total


class Sampler(threading.Thread):
    """Every 0.1 s: (wall time, CPU seconds of the system's tree, of the broker); peak RSS
    of the tree. Gone children's CPU is lost, so the tree is read while it lives."""

    def __init__(self, pid: int, broker_pid: int | None) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.broker_pid = broker_pid
        self.samples: list[tuple[float, float, float]] = []
        self.peak_rss = 0
        self.stopping = threading.Event()

    def sample(self) -> tuple[float, float, float]:
        broker_cpu = proc_stat_cpu(self.broker_pid) if self.broker_pid else math.nan
        s = (time.time(), tree_cpu(self.root), broker_cpu)
        self.samples.append(s)
        return s

    def run(self) -> None:
        while not self.stopping.wait(0.1):
            self.sample()
            self.peak_rss = max(self.peak_rss, tree_rss(self.root))

    def at(self, when: float) -> tuple[float, float, float]:
        """The first sample taken at or after ``when`` (the last one if none)."""
        for s in list(self.samples):
            if s[0] >= when:
                return s
        return self.samples[-1]


# -- reading topics ------------------------------------------------------------------------
def reader(
    bootstrap: str, topics: Sequence[str], *, eof: bool = True
) -> tuple[Consumer, set[tuple[str, int]]]:
    """A ``read_committed`` consumer assigned every partition of ``topics`` from the
    beginning; (it, the partitions)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-reader-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": eof,
            "fetch.wait.max.ms": 5,
        }
    )
    known = consumer.list_topics(timeout=10).topics
    parts = {
        (t, p) for t in topics for p in (known[t].partitions if t in known else range(PARTITIONS))
    }
    consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in sorted(parts)])
    return consumer, parts


def read_all(bootstrap: str, topic: str, each: Callable[[Any], None]) -> None:
    """Call ``each`` on every record of ``topic`` readable now (read_committed): until
    every partition has reported its end (or 60 s without a record)."""
    consumer, parts = reader(bootstrap, [topic])
    at_end: set[tuple[str, int]] = set()
    quiet_since = time.monotonic()
    try:
        while len(at_end) < len(parts):
            msgs = consumer.consume(10000, timeout=1.0)
            if msgs:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > 60:
                say(f"  {topic}: partitions {sorted(parts - at_end)} never reported their end")
                return
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_end.add((msg.topic(), msg.partition()))
                    continue
                at_end.discard((msg.topic(), msg.partition()))
                each(msg)
    finally:
        consumer.close()


def watermarks(consumer: Consumer, topics: Sequence[str]) -> int:
    """Sum of the end offsets of ``topics`` (0 for a topic not there yet)."""
    total = 0
    known = consumer.list_topics(timeout=10).topics
    for t in topics:
        md = known.get(t)
        if md is None or md.error is not None:
            continue
        for p in md.partitions:
            with contextlib.suppress(Exception):
                total += consumer.get_watermark_offsets(TopicPartition(t, p), timeout=5)[1]
    return total


# -- one throughput run ----------------------------------------------------------------------
@dataclasses.dataclass
class Context:
    cfg: Config
    bootstrap: str
    broker_pid: int | None
    workdir: Path
    run: str
    posts_topic: str
    objections_topic: str
    posts: int  # distinct post ids in the data set
    inputs: int  # input records (posts and objection events)
    peer_python: Path
    calibration: Calibration | None = None


def throughput_run(
    ctx: Context, system: str, rep: int, attempt: int = 1
) -> tuple[dict[str, Any], stats.Outputs]:
    """One run of ``system`` over the data set: its figures, and its outputs."""
    prefix = f"t{ctx.run}-{system}-{rep}" + (f"-a{attempt}" if attempt > 1 else "")
    s = settings_for(ctx.bootstrap, prefix, ctx.posts_topic, ctx.objections_topic, receipts=True)
    if system.startswith("enforcer"):
        ensure_topics(s, create_inputs=False)
    elif system == "ceiling":
        create_topics(
            ctx.bootstrap,
            {
                s.decisions_topic: output_specs(s)[s.decisions_topic],
                s.training_topic: output_specs(s)[s.training_topic],
                f"{prefix}-internal": {},
                f"{prefix}-changelog": {"cleanup.policy": "compact"},
                f"{prefix}-other": {},
            },
        )
    else:
        create_topics(ctx.bootstrap, output_specs(s))
    load_before = os.getloadavg()[0]
    proc, _ = start_system(
        system, s, prefix, ctx.workdir, peer_python=ctx.peer_python, calibration=ctx.calibration
    )
    sampler = Sampler(proc.pid, ctx.broker_pid)
    sampler.start()
    watcher = Consumer({"bootstrap.servers": ctx.bootstrap, "group.id": f"bench-w-{prefix}"})
    internal = internal_topics(system, s, prefix)
    deadline = time.monotonic() + ctx.cfg.timeout
    ceiling = system == "ceiling"
    target = ctx.calibration.outputs["decisions"][0] if ceiling and ctx.calibration else ctx.posts
    first: dict[str, int] = {}  # post id (or the ceiling's record number) -> append time ms
    seqs: dict[str, list[tuple[str, str]]] = {}
    codec = Codec()
    try:
        # 1. the clock starts at the first re-keyed record
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{system} exited with {proc.returncode} (log {prefix}.log)")
            if watermarks(watcher, internal) > 0:
                t0 = time.time()
                start_sample = sampler.sample()
                threads0 = thread_cpu(proc.pid)
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{system}: nothing re-keyed in {ctx.cfg.timeout:.0f} s")
            time.sleep(0.05)
        # 2. until the decisions topic holds at least as many records as posts (cheap)
        while watermarks(watcher, [s.decisions_topic]) < target:
            if proc.poll() is not None:
                raise RuntimeError(f"{system} exited with {proc.returncode} (log {prefix}.log)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{system}: not done in {ctx.cfg.timeout:.0f} s")
            time.sleep(0.2)
        # 3. then read them until every post id has a decision
        consumer, _ = reader(ctx.bootstrap, [s.decisions_topic], eof=False)
        n = 0
        try:
            while len(first) < target:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{system}: {len(first)} of {target} posts decided")
                for msg in consumer.consume(10000, timeout=0.5):
                    if msg.error():
                        continue
                    ts = msg.timestamp()[1]
                    if ceiling:
                        n += 1
                        first[str(n)] = ts
                        continue
                    d = codec.decode(msg.value())[1]
                    pid = d["post_id"]
                    if pid not in first or ts < first[pid]:
                        first[pid] = min(ts, first.get(pid, ts))
                    seqs.setdefault(pid, []).append((d["outcome"], d["reason"]))
        finally:
            consumer.close()
        end = max(first.values()) / 1000
        threads1 = thread_cpu(proc.pid)  # read a little after the end: an upper bound
        time.sleep(0.3)  # a sample after the end for certain
    finally:
        sampler.stopping.set()
        stop(proc)
        watcher.close()
    end_sample = sampler.at(end)
    elapsed = max(end - t0, 1e-3)
    worker_cpu = end_sample[1] - start_sample[1]
    broker_cpu = end_sample[2] - start_sample[2]
    posts = ctx.posts
    figures: dict[str, Any] = {
        "system": system,
        "rep": rep,
        "prefix": prefix,
        "posts": posts,
        "seconds": elapsed,
        "posts_per_second": posts / elapsed,
        "worker_cpu_seconds": worker_cpu,
        "broker_cpu_seconds": broker_cpu,
        "worker_cpu_seconds_per_1000": worker_cpu / posts * 1000,
        "broker_cpu_seconds_per_1000": broker_cpu / posts * 1000,
        "total_cpu_seconds_per_1000": (worker_cpu + broker_cpu) / posts * 1000,
        "worker_cores": worker_cpu / elapsed,
        "broker_cores": broker_cpu / elapsed,
        "peak_rss_mb": sampler.peak_rss / 2**20,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
    }
    figures["thread_cpu_seconds_per_1000"] = {
        where: round((sec - threads0.get(where, 0.0)) / posts * 1000, 4)
        for where, sec in sorted(threads1.items(), key=lambda kv: -kv[1])
        if sec - threads0.get(where, 0.0) > 0.01 * elapsed
    }
    if ceiling:
        figures["decision_records"] = len(first)
        return figures, stats.Outputs({}, frozenset(), f"{system}#{rep}")
    figures["decision_records"] = sum(len(v) for v in seqs.values())
    training: list[tuple[bytes | None, bytes | None]] = []
    read_all(ctx.bootstrap, s.training_topic, lambda m: training.append((m.key(), m.value())))
    outputs = stats.Outputs(
        {p: stats.collapse(v) for p, v in seqs.items()},
        stats.final_keys(training),
        f"{system}#{rep}",
    )
    if rep == 0:
        figures["records_written"] = records_written(ctx, system, s, prefix)
    return figures, outputs


def records_written(ctx: Context, system: str, s: Settings, prefix: str) -> dict[str, Any]:
    """Records (and value bytes) the run wrote to each of its topics, read back."""
    known = admin(ctx.bootstrap).list_topics(timeout=10).topics
    out: dict[str, Any] = {}
    for topic in sorted(t for t in known if prefix in t):
        counts = [0, 0, 0]

        def each(msg: Any, counts: list[int] = counts) -> None:
            counts[0] += 1
            counts[1] += len(msg.value() or b"")
            counts[2] += len(msg.key() or b"")

        read_all(ctx.bootstrap, topic, each)
        out[topic] = {"records": counts[0], "value_bytes": counts[1], "key_bytes": counts[2]}
    total = sum(v["records"] for v in out.values())
    return {
        "topics": out,
        "records_per_post": total / ctx.posts,
        "records_per_input": total / ctx.inputs,
    }


def calibrate(ctx: Context, written: dict[str, Any], s_prefix: str) -> Calibration:
    """The enforcer's records by kind of topic, from ``records_written``."""
    kinds: dict[str, list[int]] = {k: [0, 0] for k in ("decisions", "training", "changelog")}
    kinds["other"] = [0, 0]
    inputs = 0
    for topic, v in written["topics"].items():
        if topic.endswith("-user-events-repartition"):
            inputs = v["records"]
            continue
        kind = (
            "decisions"
            if topic.endswith("-decisions")
            else "training"
            if topic.endswith("-training")
            else "changelog"
            if topic.endswith("-changelog")
            else "other"
        )
        kinds[kind][0] += v["records"]
        kinds[kind][1] += v["value_bytes"]
    return Calibration(
        inputs or ctx.inputs,
        {k: (c, b // c if c else 0) for k, (c, b) in kinds.items()},
    )


# -- latency ---------------------------------------------------------------------------------
def warm_broker(ctx: Context) -> dict[str, Any]:
    """Unrelated traffic through the broker (a feed and a reader of its own topic)."""
    topic = f"warm-{ctx.run}-{uuid.uuid4().hex[:4]}"
    create_topics(ctx.bootstrap, {topic: {}})
    seconds, rate = ctx.cfg.broker_warmup_seconds, ctx.cfg.broker_warmup_rate
    feeder = subprocess.Popen(
        [sys.executable, "-m", "bench.feed", ctx.bootstrap, topic, str(rate), str(seconds)],
        cwd=ROOT,
    )
    consumer, _ = reader(ctx.bootstrap, [topic], eof=False)
    got = 0
    try:
        while feeder.poll() is None:
            got += sum(1 for m in consumer.consume(1000, timeout=0.1) if not m.error())
    finally:
        consumer.close()
    return {"topic": topic, "rate": rate, "seconds": seconds, "records_read": got}


def latency_point(ctx: Context, system: str, rate: int, seconds: float) -> dict[str, Any]:
    """One latency run of ``system`` at ``rate`` posts/s for ``seconds``, on fresh topics,
    counted from the moment it is ready."""
    prefix = f"l{ctx.run}-{system}-{rate}-{uuid.uuid4().hex[:4]}"
    s = settings_for(
        ctx.bootstrap, prefix, f"{prefix}-posts", f"{prefix}-objections", receipts=True
    )
    create_topics(ctx.bootstrap, {s.posts_topic: {}, s.objections_topic: {}})
    if system.startswith("enforcer"):
        ensure_topics(s, create_inputs=False)
    else:
        create_topics(ctx.bootstrap, output_specs(s))
    proc, port = start_system(
        system, s, prefix, ctx.workdir, peer_python=ctx.peer_python, latency=True
    )
    root = psutil.Process(proc.pid)
    samples: list[tuple[int, float]] = []  # (send time us, latency ms)
    seen: set[bytes] = set()
    sent = int(rate * seconds)
    load_before = os.getloadavg()[0]
    try:
        assert port is not None
        started = time.monotonic()
        wait_ready(port, proc, 240, every=0.1, what="system", exited=" before it was ready")
        ready_seconds = time.monotonic() - started
        consumer, _ = reader(ctx.bootstrap, [s.decisions_topic], eof=False)
        cpu0 = (tree_cpu(root), proc_stat_cpu(ctx.broker_pid) if ctx.broker_pid else math.nan)
        t0 = time.monotonic()
        feeder = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.feed",
                ctx.bootstrap,
                s.posts_topic,
                str(rate),
                str(seconds),
            ],
            cwd=ROOT,
        )
        cpu1 = None
        drain_until = None
        try:
            while len(seen) < sent:
                msgs = poll_batch(consumer)
                now_ms = time.time() * 1000
                for m in msgs:
                    if m.error() or m.key() is None:
                        continue
                    key = m.key()
                    if key in seen:
                        continue
                    seen.add(key)
                    sent_us = int(key.rsplit(b"-", 1)[1])
                    samples.append((sent_us, now_ms - sent_us / 1000))
                if feeder.poll() is not None and drain_until is None:
                    cpu1 = (
                        tree_cpu(root),
                        proc_stat_cpu(ctx.broker_pid) if ctx.broker_pid else math.nan,
                    )
                    feed_seconds = time.monotonic() - t0
                    drain_until = time.monotonic() + ctx.cfg.drain_seconds
                if drain_until is not None and time.monotonic() > drain_until:
                    break
                if proc.poll() is not None:
                    raise RuntimeError(f"{system} exited with {proc.returncode}")
        finally:
            if feeder.poll() is None:
                feeder.kill()
            consumer.close()
    finally:
        stop(proc)
    if cpu1 is None:
        cpu1 = (tree_cpu(root), math.nan)
        feed_seconds = time.monotonic() - t0
    out: dict[str, Any] = {
        "system": system,
        "rate": rate,
        "seconds": seconds,
        "ready_seconds": ready_seconds,
        **stats.latency_figures([lat for _, lat in samples], sent),
        "worker_cores": (cpu1[0] - cpu0[0]) / feed_seconds,
        "broker_cores": (cpu1[1] - cpu0[1]) / feed_seconds,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
    }
    if samples:
        first = min(t for t, _ in samples)
        per: dict[int, list[float]] = {}
        for t, lat in samples:
            per.setdefault(int((t - first) // 1_000_000), []).append(lat)
        out["per_second"] = [
            {
                "second": sec,
                "samples": len(v),
                "p50_ms": stats.quantile(sorted(v), 0.5),
                "p99_ms": stats.quantile(sorted(v), 0.99),
            }
            for sec, v in sorted(per.items())
        ]
        ordered = sorted(lat for _, lat in samples)
        out["distribution_ms"] = ordered[:: max(1, len(ordered) // 1000)]
    return out


def latency_system(ctx: Context, system: str) -> dict[str, Any]:
    """The fixed rates, then the search for the highest rate with p99 under 100 ms."""
    points: list[dict[str, Any]] = []

    def point(rate: int, seconds: float) -> dict[str, Any]:
        try:
            return latency_point(ctx, system, rate, seconds)
        except Exception as exc:  # a start can time out on a loaded machine: once more
            say(f"  FAILED: {exc}; once more")
            return {**latency_point(ctx, system, rate, seconds), "retried_after": str(exc)}

    for rate in ctx.cfg.latency_rates:
        say(f"latency: {system} at {rate:,} posts/s for {ctx.cfg.latency_seconds:.0f} s")
        points.append(point(rate, ctx.cfg.latency_seconds))
        say(
            f"  p50/p99/p99.9 {points[-1]['p50_ms']:.0f}/{points[-1]['p99_ms']:.0f}/"
            f"{points[-1]['p999_ms']:.0f} ms"
        )
    for _ in range(ctx.cfg.search_steps):
        p99 = {p["rate"]: p["p99_ms"] for p in points}
        rate = stats.next_rate(p99)
        if rate is None or rate in p99:
            break
        say(f"latency search: {system} at {rate:,} posts/s for {ctx.cfg.search_seconds:.0f} s")
        points.append(point(rate, ctx.cfg.search_seconds))
        say(f"  p99 {points[-1]['p99_ms']:.0f} ms")
    p99 = {p["rate"]: p["p99_ms"] for p in points}
    return {"points": points, "search": stats.highest_passing(p99)}


# -- the matrix --------------------------------------------------------------------------------
def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "uncommitted_in_measured_code": git("status", "--porcelain", "--", "streams", "bench"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--bootstrap-servers", default=None, help="an existing broker")
    parser.add_argument("--peer-python", default=str(PEER_PYTHON))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--posts", type=int, default=None)
    parser.add_argument("--users", type=int, default=None)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument(
        "--systems", default=None, help=f"comma list of {','.join(SYSTEMS + OPTIONAL_SYSTEMS)}"
    )
    parser.add_argument("--latency-systems", default=None)
    parser.add_argument("--latency-rates", default=None, help="comma list of posts/s")
    parser.add_argument("--latency-seconds", type=float, default=None)
    parser.add_argument("--search-steps", type=int, default=None)
    parser.add_argument("--skip", default="", help="comma list of: throughput,latency")
    args = parser.parse_args(argv)
    # SIGTERM unwinds (the broker and systems started are stopped) as Ctrl-C does
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cfg = dataclasses.replace(QUICK) if args.quick else Config()
    for name in ("posts", "users", "reps", "latency_seconds", "search_steps"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.systems:
        cfg.systems = tuple(args.systems.split(","))
    if args.latency_systems is not None:
        cfg.latency_systems = tuple(filter(None, args.latency_systems.split(",")))
    if args.latency_rates:
        cfg.latency_rates = tuple(int(r) for r in args.latency_rates.split(","))
    unknown = (set(cfg.systems) | set(cfg.latency_systems)) - set(SYSTEMS + OPTIONAL_SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {sorted(unknown)}")
    if "ceiling" in cfg.systems and cfg.systems[0] != "enforcer":
        parser.error("the enforcer must come first (the ceiling copies its first run's records)")
    skip = set(filter(None, args.skip.split(",")))
    peer_python = Path(args.peer_python)
    if any(s.startswith("streams") for s in (*cfg.systems, *cfg.latency_systems)):
        say("building the Kafka Streams peer (once per source change)")
        peer_streams.build()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    workdir = Path(tempfile.mkdtemp(prefix="enforcer-matrix-"))
    started = time.monotonic()
    result: dict[str, Any] = {
        "kind": "matrix",
        "started": stamp,
        "git": git_state(),
        "config": dataclasses.asdict(cfg),
        "systems": {s: DESCRIBE[s] for s in dict.fromkeys((*cfg.systems, *cfg.latency_systems))},
        "machine": machine(),
        "runs": [],
        "latency": {},
    }
    comparison = stats.Comparison()
    failed: list[str] = []
    with broker(args.bootstrap_servers, workdir) as (bootstrap, kafka, broker_pid):
        run = uuid.uuid4().hex[:6]
        posts_topic, objections_topic = f"m{run}-posts", f"m{run}-objections"
        create_topics(bootstrap, {posts_topic: {}, objections_topic: {}})
        base = settings_for(bootstrap, f"m{run}-data", posts_topic, objections_topic, receipts=True)
        say(f"producing {cfg.posts:,} posts for {cfg.users:,} users on {bootstrap}")
        data = produce_data(bootstrap, base, cfg)  # type: ignore[arg-type]
        result["data"] = data
        ctx = Context(
            cfg,
            bootstrap,
            broker_pid,
            workdir,
            run,
            posts_topic,
            objections_topic,
            posts=data.get("post", 0),
            inputs=sum(data.values()),
            peer_python=peer_python,
        )
        if "throughput" not in skip:
            say(
                f"warming the broker: {cfg.broker_warmup_rate:,}/s for "
                f"{cfg.broker_warmup_seconds:.0f} s on a topic of its own"
            )
            result["broker_warmup_throughput"] = warm_broker(ctx)
            for rep, system in stats.order(cfg.systems, cfg.reps):
                say(f"throughput: {system}, repetition {rep + 1} of {cfg.reps}")
                try:
                    figures, outputs = throughput_run(ctx, system, rep)
                except Exception as exc:
                    # recorded; tried once more (a start can time out on a loaded machine)
                    result.setdefault("retried", []).append(f"{system}#{rep}: {exc}")
                    say(f"  FAILED: {exc}; once more")
                    try:
                        figures, outputs = throughput_run(ctx, system, rep, attempt=2)
                    except Exception as again:
                        failed.append(f"{system}#{rep} (second attempt): {again}")
                        say(f"  FAILED again: {again}")
                        continue
                result["runs"].append(figures)
                say(
                    f"  {figures['posts_per_second']:,.0f} posts/s, worker "
                    f"{figures['worker_cpu_seconds_per_1000']:.3f} and broker "
                    f"{figures['broker_cpu_seconds_per_1000']:.3f} CPU-s per 1,000 posts, "
                    f"{figures['peak_rss_mb']:.0f} MB"
                )
                if system.startswith("enforcer") and ctx.calibration is None:
                    ctx.calibration = calibrate(ctx, figures["records_written"], figures["prefix"])
                    result["ceiling_calibration"] = dataclasses.asdict(ctx.calibration)
                if system != "ceiling":
                    for diff in comparison.add(outputs):
                        say(f"  DIFFERENCE: {diff}")
            result["equal_outputs"] = comparison.as_dict()
            result["summary"] = stats.summary(result["runs"])
            result["ratios"] = stats.ratios(result["summary"])
        if "latency" not in skip and cfg.latency_systems:
            say(
                f"warming the broker: {cfg.broker_warmup_rate:,}/s for "
                f"{cfg.broker_warmup_seconds:.0f} s on a topic of its own"
            )
            result["broker_warmup"] = warm_broker(ctx)
            for system in cfg.latency_systems:
                try:
                    result["latency"][system] = latency_system(ctx, system)
                except Exception as exc:
                    failed.append(f"latency {system}: {exc}")
                    say(f"  FAILED: {exc}")
        result["versions"] = versions(str(peer_python), kafka)
    result["failures"] = failed
    result["wall_seconds"] = time.monotonic() - started
    path = out / f"matrix-{stamp}.json"
    path.write_text(json.dumps(result, indent=1, default=_json_default))
    say(f"wrote {path} in {result['wall_seconds']:.0f} s")
    with contextlib.suppress(Exception):
        from bench import report

        report.chart(result, path.with_suffix(".png"))
        print(report.table(result, path.name))
    import shutil

    shutil.rmtree(workdir, ignore_errors=True)
    if comparison.differences:
        say(f"OUTPUTS DIFFER ({len(comparison.differences)}): the run fails")
        for diff in comparison.differences:
            print(f"difference: {diff}", file=sys.stderr)
        return 1
    if failed:
        say(f"{len(failed)} runs failed: {failed}")
        return 1
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, frozenset | set | tuple):
        return list(value)
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
