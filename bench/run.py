"""The benchmark: throughput, end-to-end latency and memory of the enforcer, side by
side with the client ceiling and a Quix Streams peer, on one broker and one data set.

    python -m bench.run [--quick] [--peer-python .venv-peer/bin/python]

Writes ``bench/results/<timestamp>.json`` (every figure, versions, machine) and a PNG
chart beside it. Ratios (enforcer / ceiling, enforcer / peer) are the headline.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import psutil
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition

from streams.kafka.topics import ensure_topics
from streams.serde.codec import Codec
from streams.settings import Settings
from streams.traffic.generator import TrafficGenerator
from streams.traffic.produce import produce_records, traffic_producer

ROOT = Path(__file__).resolve().parent.parent
LOCAL_KAFKA = ROOT / "deploy" / "kafka" / "local-kafka"
PARTITIONS = 8


@dataclasses.dataclass
class Config:
    """Sizes of one benchmark run."""

    posts: int = 500_000
    users: int = 100_000
    objector_share: float = 0.1
    latency_rates: tuple[int, ...] = (2000, 10000)
    latency_seconds: float = 20.0
    # traffic sent but not counted: the first latency run also warms a fresh broker (its
    # JIT compiler is busy for about 30 s), later runs only the enforcer they start
    broker_warmup_seconds: float = 40.0
    warmup_seconds: float = 5.0
    memory_users: int = 1_000_000


QUICK = Config(
    posts=3000,
    users=1000,
    latency_rates=(500,),
    latency_seconds=3.0,
    broker_warmup_seconds=1.0,
    warmup_seconds=1.0,
    memory_users=5000,
)


def say(text: str) -> None:
    """Progress on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A free TCP port on loopback."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def broker(explicit: str | None, workdir: Path) -> Iterator[tuple[str, str, int | None]]:
    """The broker to measure on: the given one, or a fresh local one; (bootstrap
    servers, version, pid when it is local)."""
    if explicit:
        yield explicit, "external", None
        return
    port = free_port()
    args = ["--port", str(port), "--dir", str(workdir / "kafka")]
    result = subprocess.run(
        [str(LOCAL_KAFKA), "start", *args], capture_output=True, text=True, timeout=600, check=True
    )
    version = subprocess.run([str(LOCAL_KAFKA), "version"], capture_output=True, text=True)
    try:
        pid = int((workdir / "kafka" / "broker.pid").read_text().strip())
        yield result.stdout.strip().splitlines()[-1], f"Apache Kafka {version.stdout.strip()}", pid
    finally:
        subprocess.run([str(LOCAL_KAFKA), "stop", *args], capture_output=True, timeout=120)


def settings_for(
    bootstrap: str, prefix: str, posts: str, objections: str, *, receipts: bool = False
) -> Settings:
    """Enforcer settings on the shared input topics, with outputs of its own (with
    ``receipts``, the receipts topic too)."""
    own = {"receipts_topic": f"{prefix}-receipts"} if receipts else {}
    return Settings(
        bootstrap_servers=bootstrap,
        app_id=f"{prefix}-app",
        partitions=PARTITIONS,
        posts_topic=posts,
        objections_topic=objections,
        training_topic=f"{prefix}-training",
        retractions_topic=f"{prefix}-retractions",
        decisions_topic=f"{prefix}-decisions",
        dlq_topic=f"{prefix}-dlq",
        **own,
    )


def topic_flags(s: Settings) -> list[str]:
    """Command-line flags naming the settings' topics."""
    return [
        "--app-id",
        s.app_id,
        "--posts-topic",
        s.posts_topic,
        "--objections-topic",
        s.objections_topic,
        "--training-topic",
        s.training_topic,
        "--retractions-topic",
        s.retractions_topic,
        "--decisions-topic",
        s.decisions_topic,
        "--dlq-topic",
        s.dlq_topic,
    ]


def high_watermarks(consumer: Consumer, topic: str) -> int:
    """How many records a topic holds (sum of partition end offsets); -1 while the
    broker cannot tell yet (a new topic's leaders are still being elected)."""
    try:
        md = consumer.list_topics(topic, timeout=10).topics[topic]
        return _sum_ends(consumer, topic, md.partitions)
    except KafkaException:
        return -1


def _sum_ends(consumer: Consumer, topic: str, partitions: Iterable[int]) -> int:
    return sum(
        consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions
    )


def cpu_seconds(procs: list[psutil.Process]) -> float:
    """CPU seconds (user + system) of these processes so far (gone ones count 0)."""
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


class Sampler(threading.Thread):
    """Samples a process tree's CPU seconds and RSS."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak_rss = 0
        self.stop_event = threading.Event()

    def cpu(self) -> float:
        """CPU seconds (user + system) of the process and its children so far."""
        return cpu_seconds([self.proc, *self.proc.children(recursive=True)])

    def rss(self) -> int:
        """Current resident set size in bytes."""
        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def run(self) -> None:
        while not self.stop_event.wait(0.25):
            with contextlib.suppress(psutil.Error):
                self.peak_rss = max(self.peak_rss, self.rss())


def wait_ready(
    port: int,
    proc: subprocess.Popen,
    timeout: float = 120,
    *,
    every: float = 0.2,
    what: str = "worker",
    exited: str = "",
) -> None:
    """Poll ``GET /ready`` every ``every`` s until 200; an error naming ``what`` if
    ``proc`` exits first (``exited`` appended to that message) or after ``timeout`` s."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}{exited}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r,
        ):
            if r.status == 200:
                return
        time.sleep(every)
    raise RuntimeError(f"{what} not ready")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def worker_command(
    s: Settings,
    data_dir: Path,
    port: int,
    *,
    receipts: bool = False,
    partitions: int = PARTITIONS,
    extra: Sequence[str] = (),
    log_level: str = "warn",
) -> list[str]:
    """The command line of an ``enforcer worker`` on ``s``'s topics (with ``receipts``,
    its receipts topic too); ``extra`` flags go before ``--log-level``."""
    return [
        sys.executable,
        "-m",
        "streams",
        "worker",
        "--bootstrap-servers",
        s.bootstrap_servers,
        *topic_flags(s),
        *(["--receipts-topic", s.receipts_topic] if receipts else []),
        "--partitions",
        str(partitions),
        "--data-dir",
        str(data_dir),
        "--web-port",
        str(port),
        *extra,
        "--log-level",
        log_level,
    ]


def start_enforcer(
    s: Settings, workdir: Path, name: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, int]:
    """An ``enforcer worker`` subprocess (``env``: variables set on top of ours)."""
    port = free_port()
    log = open(workdir / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        worker_command(s, workdir / f"{name}-state", port),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env={**os.environ, **env} if env else None,
    )
    return proc, port


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of every thread of a process tree, by where it runs: the
    process's main thread is ``main``, its other threads go by their names, and those
    of a child process by the child's name (e.g. ``enforcer-rekey/main``)."""
    ticks = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error, OSError):
                prefix = "" if proc.pid == pid else f"{proc.name()}/"
                for task in Path(f"/proc/{proc.pid}/task").iterdir():
                    with contextlib.suppress(OSError):
                        stat = (task / "stat").read_text()
                        name = stat[stat.index("(") + 1 : stat.rindex(")")]
                        fields = stat[stat.rindex(")") + 2 :].split()
                        seconds = (int(fields[11]) + int(fields[12])) / ticks
                        where = prefix + ("main" if task.name == str(proc.pid) else name)
                        totals[where] = totals.get(where, 0.0) + seconds
    return totals


def measure_throughput(
    proc: subprocess.Popen,
    bootstrap: str,
    decisions_topic: str,
    expected: int,
    timeout: float,
    internal_prefixes: tuple[str, ...],
    broker_pid: int | None = None,
) -> dict[str, float]:
    """Posts decided per second, CPU per 1,000 posts and peak RSS, and where the CPU
    went over the same window: cores used by the process tree, by the process's main
    thread (``main_thread_busy``: the share of the wall time it was on a CPU, 1.0 for a
    thread that is the limit and never waits) and by the broker when it is local.

    The clock starts at the first record the system writes anywhere (its internal
    re-keying topic, named by ``internal_prefixes``, or an output) and stops at the last
    decision: a pipeline that re-keys everything before deciding is not flattered."""
    sampler = Sampler(proc.pid)
    sampler.start()
    # read_committed: with fencing (transactions) the end offset is the last stable one, so
    # that the clock stops at the last decision committed, not merely written
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4()}",
            "isolation.level": "read_committed",
        }
    )
    broker_procs = [psutil.Process(broker_pid)] if broker_pid else []
    first_at = cpu_first = broker_first = None
    threads_first: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode}")
            done = high_watermarks(consumer, decisions_topic)
            now = time.monotonic()
            if first_at is None:
                started = done > 0 or any(
                    high_watermarks(consumer, t) > 0
                    for t in consumer.list_topics(timeout=10).topics
                    if t.startswith(internal_prefixes)
                )
                if started:
                    first_at, cpu_first = now, sampler.cpu()
                    threads_first = thread_cpu(proc.pid)
                    broker_first = cpu_seconds(broker_procs)
            if done >= expected:
                break
            if now > deadline:
                raise RuntimeError(f"only {done} of {expected} decisions in {timeout:.0f}s")
            time.sleep(0.1)
        elapsed = max(now - first_at, 1e-6)
        cpu = sampler.cpu() - cpu_first
        threads = thread_cpu(proc.pid)
        main = threads.get("main", 0.0) - threads_first.get("main", 0.0)
        figures = {
            "records": done,
            "seconds": elapsed,
            "per_second": done / elapsed,
            "cpu_seconds_per_1000": cpu / done * 1000,
            "peak_rss_mb": max(sampler.peak_rss, sampler.rss()) / 2**20,
            "cores": cpu / elapsed,
            "main_thread_cpu_seconds_per_1000": main / done * 1000,
            "main_thread_busy": main / elapsed,
        }
        figures["thread_cores"] = {
            where: round((seconds - threads_first.get(where, 0.0)) / elapsed, 3)
            for where, seconds in sorted(threads.items(), key=lambda kv: -kv[1])
            if seconds - threads_first.get(where, 0.0) > 0.01 * elapsed
        }
        if broker_procs:
            figures["broker_cores"] = (cpu_seconds(broker_procs) - broker_first) / elapsed
        return figures
    finally:
        sampler.stop_event.set()
        consumer.close()


def produce_data(bootstrap: str, s: Settings, cfg: Config) -> dict[str, int]:
    """The shared data set: one OBJECT per objector first, then the posts."""
    gen = TrafficGenerator(
        cfg.users, seed=2026, objector_share=cfg.objector_share, objection_rate=0.0
    )
    producer = traffic_producer(s)
    counts = produce_records(producer, s, gen.objections_for_all_objectors())
    counts += produce_records(producer, s, gen.records(cfg.posts))
    producer.flush(300)
    return dict(counts)


def _quantile(values: list[float], p: float) -> float:
    """The ``p`` quantile of sorted ``values`` (0 when empty)."""
    return values[min(len(values) - 1, int(p * len(values)))] if values else 0.0


def poll_batch(consumer: Consumer, timeout: float = 0.05) -> list[Message]:
    """What ``consumer`` has now: poll for the first record, then drain. consume(n,
    timeout) would wait for n records or the timeout, adding up to the timeout to every
    measured latency."""
    first = consumer.poll(timeout)
    return [first, *consumer.consume(1000, timeout=0)] if first is not None else []


def latency_run(
    bootstrap: str,
    workdir: Path,
    rate: int,
    seconds: float,
    warmup: float,
    broker_pid: int | None,
    env: dict[str, str] | None = None,
) -> dict[str, object]:
    """End-to-end latency at a fixed rate: a post's creation (its send time) to its
    training-ingest record being readable, and the first hop (to the re-keyed internal
    record being readable) on its own.

    The first ``warmup`` seconds of traffic are sent and reported separately, not
    counted: a freshly started broker spends its first half-minute compiling (1.1-1.3
    cores instead of 0.7 at this load), and the figure sought is the steady state.
    CPU of each process over the counted window is reported beside it."""
    prefix = f"lat{rate}-{uuid.uuid4().hex[:6]}"
    s = settings_for(bootstrap, prefix, f"{prefix}-posts", f"{prefix}-objections")
    ensure_topics(s, create_inputs=True)
    proc, port = start_enforcer(s, workdir, prefix, env)
    e2e: list[tuple[float, float]] = []  # (created ms, latency ms)
    hop: list[tuple[float, float]] = []
    cpu: dict[str, float] = {}
    try:
        wait_ready(port, proc)
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"{prefix}-reader",
                "fetch.wait.max.ms": 5,
                # a decision counts once a downstream reader can see it (transactions)
                "isolation.level": "read_committed",
            }
        )
        # assigned, not subscribed: a group join would make the first seconds of records
        # wait for the reader, and count that wait as the enforcer's latency
        consumer.assign(
            [
                TopicPartition(topic, p, OFFSET_BEGINNING)
                for topic in (s.training_topic, s.user_events_topic)
                for p in range(PARTITIONS)
            ]
        )
        codec = Codec()
        feed_args = [bootstrap, s.posts_topic, str(rate), str(seconds + warmup)]
        feeder = subprocess.Popen([sys.executable, "-m", "bench.feed", *feed_args], cwd=ROOT)
        worker = psutil.Process(proc.pid)
        parts = {
            "enforcer": lambda: [worker, *worker.children(recursive=True)],
            "load_generator": lambda: [psutil.Process(feeder.pid)],
        }
        if broker_pid:
            parts["broker"] = lambda: [psutil.Process(broker_pid)]
        window_start = time.monotonic() + warmup
        cpu_at_start: dict[str, float] | None = None
        window_started = 0.0
        quiet_until = None
        while True:
            msgs = poll_batch(consumer)
            now_ms = time.time() * 1000
            for m in msgs:
                if m.error() or m.value() is None:
                    continue
                created = codec.decode(m.value())[1]["created_at"]
                into = hop if m.topic() == s.user_events_topic else e2e
                into.append((created, now_ms - created))
            if cpu_at_start is None and time.monotonic() >= window_start:
                cpu_at_start = {k: cpu_seconds(f()) for k, f in parts.items()}
                window_started = time.monotonic()
            if feeder.poll() is not None:
                if cpu_at_start is not None and not cpu:
                    elapsed = max(time.monotonic() - window_started, 1e-3)
                    cpu = {
                        k: round((cpu_seconds(f()) - cpu_at_start[k]) / elapsed, 3)
                        for k, f in parts.items()
                        if k != "load_generator"  # it has exited: its CPU is gone
                    }
                quiet_until = quiet_until or time.monotonic() + 3
                if time.monotonic() > quiet_until:
                    break
        consumer.close()
    finally:
        stop(proc)
    first_created = min((c for c, _ in e2e), default=0.0)
    count_from = first_created + warmup * 1000
    counted = sorted(lat for c, lat in e2e if c >= count_from)
    warm = sorted(lat for c, lat in e2e if c < count_from)
    first_hop = sorted(lat for c, lat in hop if c >= count_from)
    timeline: dict[int, list[float]] = {}
    for c, lat in e2e:
        timeline.setdefault(int((c - first_created) // 1000), []).append(lat)
    return {
        "rate": rate,
        "seconds": seconds,
        "warmup_seconds": warmup,
        "samples": len(counted),
        "p50_ms": _quantile(counted, 0.5),
        "p99_ms": _quantile(counted, 0.99),
        "p999_ms": _quantile(counted, 0.999),
        "max_ms": counted[-1] if counted else 0,
        "first_hop_ms": {
            "what": "post sent -> its re-keyed internal record readable",
            "p50": _quantile(first_hop, 0.5),
            "p99": _quantile(first_hop, 0.99),
        },
        "warmup_ms": {
            "samples": len(warm),
            "p50": _quantile(warm, 0.5),
            "p99": _quantile(warm, 0.99),
        },
        "cpu_cores": cpu,
        "per_second": [
            {
                "second": sec,
                "samples": len(v),
                "p50_ms": _quantile(sorted(v), 0.5),
                "p99_ms": _quantile(sorted(v), 0.99),
            }
            for sec, v in sorted(timeline.items())
        ],
        "distribution_ms": counted[:: max(1, len(counted) // 2000)],
    }


def memory_run(bootstrap: str, workdir: Path, users: int) -> dict[str, float]:
    """RSS of a worker holding consent state for ``users`` users."""
    prefix = f"mem-{uuid.uuid4().hex[:6]}"
    s = settings_for(bootstrap, prefix, f"{prefix}-posts", f"{prefix}-objections")
    ensure_topics(s, create_inputs=True)
    gen = TrafficGenerator(users, seed=7, objector_share=1.0, objection_rate=0.0)
    producer = traffic_producer(s)
    produce_records(producer, s, gen.objections_for_all_objectors())
    producer.flush(300)
    proc, port = start_enforcer(s, workdir, prefix)
    try:
        sampler = Sampler(proc.pid)
        sampler.start()
        wait_ready(port, proc)
        import urllib.request

        started = time.monotonic()
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            applied = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("enforcer_objection_events_total{")
            )
            if applied >= users:
                break
            if proc.poll() is not None or time.monotonic() - started > 1800:
                raise RuntimeError(f"only {applied} of {users} objections applied")
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        rss = sampler.rss()
        sampler.stop_event.set()
        state_bytes = sum(
            f.stat().st_size for f in (workdir / f"{prefix}-state").rglob("*") if f.is_file()
        )
        return {
            "users": users,
            "rss_mb": rss / 2**20,
            "peak_rss_mb": max(sampler.peak_rss, rss) / 2**20,
            "objections_per_second": users / elapsed,
            "rocksdb_mb": state_bytes / 2**20,
        }
    finally:
        stop(proc)


def versions(peer_python: str | None, kafka: str) -> dict[str, str]:
    """Versions of everything measured."""
    from importlib.metadata import version

    from streams.gate import native

    out = {"python": platform.python_version(), "kafka": kafka}
    # whether the worker decides posts in C (streams/gate/_native.c) or all in Python
    out["native_fast_path"] = "on" if native.available() else "off"
    for dist in ("faust-streaming", "aiokafka", "confluent-kafka", "fastavro", "rocksdict"):
        out[dist] = version(dist)
    if peer_python:
        with contextlib.suppress(Exception):
            out["quixstreams"] = subprocess.run(
                [peer_python, "-c", "import quixstreams; print(quixstreams.__version__)"],
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout.strip()
    return out


def machine() -> dict[str, object]:
    """The machine the figures come from."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
    }


def chart(result: dict, path: Path) -> None:
    """Throughput side by side, and latency distributions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [n for n in ("ceiling", "enforcer", "peer") if result["throughput"].get(n)]
    values = [result["throughput"][n]["per_second"] for n in names]
    bars = left.bar(names, values, color=["#999999", "#1f77b4", "#ff7f0e"][: len(names)])
    left.bar_label(bars, labels=[f"{v:,.0f}/s" for v in values])
    left.set_title(f"throughput, {result['config']['posts']:,} posts")
    left.set_ylabel("records per second")
    for run in result["latency"]:
        data = run["distribution_ms"]
        if data:
            ys = [i / len(data) for i in range(len(data))]
            right.plot(data, ys, label=f"{run['rate']:,} posts/s (p99 {run['p99_ms']:.0f} ms)")
    right.set_xscale("log")
    right.set_xlabel("end-to-end latency, ms (log)")
    right.set_ylabel("fraction of posts")
    right.set_title("latency, post produced -> training-ingest readable")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def capacity(enforcer: dict[str, float], ceiling: dict[str, float]) -> dict[str, float]:
    """What 25% of the ceiling would take at the CPU per post measured: the cores of the
    enforcer's processes, and of its main thread (above 1.0, one thread cannot do it)."""
    quarter = 0.25 * ceiling["per_second"]
    return {
        "quarter_of_ceiling_per_second": quarter,
        "enforcer_cpu_per_post_over_ceiling_cpu_per_record": enforcer["cpu_seconds_per_1000"]
        / max(ceiling["cpu_seconds_per_1000"], 1e-9),
        "enforcer_cores_needed": quarter * enforcer["cpu_seconds_per_1000"] / 1000,
        "main_thread_cores_needed": quarter * enforcer["main_thread_cpu_seconds_per_1000"] / 1000,
    }


def main(argv: list[str] | None = None) -> int:
    """Run every measurement and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--bootstrap-servers", default=None, help="use this broker")
    parser.add_argument("--peer-python", default=None, help="python of the Quix Streams peer")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--posts", type=int, default=None)
    parser.add_argument("--skip", default="", help="comma list of: ceiling,peer,latency,memory")
    args = parser.parse_args(argv)
    cfg = dataclasses.replace(QUICK) if args.quick else Config()
    if args.posts:
        cfg.posts = args.posts
    skip = set(filter(None, args.skip.split(",")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="enforcer-bench-"))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    result: dict = {
        "started": stamp,
        "config": dataclasses.asdict(cfg),
        "machine": machine(),
        "throughput": {},
        "latency": [],
    }
    with broker(args.bootstrap_servers, workdir) as (bootstrap, kafka, broker_pid):
        run = uuid.uuid4().hex[:6]
        posts_topic, objections_topic = f"bench-{run}-posts", f"bench-{run}-objections"
        enforcer = settings_for(bootstrap, f"bench-{run}-enf", posts_topic, objections_topic)
        ensure_topics(enforcer, create_inputs=True)
        say(f"producing {cfg.posts:,} posts for {cfg.users:,} users on {bootstrap}")
        t0 = time.monotonic()
        result["data"] = produce_data(bootstrap, enforcer, cfg)
        result["data"]["produce_seconds"] = time.monotonic() - t0
        expected = cfg.posts

        # Latency first, on a quiet broker: the figure is then the enforcer's at that rate,
        # not that of a broker still busy with the throughput runs' millions of records.
        if "latency" not in skip:
            for i, rate in enumerate(cfg.latency_rates):
                warmup = cfg.broker_warmup_seconds if i == 0 else cfg.warmup_seconds
                say(f"latency at {rate:,} posts/s for {cfg.latency_seconds:.0f}s (+{warmup:.0f}s)")
                result["latency"].append(
                    latency_run(bootstrap, workdir, rate, cfg.latency_seconds, warmup, broker_pid)
                )

        if "ceiling" not in skip:
            say("ceiling: confluent-kafka copy loop")
            target = f"bench-{run}-ceiling-out"
            ensure_topics(dataclasses.replace(enforcer, training_topic=target), create_inputs=True)
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.ceiling",
                    "--bootstrap-servers",
                    bootstrap,
                    "--source",
                    posts_topic,
                    "--target",
                    target,
                    "--count",
                    str(cfg.posts),
                ],
                capture_output=True,
                text=True,
                timeout=1800,
                cwd=ROOT,
            )
            if done.returncode != 0:
                raise RuntimeError(f"ceiling failed: {done.stderr[-2000:]}")
            result["throughput"]["ceiling"] = json.loads(done.stdout.strip().splitlines()[-1])

        say("enforcer: one worker process")
        proc, _ = start_enforcer(enforcer, workdir, "enforcer")
        try:
            result["throughput"]["enforcer"] = measure_throughput(
                proc,
                bootstrap,
                enforcer.decisions_topic,
                expected,
                1800,
                (f"{enforcer.app_id}-",),
                broker_pid,
            )
        finally:
            stop(proc)

        if "peer" not in skip and args.peer_python:
            say("peer: Quix Streams")
            peer = settings_for(bootstrap, f"bench-{run}-peer", posts_topic, objections_topic)
            ensure_topics(peer, create_inputs=True)
            log = open(workdir / "peer.log", "ab")  # noqa: SIM115
            proc = subprocess.Popen(
                [
                    args.peer_python,
                    "-m",
                    "bench.peer_quix",
                    "--bootstrap-servers",
                    bootstrap,
                    *topic_flags(peer),
                    "--state-dir",
                    str(workdir / "peer-state"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
            try:
                result["throughput"]["peer"] = measure_throughput(
                    proc,
                    bootstrap,
                    peer.decisions_topic,
                    expected,
                    1800,
                    (f"repartition__{peer.app_id}", f"changelog__{peer.app_id}"),
                    broker_pid,
                )
            finally:
                stop(proc)

        if "memory" not in skip:
            say(f"memory: consent state of {cfg.memory_users:,} users")
            result["memory"] = memory_run(bootstrap, workdir, cfg.memory_users)
        result["versions"] = versions(args.peer_python, kafka)

    tp = result["throughput"]
    ratios = {}
    if tp.get("ceiling") and tp.get("enforcer"):
        ratios["enforcer_over_ceiling"] = tp["enforcer"]["per_second"] / tp["ceiling"]["per_second"]
    if tp.get("peer") and tp.get("enforcer"):
        ratios["enforcer_over_peer"] = tp["enforcer"]["per_second"] / tp["peer"]["per_second"]
    result["ratios"] = ratios
    if tp.get("ceiling") and tp.get("enforcer"):
        result["capacity"] = capacity(tp["enforcer"], tp["ceiling"])
    result["targets"] = {
        "throughput_at_least_peer": ratios.get("enforcer_over_peer", 0) >= 1.0
        if "enforcer_over_peer" in ratios
        else None,
        "throughput_at_least_quarter_of_ceiling": ratios.get("enforcer_over_ceiling", 0) >= 0.25
        if "enforcer_over_ceiling" in ratios
        else None,
        "p99_under_100ms_at_2000": next(
            (r["p99_ms"] < 100 for r in result["latency"] if r["rate"] == 2000), None
        ),
        "rss_under_1gb_with_1m_users": (
            result["memory"]["peak_rss_mb"] < 1024
            if result.get("memory") and result["memory"]["users"] >= 1_000_000
            else None
        ),
    }
    result["wall_seconds"] = time.monotonic() - started
    json_path = out / f"{stamp}.json"
    json_path.write_text(json.dumps(result, indent=2))
    chart(result, out / f"{stamp}.png")
    headline = {k: round(v, 3) for k, v in ratios.items()}
    say(f"wrote {json_path} and {stamp}.png in {result['wall_seconds']:.0f}s")
    summary = {name: round(v["per_second"]) for name, v in tp.items()}
    print(
        json.dumps(
            {
                "throughput_per_second": summary,
                "ratios": headline,
                "capacity": {k: round(v, 3) for k, v in result.get("capacity", {}).items()},
                "latency_p99_ms": {r["rate"]: round(r["p99_ms"], 1) for r in result["latency"]},
                "memory": result.get("memory"),
                "targets": result["targets"],
                "json": str(json_path),
            },
            indent=2,
        )
    )
    import shutil

    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
