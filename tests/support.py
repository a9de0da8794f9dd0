"""Helpers for the integration tests: names, records, producing, reading, workers."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.serde.codec import Codec
from streams.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CODEC = Codec()
SECRET_TEXT = "SECRET-POST-TEXT-7f3a"
SECRET_URL = "https://cdn.example/SECRET-MEDIA-9c2e.jpg"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Names:
    """Every topic and the app id of one test."""

    prefix: str

    @property
    def app_id(self) -> str:
        return f"{self.prefix}-app"

    def __getattr__(self, item: str) -> str:
        topics = {
            "posts": "posts",
            "objections": "objections",
            "training": "training",
            "retractions": "retractions",
            "decisions": "decisions",
            "dlq": "dlq",
            "receipts": "receipts",
        }
        if item in topics:
            return f"{self.prefix}-{topics[item]}"
        raise AttributeError(item)

    def settings(self, bootstrap: str, partitions: int, data_dir: Path) -> Settings:
        """Settings of a worker of this test's app and topics."""
        return Settings(
            bootstrap_servers=bootstrap,
            app_id=self.app_id,
            partitions=partitions,
            posts_topic=self.posts,
            objections_topic=self.objections,
            training_topic=self.training,
            retractions_topic=self.retractions,
            decisions_topic=self.decisions,
            dlq_topic=self.dlq,
            receipts_topic=self.receipts,
            data_dir=data_dir,
        )

    def flags(self) -> list[str]:
        return [
            "--app-id",
            self.app_id,
            "--posts-topic",
            self.posts,
            "--objections-topic",
            self.objections,
            "--training-topic",
            self.training,
            "--retractions-topic",
            self.retractions,
            "--decisions-topic",
            self.decisions,
            "--dlq-topic",
            self.dlq,
            "--receipts-topic",
            self.receipts,
        ]


# -- records ---------------------------------------------------------------------------
def post(post_id: str, user_id: str, **overrides: Any) -> dict[str, Any]:
    """An eligible post under the default policy, unless overridden."""
    record = {
        "post_id": post_id,
        "user_id": user_id,
        "platform": "FACEBOOK",
        "visibility": "PUBLIC",
        "author_country": "GB",
        "author_is_adult": True,
        "created_at": 1_700_000_000_000,
        "text": SECRET_TEXT,
        "media_urls": [SECRET_URL],
    }
    record.update(overrides)
    return record


def objection(
    event_id: str,
    user_id: str,
    action: str = "OBJECT",
    platform: str | None = None,
    occurred_at: int = 1_700_000_000_000,
    channel: str = "IN_APP",
) -> dict[str, Any]:
    """An ObjectionEvent."""
    return {
        "event_id": event_id,
        "user_id": user_id,
        "action": action,
        "platform": platform,
        "occurred_at": occurred_at,
        "channel": channel,
    }


# -- producing -------------------------------------------------------------------------
def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    """Create topics with the given partition counts (fails if one exists)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for _, fut in admin.create_topics([NewTopic(t, n, 1) for t, n in topics.items()]).items():
        fut.result()


class Sender:
    """A producer of raw or encoded records, with a chosen partitioner."""

    def __init__(self, bootstrap: str, partitioner: str = "consistent_random") -> None:
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "partitioner": partitioner,
                "linger.ms": 5,
                "enable.idempotence": True,
            }
        )

    def posts(self, topic: str, records: Iterable[dict[str, Any]], key: Callable | None = None):
        for r in records:
            self.raw(topic, CODEC.encode("Post", r), key(r) if key else r["user_id"].encode())
        return self

    def objections(
        self, topic: str, records: Iterable[dict[str, Any]], key: Callable | None = None
    ):
        for r in records:
            self.raw(
                topic, CODEC.encode("ObjectionEvent", r), key(r) if key else r["user_id"].encode()
            )
        return self

    def raw(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ):
        while True:
            try:
                if partition is None:
                    self.producer.produce(topic, value, key, headers=headers)
                else:
                    self.producer.produce(topic, value, key, partition, headers=headers)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.producer.poll(0)
        return self

    def flush(self) -> None:
        remaining = self.producer.flush(30)
        assert remaining == 0, f"{remaining} records not delivered"


# -- reading ---------------------------------------------------------------------------
@dataclass
class Record:
    """One record read back from a topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    raw: bytes | None
    headers: dict[str, bytes] = field(default_factory=dict)

    @property
    def value(self) -> dict[str, Any] | None:
        return None if self.raw is None else CODEC.decode(self.raw)[1]


class Reader:
    """Reads a topic from the beginning with ``read_committed``, accumulating records."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.records: list[Record] = []
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"reader-{topic}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
            }
        )
        md = self.consumer.list_topics(topic, timeout=10).topics[topic]
        self.consumer.assign([TopicPartition(topic, p, 0) for p in md.partitions])

    def poll(self, seconds: float = 0.2) -> list[Record]:
        """Read what is available now (up to ``seconds`` of waiting)."""
        new = []
        deadline = time.monotonic() + seconds
        while True:
            msgs = self.consumer.consume(10000, timeout=max(0.0, deadline - time.monotonic()))
            for m in msgs:
                if m.error():
                    continue
                new.append(
                    Record(
                        m.topic(),
                        m.partition(),
                        m.offset(),
                        m.key(),
                        m.value(),
                        dict(m.headers() or []),
                    )
                )
            if not msgs or time.monotonic() >= deadline:
                break
        self.records.extend(new)
        return new

    def wait_for(
        self,
        predicate: Callable[[list[Record]], bool],
        timeout: float = 60.0,
        what: str = "records",
    ) -> list[Record]:
        """Poll until ``predicate(all records so far)`` holds, or fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll(0.2)
            if predicate(self.records):
                return self.records
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what} on "
                    f"{self.topic}; have {len(self.records)}"
                )

    def wait_count(self, n: int, timeout: float = 60.0) -> list[Record]:
        return self.wait_for(lambda rs: len(rs) >= n, timeout, f"{n} records")

    def settle(self, quiet: float = 1.5) -> list[Record]:
        """Read until nothing new arrived for ``quiet`` seconds (used to prove absence)."""
        last = time.monotonic()
        while time.monotonic() - last < quiet:
            if self.poll(0.2):
                last = time.monotonic()
        return self.records

    def close(self) -> None:
        self.consumer.close()


def live_view(records: Iterable[Record]) -> dict[str, dict[str, Any]]:
    """The compacted view of training-ingest: post id -> live TrainingRecord."""
    live: dict[str, dict[str, Any]] = {}
    for r in records:
        post_id = r.key.decode()
        if r.raw is None:
            live.pop(post_id, None)
        else:
            live[post_id] = r.value
    return live


def decisions_by_post(records: Iterable[Record]) -> dict[str, list[dict[str, Any]]]:
    """Decision records grouped by post id, in order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(r.key.decode(), []).append(r.value)
    return out


# -- workers ---------------------------------------------------------------------------
class Worker:
    """An ``enforcer worker`` subprocess for one test."""

    def __init__(
        self,
        bootstrap: str,
        names: Names,
        data_dir: Path,
        *extra: str,
        partitions: int = 4,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"{data_dir.name}-worker.log"
        self.args = [
            sys.executable,
            "-m",
            "streams",
            "worker",
            "--bootstrap-servers",
            bootstrap,
            *names.flags(),
            "--data-dir",
            str(data_dir),
            "--web-port",
            str(self.port),
            "--partitions",
            str(partitions),
            *extra,
        ]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True, timeout: float = 90.0) -> Worker:
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            self.args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=ROOT,
            start_new_session=True,
        )
        if wait:
            self.wait_ready(timeout)
        return self

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.http("/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"worker not ready after {timeout}s:\n{self.log()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_exit(self, timeout: float = 90.0) -> int:
        """Wait for the worker to exit by itself; its exit code."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker still running after {timeout}s:\n{self.log()}") from None

    def stop(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"worker did not stop on SIGTERM:\n{self.log()}") from None
        return self.proc.returncode

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def log(self, tail: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-tail:])
        except OSError:
            return ""

    def full_log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.alive():
            with contextlib.suppress(AssertionError):
                self.stop()


# -- a replicated cluster ----------------------------------------------------------------
LOCAL_KAFKA = ROOT / "deploy" / "kafka" / "local-kafka"


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free TCP ports on 127.0.0.1, below the
    kernel's range of ephemeral ports (32768 and up here): a node killed and restarted
    must find its port free, and an outgoing connection of any client may take a port
    of that range as its own meanwhile ("Unable to start acceptor" in a chaos run).
    local-kafka puts the controllers 1000 above."""
    while True:
        base = random.randrange(20000, 30000 - count)
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + count):
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue
            return base


def process_state(pid: int) -> str | None:
    """The state letter of a process (``R``, ``S``, ``T`` when stopped, ...), None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


class KafkaCluster:
    """A cluster of ``local-kafka start --brokers N`` in ``directory``: node i has node.id i."""

    def __init__(self, directory: Path, bootstrap: str, nodes: int, started: str = "") -> None:
        self.directory = directory
        self.bootstrap = bootstrap
        self.nodes = nodes
        self.started = started  # what start said on stderr

    @classmethod
    def start(cls, directory: Path, nodes: int = 3) -> KafkaCluster:
        """Start a new cluster on free ports; AssertionError if it does not come up."""
        args = ["--brokers", str(nodes), "--port", str(free_ports(nodes)), "--dir", str(directory)]
        result = subprocess.run(
            [str(LOCAL_KAFKA), "start", *args],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0:
            raise AssertionError(f"local-kafka start --brokers {nodes}:\n{result.stderr[-3000:]}")
        bootstrap = result.stdout.strip().splitlines()[-1]
        return cls(directory, bootstrap, nodes, result.stderr)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        # a node restarted while the others, the workers and the traffic share two
        # starved cores has taken 65-98 s to rejoin (local-kafka's default wait is 90 s)
        env = {**os.environ, "LOCAL_KAFKA_START_TIMEOUT": "240"}
        result = subprocess.run(
            [str(LOCAL_KAFKA), *args, "--dir", str(self.directory)],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"local-kafka {' '.join(args)}:\n{result.stderr[-3000:]}")
        return result

    def kill(self, node: int) -> None:
        """SIGKILL one node."""
        self.run("kill", "--node", str(node))

    def freeze(self, node: int) -> None:
        """SIGSTOP one node: it holds its sockets open and answers nothing."""
        self.run("freeze", "--node", str(node))

    def thaw(self, node: int) -> None:
        self.run("thaw", "--node", str(node))

    def restart(self, node: int) -> None:
        """Stop the node if it runs, start it, return once it answers."""
        self.run("restart", "--node", str(node))

    def stop(self) -> None:
        self.run("stop", check=False)

    def pid(self, node: int) -> int | None:
        try:
            return int((self.directory / f"node{node}" / "broker.pid").read_text())
        except (OSError, ValueError):
            return None

    def heal(self) -> None:
        """Every node running and thawed again (for a test's ``finally``)."""
        for node in range(1, self.nodes + 1):
            pid = self.pid(node)
            state = None if pid is None else process_state(pid)
            if state in (None, "Z", "X"):
                self.restart(node)
            elif state in ("T", "t"):
                self.thaw(node)

    def answering(self) -> str:
        """The bootstrap addresses of the nodes that run and are not frozen (all if none)."""
        addresses = self.bootstrap.split(",")
        live = [
            address
            for node, address in enumerate(addresses, 1)
            if (pid := self.pid(node)) is not None
            and process_state(pid) not in (None, "T", "t", "Z", "X")
        ]
        return ",".join(live or addresses)

    def partition(self, topic: str, partition: int = 0) -> Any:
        """The partition's metadata (``leader``, ``replicas``, ``isrs``) as a running node sees it.

        A new client each time, bootstrapped from the nodes that answer: a long-lived
        client keeps sending to a frozen node (and, for admin requests, keeps a frozen
        node as its controller) until its requests time out one by one.
        """
        admin = AdminClient({"bootstrap.servers": self.answering(), "socket.timeout.ms": 5000})
        found = admin.list_topics(topic, timeout=10).topics[topic]
        if found.error is not None:
            raise KafkaException(found.error)
        return found.partitions[partition]

    def leader_of(self, topic: str, partition: int = 0) -> int | None:
        """The node id of the partition's leader, None while it has none."""
        leader = self.partition(topic, partition).leader
        return None if leader < 0 else leader

    def isr_of(self, topic: str, partition: int = 0) -> list[int]:
        return sorted(self.partition(topic, partition).isrs)
