"""Fixtures: one real Kafka broker for the session, per-test topic names, and a replicated
three-node cluster for the tests that ask for one (``kafka_cluster``).

The broker is found in this order: ``KAFKA_BOOTSTRAP_SERVERS`` if set; else a Docker
engine that answers -> a ``testcontainers`` Kafka (``apache/kafka`` 4.x); else the
local broker of ``deploy/kafka/local-kafka``, started and stopped here. If none can
be had, integration tests fail (they are never skipped).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.support import KafkaCluster, Names, free_port

# Property tests check behaviour, not speed: no per-example deadline (on a loaded
# 2-core machine a 200 ms deadline failed examples that take 8 ms when idle).
settings.register_profile("enforcer", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("enforcer")

ROOT = Path(__file__).resolve().parent.parent
LOCAL_KAFKA = ROOT / "deploy" / "kafka" / "local-kafka"
KAFKA_IMAGE = "apache/kafka:4.1.1"


def _docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _say(config: pytest.Config, line: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)
    else:
        print(line)


@pytest.fixture(scope="session")
def kafka(request: pytest.FixtureRequest) -> Iterator[str]:
    """Bootstrap servers of a real Kafka broker."""
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        _say(request.config, f"kafka: using KAFKA_BOOTSTRAP_SERVERS={env}")
        yield env
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        container = KafkaContainer(KAFKA_IMAGE).with_kraft()
        container.start()
        try:
            bootstrap = container.get_bootstrap_server()
            _say(request.config, f"kafka: testcontainers {KAFKA_IMAGE} at {bootstrap}")
            yield bootstrap
        finally:
            container.stop()
        return
    port = free_port()
    directory = tempfile.mkdtemp(prefix="enforcer-test-kafka-")
    result = subprocess.run(
        [str(LOCAL_KAFKA), "start", "--port", str(port), "--dir", directory],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        pytest.fail(
            f"no Kafka broker: local-kafka start failed:\n{result.stderr[-3000:]}", pytrace=False
        )
    for line in result.stderr.splitlines():
        if "Apache Kafka" in line:
            _say(request.config, f"kafka: {line.removeprefix('local-kafka: ')}")
    bootstrap = result.stdout.strip().splitlines()[-1]
    try:
        yield bootstrap
    finally:
        subprocess.run(
            [str(LOCAL_KAFKA), "stop", "--port", str(port), "--dir", directory],
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka_cluster(request: pytest.FixtureRequest) -> Iterator[KafkaCluster]:
    """A replicated cluster: three combined KRaft nodes of ``local-kafka start --brokers 3``.

    Replication factor 3 and min.insync.replicas 2 by default, on loopback ports of its
    own; started once, when a test first asks for it (~10-20 s), stopped at the end.
    Always local, since tests kill, freeze and restart its nodes: a test that does must
    leave every node running again (``heal()`` in a ``finally``)."""
    directory = Path(tempfile.mkdtemp(prefix="enforcer-test-cluster-"))
    try:
        cluster = KafkaCluster.start(directory, nodes=3)
    except AssertionError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        pytest.fail(f"no Kafka cluster: {exc}", pytrace=False)
    for line in cluster.started.splitlines():
        if "Apache Kafka" in line:
            _say(request.config, f"kafka_cluster: {line.removeprefix('local-kafka: ')}")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def names(request: pytest.FixtureRequest) -> Names:
    """Topic names and an application id of this test alone."""
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40]
    return Names(f"{stem}-{uuid.uuid4().hex[:8]}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use the broker (or the cluster) are integration tests."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "kafka" in fixtures or "kafka_cluster" in fixtures:
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator:
    """On a failure, attach the tail of every worker log the test wrote.

    Worker logs live in the test's ``tmp_path``, which a CI machine discards; the report
    is the only place an operator can read why a worker did not do what was expected."""
    report = yield
    if report.when == "call" and report.failed:
        tmp = getattr(item, "funcargs", {}).get("tmp_path")
        if isinstance(tmp, Path):
            for log in sorted(tmp.rglob("*-worker.log")):
                lines = [
                    line
                    for line in log.read_text(errors="replace").splitlines()
                    # skip Faust's table drawings and the per-record DLQ warnings
                    if line.strip() and line[0] not in "|+" and "] DLQ " not in line
                ]
                title = f"worker log {log.parent.name}/{log.name} (last 150 lines)"
                report.sections.append((title, "\n".join(lines[-150:])))
    return report
