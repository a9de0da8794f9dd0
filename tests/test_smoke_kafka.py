"""Plumbing on the real broker: confluent-kafka, aiokafka, and Faust with RocksDB."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.core.records import partition_for_user
from tests.support import ROOT, Reader, Sender, create_topics


def test_confluent_round_trip(kafka: str, names) -> None:
    topic = names.posts
    create_topics(kafka, {topic: 3})
    sender = Sender(kafka)
    for i in range(100):
        sender.raw(topic, f"v{i}".encode(), f"k{i}".encode())
    sender.flush()
    records = Reader(kafka, topic).wait_count(100, timeout=30)
    assert sorted(r.raw for r in records) == sorted(f"v{i}".encode() for i in range(100))
    assert {r.partition for r in records} == {0, 1, 2}


def test_librdkafka_murmur2_places_users_where_partition_for_user_says(kafka: str, names) -> None:
    # the re-keying stage lets librdkafka place a user's records; replay requests and
    # the tables use partition_for_user: they must agree, or state is read elsewhere
    topic = names.posts
    create_topics(kafka, {topic: 8})
    sender = Sender(kafka, partitioner="murmur2")
    users = [f"user-{i}" for i in range(300)] + ["ü-ñ-名前", "x" * 1000, "a"]
    for user in users:
        sender.raw(topic, user.encode(), user.encode())
    sender.flush()
    records = Reader(kafka, topic).wait_count(len(users), timeout=30)
    placed = {r.raw.decode(): r.partition for r in records}
    assert placed == {user: partition_for_user(user.encode(), 8) for user in users}


def test_aiokafka_round_trip_and_topic_creation(kafka: str, names) -> None:
    topic = names.objections

    async def run() -> list[bytes]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
        await admin.start()
        try:  # aiokafka >= 0.13 can create topics on Kafka 4
            await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all")
        await producer.start()
        try:
            for i in range(50):
                await producer.send(topic, f"m{i}".encode(), key=f"k{i}".encode())
            await producer.flush()
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka,
            auto_offset_reset="earliest",
            group_id=f"{topic}-g",
            isolation_level="read_committed",
        )
        await consumer.start()
        got: list[bytes] = []
        try:
            deadline = time.monotonic() + 30
            while len(got) < 50 and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=500)
                for msgs in batches.values():
                    got.extend(m.value for m in msgs)
        finally:
            await consumer.stop()
        return got

    got = asyncio.run(run())
    assert sorted(got) == sorted(f"m{i}".encode() for i in range(50))


class SmokeApp:
    """The Faust smoke app as a subprocess."""

    def __init__(self, kafka: str, app_id: str, topic: str, datadir: Path, dump: Path) -> None:
        self.env = {
            **os.environ,
            "SMOKE_BROKER": kafka,
            "SMOKE_APP": app_id,
            "SMOKE_TOPIC": topic,
            "SMOKE_DATADIR": str(datadir),
            "SMOKE_DUMP": str(dump),
        }
        self.dump = dump
        self.proc: subprocess.Popen | None = None
        self.log = datadir.parent / f"{app_id}.log"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.apps.smoke_app"],
            cwd=ROOT,
            env=self.env,
            stdout=open(self.log, "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )

    def state_after_dump(self, sender: Sender, topic: str, timeout: float = 90) -> dict:
        """Ask the app to dump its table and wait for the file."""
        self.dump.unlink(missing_ok=True)
        deadline = time.monotonic() + timeout
        sender.raw(topic, b"dump", b"a").flush()
        while not self.dump.exists():
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, (
                "smoke app did not dump its table in time; its log:\n"
                + self.log.read_text()[-3000:]
            )
            time.sleep(0.1)
        return json.loads(self.dump.read_text())

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(60) is not None


def test_faust_rocksdb_table_survives_restart_and_datadir_loss(
    kafka: str, names, tmp_path: Path
) -> None:
    topic = names.posts
    create_topics(kafka, {topic: 1})
    datadir = tmp_path / "faust-data"
    app = SmokeApp(kafka, names.app_id, topic, datadir, tmp_path / "dump.json")
    sender = Sender(kafka)
    for key in [b"a", b"a", b"a", b"b", b"b"]:
        sender.raw(topic, b"x", key)
    sender.flush()

    try:
        app.start()
        assert app.state_after_dump(sender, topic) == {"a": 3, "b": 2}
        app.stop()
        assert any(datadir.rglob("*.db")), "the table was not stored in RocksDB on disk"

        app.start()  # same data dir: state from local RocksDB
        sender.raw(topic, b"x", b"a").flush()
        assert app.state_after_dump(sender, topic) == {"a": 4, "b": 2}
        app.stop()

        shutil.rmtree(datadir)  # state must come back from the changelog topic
        app.start()
        assert app.state_after_dump(sender, topic) == {"a": 4, "b": 2}
        app.stop()
    finally:
        if app.proc is not None and app.proc.poll() is None:
            app.proc.kill()
