"""``enforcer demo``: a local broker, the topics, a worker and synthetic traffic, with a
live terminal view; ends after ``--duration`` or on Ctrl-C, leaving no process behind."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from streams.settings import Settings, SettingsError

ROOT = Path(__file__).resolve().parents[2]
LOCAL_KAFKA = ROOT / "deploy" / "kafka" / "local-kafka"
REASONS = ("NOT_PUBLIC", "MINOR", "COUNTRY_EXCLUDED", "PLATFORM_EXCLUDED", "OBJECTED")
_SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$", re.M)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def scrape(port: int) -> dict[str, float]:
    """The worker's /metrics as ``name{labels}`` -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    return {f"{m.group(1)}{m.group(2) or ''}": float(m.group(3)) for m in _SAMPLE.finditer(text)}


def quantile(metrics: dict[str, float], q: float) -> float | None:
    """A quantile (seconds) of the decision-latency histogram, interpolated in its bucket."""
    prefix = "enforcer_decision_latency_seconds_bucket"
    buckets = sorted(
        (float(k.split('le="')[1].rstrip('"}')), v)
        for k, v in metrics.items()
        if k.startswith(prefix) and "+Inf" not in k
    )
    total = metrics.get("enforcer_decision_latency_seconds_count", 0.0)
    if not total:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            inside = cumulative - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, cumulative
    return buckets[-1][0] if buckets else None


@dataclasses.dataclass
class View:
    """Renders the live view and the summary from successive metric scrapes."""

    started: float
    duration: float
    bootstrap: str
    last: dict[str, float] = dataclasses.field(default_factory=dict)
    last_at: float = 0.0

    def render(self, metrics: dict[str, float], final: bool = False) -> str:
        now = time.monotonic()
        posts = metrics.get('enforcer_inputs_total{kind="post"}', 0.0)
        prev = self.last.get('enforcer_inputs_total{kind="post"}', 0.0)
        rate = (posts - prev) / (now - self.last_at) if self.last_at and now > self.last_at else 0
        self.last, self.last_at = metrics, now

        def decisions(outcome: str, reason: str) -> int:
            key = f'enforcer_decisions_total{{outcome="{outcome}",reason="{reason}"}}'
            return int(metrics.get(key, 0))

        blocked = {r: decisions("BLOCKED", r) for r in REASONS}
        objections = int(metrics.get('enforcer_inputs_total{kind="objection"}', 0))
        dlq = int(sum(v for k, v in metrics.items() if k.startswith("enforcer_dlq_total")))
        p50, p99 = quantile(metrics, 0.5), quantile(metrics, 0.99)
        elapsed = now - self.started
        header = (
            ("summary" if final else "objection enforcer demo")
            + f" - {elapsed:.0f}s"
            + (f" of {self.duration:.0f}s" if self.duration and not final else "")
            + f" - broker {self.bootstrap}"
        )
        lat = (
            f"p50 {p50 * 1000:.1f} ms  p99 {p99 * 1000:.1f} ms"
            if p50 is not None
            else "no decisions yet"
        )
        lines = [
            header,
            f"  posts in        {int(posts):>9}" + ("" if final else f"   ({rate:,.0f}/s)"),
            f"  objections      {objections:>9}",
            f"  published       {decisions('PUBLISHED', 'ELIGIBLE'):>9}",
            f"  blocked         {sum(blocked.values()):>9}   "
            + "  ".join(f"{r} {n}" for r, n in blocked.items()),
            f"  retracted posts {int(metrics.get('enforcer_retracted_posts_total', 0)):>9}   "
            f"({int(metrics.get('enforcer_retractions_total', 0))} retraction records)",
            f"  DLQ             {dlq:>9}",
            f"  decision latency {lat}",
        ]
        return "\n".join(lines)


def _start_broker(
    settings: Settings, explicit: bool, workdir: Path
) -> tuple[str, list[str] | None]:
    if explicit:
        return settings.bootstrap_servers, None
    if settings.security.protocol != "PLAINTEXT":
        raise SettingsError(
            "the demo's own broker is PLAINTEXT: give --bootstrap-servers of the secured cluster"
        )
    if not LOCAL_KAFKA.exists():
        raise SettingsError(
            "the local broker script is not installed here; pass --bootstrap-servers"
        )
    port = 9092 if _port_free(9092) else _free_port()
    base = [str(LOCAL_KAFKA), "--port", str(port), "--dir", str(workdir / "kafka")]
    print(f"starting a local Kafka broker on 127.0.0.1:{port} ...", file=sys.stderr, flush=True)
    result = subprocess.run(
        [base[0], "start", *base[1:]], capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0:
        raise SettingsError(
            "the local broker did not start: " + (result.stderr.strip().splitlines() or ["?"])[-1]
        )
    return result.stdout.strip().splitlines()[-1], base


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Run the demo until ``--duration`` or Ctrl-C; always clean up."""
    from streams.kafka.connection import connection_flags, kafka_failure
    from streams.kafka.topics import ensure_topics, preflight
    from streams.traffic.produce import make_generator, produce_records, traffic_producer

    explicit = bool(args.bootstrap_servers or os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    workdir = Path(tempfile.mkdtemp(prefix="enforcer-demo-"))
    broker_cmd: list[str] | None = None
    worker: subprocess.Popen | None = None
    stop = threading.Event()
    interrupted = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        interrupted.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    producer_thread: threading.Thread | None = None
    producer = None  # the traffic producer, once the worker is ready
    view: View | None = None
    metrics: dict[str, float] = {}
    try:
        bootstrap, broker_cmd = _start_broker(settings, explicit, workdir)
        web_port = settings.web_port if _port_free(settings.web_port) else _free_port()
        settings = dataclasses.replace(
            settings, bootstrap_servers=bootstrap, data_dir=workdir / "state", web_port=web_port
        )
        ensure_topics(settings, create_inputs=True)
        if explicit:
            preflight(settings, "generate")
        gen = make_generator(args, settings)
        cmd = [
            sys.executable,
            "-m",
            "streams",
            "worker",
            *connection_flags(settings),  # the broker, and how to log in: files only
            "--app-id",
            settings.app_id,
            "--data-dir",
            str(settings.data_dir),
            "--web-port",
            str(web_port),
            "--partitions",
            str(settings.partitions),
            "--posts-topic",
            settings.posts_topic,
            "--objections-topic",
            settings.objections_topic,
            "--training-topic",
            settings.training_topic,
            "--retractions-topic",
            settings.retractions_topic,
            "--decisions-topic",
            settings.decisions_topic,
            "--dlq-topic",
            settings.dlq_topic,
            "--log-level",
            "warn",
        ]
        if settings.policy_path:
            cmd += ["--policy", str(settings.policy_path)]
        log_path = workdir / "worker.log"
        with open(log_path, "ab") as log:
            worker = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 120
        while True:
            if worker.poll() is not None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
                raise SettingsError("the worker exited: " + " | ".join(tail))
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or interrupted.is_set():
                raise SettingsError("the worker did not become ready")
            time.sleep(0.2)
        producer = traffic_producer(settings)
        failed: list[str] = []

        def produce() -> None:
            try:
                produce_records(producer, settings, gen.records(10**12), args.rate, stop)
                producer.flush(10)
            except Exception as exc:  # reported by the main loop, one line
                failed.append(
                    str(exc) if isinstance(exc, SettingsError) else kafka_failure(exc, settings)
                )
                interrupted.set()

        producer_thread = threading.Thread(target=produce, name="demo-traffic", daemon=True)
        producer_thread.start()
        view = View(time.monotonic(), args.duration, bootstrap)
        tty = sys.stdout.isatty()
        while not interrupted.is_set():
            if args.duration and time.monotonic() - view.started >= args.duration:
                break
            if worker.poll() is not None:
                raise SettingsError(f"the worker exited with {worker.returncode}")
            try:
                metrics = scrape(web_port)
                text = view.render(metrics)
                print(("\x1b[H\x1b[2J" + text) if tty else text.replace("\n", " |"), flush=True)
            except OSError:
                pass
            interrupted.wait(1.0)
        if failed:
            raise SettingsError(f"the demo's traffic stopped: {failed[0]}")
        with contextlib.suppress(OSError):
            metrics = scrape(web_port)
    finally:
        stop.set()
        if producer_thread is not None:
            producer_thread.join(15)
        if producer is not None:  # before the broker stops: no reconnect noise at exit
            producer.close()
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
        if broker_cmd is not None:
            subprocess.run(
                [broker_cmd[0], "stop", *broker_cmd[1:]], capture_output=True, timeout=120
            )
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if view is not None:
            print(view.render(metrics, final=True), flush=True)
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0
