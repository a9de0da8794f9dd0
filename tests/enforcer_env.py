"""A per-test enforcer deployment on the real broker: topics, worker, readers."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from streams.kafka.topics import ensure_topics
from streams.settings import Settings
from tests.support import ROOT, Names, Reader, Sender, Worker


class Deployment:
    """Topics of one test, the workers started for it, and readers of its outputs."""

    def __init__(self, kafka: str, names: Names, tmp_path: Path, partitions: int = 4) -> None:
        self.kafka = kafka
        self.names = names
        self.tmp_path = tmp_path
        self.partitions = partitions
        self.workers: list[Worker] = []
        self.readers: list[Reader] = []
        self.data_dir = tmp_path / "state"

    def settings(self) -> Settings:
        return self.names.settings(self.kafka, self.partitions, self.data_dir)

    def create_topics(self) -> Deployment:
        ensure_topics(self.settings(), create_inputs=True)
        return self

    def worker(self, *extra: str, start: bool = True, data_dir: Path | None = None) -> Worker:
        worker = Worker(
            self.kafka, self.names, data_dir or self.data_dir, *extra, partitions=self.partitions
        )
        self.workers.append(worker)
        if start:
            worker.start()
        return worker

    def reader(self, topic: str) -> Reader:
        reader = Reader(self.kafka, topic)
        self.readers.append(reader)
        return reader

    def sender(self, partitioner: str = "consistent_random") -> Sender:
        return Sender(self.kafka, partitioner)

    def close(self) -> None:
        for worker in self.workers:
            if worker.alive():
                try:
                    worker.stop(30)
                except AssertionError:
                    worker.kill()
        for reader in self.readers:
            reader.close()


def run_enforcer(
    env: Deployment,
    command: str,
    *args: str,
    timeout: float = 300,
    partitions: int | None = None,
) -> subprocess.CompletedProcess:
    """``enforcer COMMAND`` with the deployment's broker, topics and partitions (or
    another ``partitions``)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "streams",
            command,
            "--bootstrap-servers",
            env.kafka,
            *env.names.flags(),
            "--partitions",
            str(env.partitions if partitions is None else partitions),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def metric(worker: Worker, name: str, labels: str = "") -> float:
    """One value from the worker's /metrics (0 when absent)."""
    status, text = worker.http("/metrics")
    assert status == 200
    pattern = re.compile(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$", re.M)
    match = pattern.search(text)
    return float(match.group(1)) if match else 0.0


def wait_metric(
    worker: Worker, name: str, labels: str, at_least: float, timeout: float = 60.0
) -> None:
    """Poll /metrics until the value reaches ``at_least``."""
    deadline = time.monotonic() + timeout
    while metric(worker, name, labels) < at_least:
        assert worker.alive(), worker.log()
        assert time.monotonic() < deadline, f"{name}{labels} never reached {at_least}"
        time.sleep(0.1)


def wait_objections(worker: Worker, n: int, timeout: float = 60.0) -> None:
    """Wait until the gate has applied ``n`` objection events in all."""
    deadline = time.monotonic() + timeout
    while True:
        total = metric(worker, "enforcer_objection_events_total", '{action="OBJECT"}') + metric(
            worker, "enforcer_objection_events_total", '{action="WITHDRAW"}'
        )
        if total >= n:
            return
        assert worker.alive(), worker.log()
        assert time.monotonic() < deadline, f"only {total} of {n} objection events applied"
        time.sleep(0.1)
