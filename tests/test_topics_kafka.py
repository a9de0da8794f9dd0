"""The topics on the broker: the configs ``enforcer topics create`` gives them (one
broker, and three for ``min.insync.replicas``), the worker's start-up check of
``--max-record-bytes`` against each written topic's ``max.message.bytes``, and the
deletion of processed internal records."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewTopic,
    ResourceType,
)

from streams.kafka.topics import ensure_topics, written_topics
from streams.settings import Settings
from tests.enforcer_env import Deployment
from tests.support import ROOT, KafkaCluster, Names, Worker, post

WEEK_MS = str(7 * 86_400_000)


@pytest.fixture
def env(kafka: str, names: Names, tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(kafka, names, tmp_path, partitions=2)
    yield deployment
    deployment.close()


def topics_create(bootstrap: str, names: Names, *flags: str) -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "streams", "topics", "create"),
            *("--bootstrap-servers", bootstrap, *names.flags(), "--partitions", "2", *flags),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


def describe(bootstrap: str, topics: list[str]) -> dict[str, dict[str, ConfigEntry]]:
    """Each topic's configs as the broker reports them."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resources = [ConfigResource(ResourceType.TOPIC, topic) for topic in topics]
    return {r.name: f.result(timeout=30) for r, f in admin.describe_configs(resources).items()}


def own(entry: ConfigEntry) -> str | None:
    """A config's value when the topic sets it itself (not a broker default), else None."""
    return entry.value if ConfigSource(entry.source) is ConfigSource.DYNAMIC_TOPIC_CONFIG else None


def settings_for(bootstrap: str, names: Names) -> Settings:
    return names.settings(bootstrap, 2, Path("."))


def test_topics_create_gives_each_topic_its_config(kafka: str, names: Names) -> None:
    """Every config of docs/operations.md's topic table, as the broker reports it, set
    on the topic itself; the retention of an existing internal topic made with a finite
    one is corrected."""
    s = settings_for(kafka, names)
    internal = NewTopic(s.user_events_topic, 2, 1, config={"retention.ms": "3600000"})
    admin = AdminClient({"bootstrap.servers": kafka})  # referenced until the future is done
    admin.create_topics([internal])[internal.topic].result(30)
    topics_create(kafka, names, "--dlq-retention-ms", "172800000")

    configs = describe(kafka, written_topics(s))
    assert configs[s.user_events_topic]["retention.ms"].value == "-1"
    assert configs[s.user_events_topic]["retention.bytes"].value == "-1"
    training = configs[s.training_topic]
    assert own(training["cleanup.policy"]) == "compact"
    assert own(training["delete.retention.ms"]) == WEEK_MS  # --tombstone-retention-ms
    assert own(configs[s.dlq_topic]["retention.ms"]) == "172800000"  # --dlq-retention-ms
    for audit in (s.decisions_topic, s.retractions_topic, s.receipts_topic):
        assert own(configs[audit]["retention.ms"]) == "-1", audit  # --audit-retention-ms
        assert own(configs[audit]["message.timestamp.type"]) == "LogAppendTime", audit
    for compacted in (s.changelog_topic("consent"), s.changelog_topic("ledger"), s.endpoints_topic):
        assert own(configs[compacted]["cleanup.policy"]) == "compact", compacted
    assert own(configs[s.replay_results_topic]["retention.ms"]) == WEEK_MS
    # each topic the worker writes takes its largest record; the internal topic existed
    # already (the broker's default, checked by the worker at start)
    for topic in written_topics(s):
        if topic != s.user_events_topic:
            assert own(configs[topic]["max.message.bytes"]) == "1048588", topic
        # one broker: replication factor 1, no min.insync.replicas of its own
        assert own(configs[topic]["min.insync.replicas"]) is None, topic


def test_topics_create_on_three_brokers_acknowledges_with_two_replicas(
    kafka_cluster: KafkaCluster, names: Names
) -> None:
    """Replication factor 3 and min.insync.replicas=2 on the topic itself (the test
    cluster's broker default is 2 as well: the topic's own setting is what is checked)."""
    bootstrap = kafka_cluster.bootstrap
    topics_create(bootstrap, names)
    s = settings_for(bootstrap, names)
    topics = [*s.input_topics, *written_topics(s)]
    configs = describe(bootstrap, topics)
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30).topics
    for topic in topics:
        assert own(configs[topic]["min.insync.replicas"]) == "2", topic
        replicas = {len(p.replicas) for p in metadata[topic].partitions.values()}
        assert replicas == {3}, topic


def refused_at_start(worker: Worker, timeout: float = 120.0) -> str:
    """The one line of a worker that stops at start (exit code 2, nothing else logged);
    fails as soon as it is ready instead."""
    worker.start(wait=False)
    assert worker.proc is not None
    deadline = time.monotonic() + timeout
    while worker.proc.poll() is None:
        assert time.monotonic() < deadline, f"still running after {timeout}s:\n{worker.log()}"
        try:
            ready = worker.http("/ready")[0] == 200
        except OSError:
            ready = False
        assert not ready, f"the worker started:\n{worker.log()}"
        time.sleep(0.2)
    lines = [line for line in worker.full_log().splitlines() if line.strip()]
    assert worker.proc.returncode == 2, lines[-20:]
    assert len(lines) == 1 and lines[0].startswith("enforcer: error: "), lines[-20:]
    worker.log_path.unlink()  # the next worker of the test logs anew
    return lines[0]


def test_a_topic_that_takes_smaller_records_than_max_record_bytes_stops_the_worker_at_start(
    env: Deployment,
) -> None:
    """A record the size checks let through would be refused by the broker at delivery,
    the worker would stop (exit 70) and meet it again after every restart. The worker
    refuses to start instead, naming the topic and both numbers: first a topic without a
    limit of its own (the broker's message.max.bytes, 1048588, below --max-record-bytes
    2000000), then one whose own max.message.bytes is 100000 (below the default
    1000000). With --max-record-bytes at that limit it starts."""
    s = env.settings()
    admin = AdminClient({"bootstrap.servers": env.kafka})
    dlq = NewTopic(s.dlq_topic, env.partitions, 1)  # the broker's default limit
    admin.create_topics([dlq])[s.dlq_topic].result(30)
    # the other topics made by a worker with --max-record-bytes 3000000
    ensure_topics(dataclasses.replace(s, max_record_bytes=3_000_000), create_inputs=True)
    training = describe(env.kafka, [s.training_topic])[s.training_topic]
    assert own(training["max.message.bytes"]) == "3000000"
    # a topic's own limit replaces the broker's message.max.bytes, also above it: only
    # the effective limit of each topic is compared
    producer = Producer({"bootstrap.servers": env.kafka, "message.max.bytes": 3_000_000})
    errors: list = []
    producer.produce(
        s.replay_results_topic, b"x" * 2_000_000, b"k", on_delivery=lambda e, m: errors.append(e)
    )
    assert producer.flush(30) == 0 and errors == [None], errors

    line = refused_at_start(env.worker("--max-record-bytes", "2000000", start=False))
    assert (
        f"--max-record-bytes 2000000 is more than topic {s.dlq_topic} accepts: "
        "max.message.bytes 1048588 (the broker's message.max.bytes)"
    ) in line, line

    small = ConfigEntry("max.message.bytes", "100000", incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ResourceType.TOPIC, s.dlq_topic, incremental_configs=[small])
    admin.incremental_alter_configs([resource])[resource].result(30)
    line = refused_at_start(env.worker(start=False))
    assert (
        f"--max-record-bytes 1000000 is more than topic {s.dlq_topic} accepts: "
        "max.message.bytes 100000 (set on the topic)"
    ) in line, line

    env.worker("--max-record-bytes", "100000")  # started and ready


def test_processed_internal_records_are_deleted_from_the_broker(env: Deployment) -> None:
    """The internal topic keeps its records (retention.ms=-1) until the gate has
    committed past them, then the gate deletes them (every 30 s): its low watermarks
    move up, never past the gate's committed offsets."""
    n = env.names
    env.create_topics()
    worker = env.worker()
    users = [f"u{i}" for i in range(8)]
    env.sender().posts(n.posts, [post(f"p{i}", users[i % 8]) for i in range(40)]).flush()
    env.reader(n.decisions).wait_count(40)

    s = env.settings()
    topic, group = s.user_events_topic, s.app_id
    admin = AdminClient({"bootstrap.servers": env.kafka})
    reader = Consumer({"bootstrap.servers": env.kafka, "group.id": f"{n.prefix}-watermarks"})
    try:
        deadline = time.monotonic() + 150  # the purge runs every 30 s; a loaded machine
        while True:
            assert worker.alive(), worker.log()
            lows = {
                p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0]
                for p in range(env.partitions)
            }
            request = [
                ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in lows])
            ]
            answer = admin.list_consumer_group_offsets(request)[group].result(timeout=30)
            committed = {tp.partition: tp.offset for tp in answer.topic_partitions}
            assert all(low <= max(committed[p], 0) for p, low in lows.items()), (lows, committed)
            if sum(lows.values()) > 0:
                break
            assert time.monotonic() < deadline, f"nothing deleted: {lows}, committed {committed}"
            time.sleep(0.5)
    finally:
        reader.close()
