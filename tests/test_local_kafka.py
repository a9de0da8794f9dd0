"""deploy/kafka/local-kafka: start, status, stop, and an offline second start; a
replicated three-node cluster (``start --brokers 3``) that loses, freezes and gets back
one node while producing with acks=all."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from tests.support import (
    ROOT,
    KafkaCluster,
    Names,
    Reader,
    free_port,
    free_ports,
    process_state,
)

SCRIPT = ROOT / "deploy" / "kafka" / "local-kafka"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=300, env=env
    )


def brokers_in(directory: Path) -> list[str]:
    out = subprocess.run(["pgrep", "-af", "kafka.Kafka"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(directory) in line]


def outgoing_connection_from(local_port: int) -> tuple[socket.socket, socket.socket] | None:
    """A connected client socket whose local end is ``local_port`` (nothing listens on it,
    yet a bind of that port fails), with the listener it is connected to."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.socket()
    try:
        client.bind(("127.0.0.1", local_port))
        client.connect(listener.getsockname())
    except OSError:
        client.close()
        listener.close()
        return None
    return client, listener


def test_start_status_stop_and_offline_restart(kafka: str, tmp_path: Path) -> None:
    # (the session broker fixture has already resolved the jars into the cache)
    directory = tmp_path / "broker"
    # A CI run lost a start: the controller port it chose (port + 1001, in the kernel's
    # ephemeral range) was the local end of some outgoing connection. Take that port so.
    # (where the ephemeral range leaves no room below it, local-kafka falls back to port +
    # 1001 and nothing is held)
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    held: tuple[socket.socket, ...] = ()
    for _ in range(20):
        port = str(free_port())
        if low - 10200 < 2000:
            break
        taken = outgoing_connection_from(int(port) + 1001)
        if taken is not None:
            held = taken
            break
    else:
        pytest.fail("no client port + 1001 could be taken for the test")
    try:
        started = run("start", "--port", port, "--dir", str(directory))
    finally:
        for sock in held:
            sock.close()
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip().splitlines()[-1] == f"127.0.0.1:{port}"
    assert "Apache Kafka 4." in started.stderr
    assert run("status", "--port", port, "--dir", str(directory)).returncode == 0
    assert len(brokers_in(directory)) == 1
    stopped = run("stop", "--port", port, "--dir", str(directory))
    assert stopped.returncode == 0 and brokers_in(directory) == []
    assert run("status", "--port", port, "--dir", str(directory)).returncode == 3

    # a second start needs no Maven: hide mvn from PATH
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in (
        "bash",
        "java",
        "sed",
        "cat",
        "grep",
        "tr",
        "date",
        "sleep",
        "mkdir",
        "head",
        "base64",
        "tail",
        "rm",
        "mv",
        "setsid",
        "dirname",
        "touch",
    ):
        found = subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip()
        if found:
            (bare / tool).symlink_to(found)
    env = {**os.environ, "PATH": str(bare)}
    again = run("start", "--port", port, "--dir", str(directory), env=env)
    try:
        assert again.returncode == 0, again.stderr
        assert "resolving" not in again.stderr
    finally:
        run("stop", "--port", port, "--dir", str(directory))
    assert brokers_in(directory) == []


# -- a replicated cluster ----------------------------------------------------------------
NODES = [1, 2, 3]


def eventually(probe: Callable[[], Any], accept: Callable[[Any], bool], timeout: float, what: str):
    """Poll ``probe`` until ``accept`` takes its value (a Kafka error counts as not yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except KafkaException as exc:
            value = exc
        else:
            if accept(value):
                return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s, last {value!r}")
        time.sleep(0.2)


def wait_isr(cluster: KafkaCluster, topic: str, isr: list[int], timeout: float = 60.0) -> None:
    eventually(lambda: cluster.isr_of(topic), lambda seen: seen == isr, timeout, f"ISR {isr}")


def replicated_topic(cluster: KafkaCluster, names: Names) -> str:
    """A one-partition topic on all three nodes, min.insync.replicas 2, its ISR complete."""
    topic = f"{names.prefix}-replicated"
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    new = NewTopic(topic, 1, 3, config={"min.insync.replicas": "2"})
    admin.create_topics([new])[topic].result()
    wait_isr(cluster, topic, NODES, 30)
    return topic


class AckedProducer:
    """An idempotent acks=all producer that keeps the values the brokers acknowledged."""

    def __init__(self, bootstrap: str) -> None:
        self.acked: list[bytes] = []
        self.failed: list[str] = []
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                # a frozen leader answers nothing: give up on a request soon (60 s by
                # default), ask for the new leader, send again
                "socket.timeout.ms": 6000,
                "request.timeout.ms": 5000,
                "message.timeout.ms": 90000,
            }
        )

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is None:
            self.acked.append(msg.value())
        else:
            self.failed.append(str(err))

    def send(self, topic: str, stem: str, count: int) -> None:
        for i in range(count):
            self.producer.produce(topic, f"{stem}-{i}".encode(), on_delivery=self._delivered)
        remaining = self.producer.flush(120)
        assert remaining == 0 and not self.failed, f"{remaining} undelivered, {self.failed[:3]}"


def read_all(cluster: KafkaCluster, topic: str, values: list[bytes]) -> Reader:
    """A reader that has read every one of ``values`` (and nothing twice)."""
    reader = Reader(cluster.bootstrap, topic)
    want = set(values)
    reader.wait_for(lambda rs: want <= {r.raw for r in rs}, 60, "every acknowledged record")
    raws = [r.raw for r in reader.records]
    assert len(raws) == len(set(raws)) == len(want), "duplicates or strangers"
    return reader


@pytest.mark.integration
def test_cluster_start_status_freeze_thaw_and_stop(tmp_path: Path) -> None:
    port, directory = free_ports(3), tmp_path / "cluster"
    d = str(directory)
    t0 = time.monotonic()
    started = run("start", "--brokers", "3", "--port", str(port), "--dir", d)
    took = time.monotonic() - t0
    try:
        assert started.returncode == 0, started.stderr
        bootstrap = ",".join(f"127.0.0.1:{port + i}" for i in range(3))
        assert started.stdout.strip().splitlines()[-1] == bootstrap
        assert "3 nodes started in" in started.stderr, started.stderr
        print(f"a three-node cluster started in {took:.1f}s")
        status = run("status", "--dir", d)
        assert status.returncode == 0, status.stdout
        for node in NODES:
            assert f"node {node} running" in status.stdout
        assert len(brokers_in(directory)) == 3
        # a second start finds every node running and prints the same list
        again = run("start", "--dir", d)
        assert again.returncode == 0 and again.stdout.strip().splitlines()[-1] == bootstrap

        pid = int((directory / "node2" / "broker.pid").read_text())
        assert run("freeze", "--node", "2", "--dir", d).returncode == 0
        assert process_state(pid) == "T"
        frozen = run("status", "--dir", d)
        assert frozen.returncode == 4 and "node 2 frozen" in frozen.stdout, frozen.stdout
        assert run("thaw", "--node", "2", "--dir", d).returncode == 0
        assert process_state(pid) not in ("T", "t", None)
    finally:
        stopped = run("stop", "--dir", d)
    assert stopped.returncode == 0, stopped.stderr
    assert brokers_in(directory) == []
    assert run("status", "--dir", d).returncode == 3


def test_cluster_defaults_replicate_every_topic_three_ways(
    kafka_cluster: KafkaCluster, names: Names
) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_cluster.bootstrap})
    resource = ConfigResource("broker", "1")
    configs = admin.describe_configs([resource])[resource].result()
    for key, value in {
        "default.replication.factor": "3",
        "min.insync.replicas": "2",
        "offsets.topic.replication.factor": "3",
        "transaction.state.log.replication.factor": "3",
        "transaction.state.log.min.isr": "2",
    }.items():
        assert configs[key].value == value, key
    topic = f"{names.prefix}-defaults"
    admin.create_topics([NewTopic(topic, 1)])[topic].result()  # the broker's defaults
    wait_isr(kafka_cluster, topic, NODES, 30)


def test_acks_all_survives_killing_the_leader_which_rejoins_on_restart(
    kafka_cluster: KafkaCluster, names: Names
) -> None:
    cluster = kafka_cluster
    topic = replicated_topic(cluster, names)
    producer = AckedProducer(cluster.bootstrap)
    producer.send(topic, "before", 200)
    leader = cluster.leader_of(topic)
    assert leader in NODES
    others = [n for n in NODES if n != leader]
    try:
        cluster.kill(leader)
        assert cluster.pid(leader) is None
        # two replicas left in the ISR, min.insync.replicas 2: acks=all still succeeds
        producer.send(topic, "after", 200)
        wait_isr(cluster, topic, others, 30)
        assert cluster.leader_of(topic) in others
        # a transaction and a consumer group's commit work with the node down too
        tx = Producer({"bootstrap.servers": cluster.bootstrap, "transactional.id": topic})
        tx.init_transactions(90)
        tx.begin_transaction()
        committed_values = [f"tx-{i}".encode() for i in range(10)]
        for value in committed_values:
            tx.produce(topic, value)
        tx.commit_transaction(90)
        reader = read_all(cluster, topic, producer.acked + committed_values)
        try:
            reader.consumer.commit(asynchronous=False)
            position = reader.consumer.position([TopicPartition(topic, 0)])[0].offset
            committed = reader.consumer.committed([TopicPartition(topic, 0)], timeout=30)
            assert committed[0].offset == position > 0
        finally:
            reader.close()

        t0 = time.monotonic()
        cluster.restart(leader)
        wait_isr(cluster, topic, NODES, 60)
        print(f"node {leader} restarted and back in the ISR in {time.monotonic() - t0:.1f}s")
    finally:
        cluster.heal()


def test_a_frozen_leader_is_replaced_and_rejoins_once_thawed(
    kafka_cluster: KafkaCluster, names: Names
) -> None:
    cluster = kafka_cluster
    topic = replicated_topic(cluster, names)
    producer = AckedProducer(cluster.bootstrap)
    producer.send(topic, "before", 100)
    leader = cluster.leader_of(topic)
    pid = cluster.pid(leader)
    assert leader in NODES and pid is not None
    try:
        cluster.freeze(leader)
        assert process_state(pid) == "T"
        # fenced once its heartbeats stop (broker.session.timeout.ms): a new leader takes over
        producer.send(topic, "frozen", 100)
        new_leader = eventually(
            lambda: cluster.leader_of(topic), lambda n: n not in (None, leader), 60, "a new leader"
        )
        assert new_leader in NODES
        assert process_state(pid) == "T"  # still frozen all along
        cluster.thaw(leader)
        assert process_state(pid) not in ("T", "t", None)
        wait_isr(cluster, topic, NODES, 60)
        read_all(cluster, topic, producer.acked).close()
    finally:
        cluster.heal()
