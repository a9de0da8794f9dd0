"""``enforcer verify --follow`` against the real broker: its ``/metrics`` counts rise as
clean traffic is decided, with no violation, and ``enforcer_verify_violations`` turns
non-zero once a published record of an objecting user is injected into training-ingest
by hand (the deployment, traffic and injection of tests/test_compliance.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from streams.core.enforcement import training_record
from streams.core.policy import load_policy
from streams.verify.checker import CHECKS
from tests.enforcer_env import Deployment, metric, wait_metric
from tests.support import CODEC, ROOT, free_port, objection, post


class Follow:
    """``enforcer verify --follow`` as a subprocess, with the ``http``, ``alive`` and
    ``log`` that ``tests.enforcer_env.metric`` and ``wait_metric`` use on a worker."""

    def __init__(self, env: Deployment, log_path: Path, *args: str) -> None:
        self.port = free_port()
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "streams",
                    "verify",
                    "--follow",
                    "--bootstrap-servers",
                    env.kafka,
                    *env.names.flags(),
                    "--partitions",
                    str(env.partitions),
                    "--web-port",
                    str(self.port),
                    *args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_serving(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.alive(), self.log()
            try:
                if self.http("/metrics")[0] == 200:
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no /metrics after {timeout}s:\n{self.log()}"
            time.sleep(0.1)

    def violations(self) -> float:
        return sum(
            metric(self, "enforcer_verify_violations", f'{{check="{check}"}}') for check in CHECKS
        )

    def interrupt(self, timeout: float = 60.0) -> int:
        """SIGINT, then the exit code; a pass under way (about 8 s under load in the CI
        simulation, where 20 s was once too short) finishes its broker reads first."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"verify --follow did not stop on SIGINT:\n{self.log()}") from None


def test_verify_follow_metrics(kafka: str, names, tmp_path: Path) -> None:
    env = Deployment(kafka, names, tmp_path, partitions=2).create_topics()
    follow = None
    try:
        env.worker()
        send = env.sender()
        decisions = env.reader(names.decisions)
        now = int(time.time() * 1000)
        send.objections(names.objections, [objection("b-1", "b", occurred_at=now - 5000)])
        send.posts(names.posts, [post("a-p1", "a"), post("a-p2", "a"), post("b-p1", "b")])
        send.flush()
        decisions.wait_count(3, timeout=60)

        # inputs younger than the grace are pending, not violations, while they flow
        follow = Follow(env, tmp_path / "verify-follow.log", "--interval", "0.5", "--grace", "30")
        follow.wait_serving()
        records = "enforcer_verify_records"
        wait_metric(follow, records, '{what="input_decision"}', 3, timeout=30)
        wait_metric(follow, records, '{what="input_receipt"}', 1, timeout=30)
        assert follow.violations() == 0, follow.log()

        # more clean traffic: the counts rise, still no violation
        send.posts(names.posts, [post(f"c-p{i}", "c") for i in range(5)]).flush()
        decisions.wait_count(8, timeout=60)
        wait_metric(follow, records, '{what="input_decision"}', 8, timeout=30)
        wait_metric(follow, records, '{what="training_records"}', 7, timeout=30)
        passes = metric(follow, "enforcer_verify_passes_total")
        assert passes >= 2
        assert follow.violations() == 0, follow.log()

        # a record of objecting user b injected into training-ingest by hand
        injected = training_record(post("b-leak", "b"), load_policy(), int(time.time() * 1000))
        send.raw(names.training, CODEC.encode("TrainingRecord", injected), b"b-leak").flush()
        check = '{check="published_while_objected"}'
        wait_metric(follow, "enforcer_verify_violations", check, 1, timeout=30)
        assert metric(follow, "enforcer_verify_violations", '{check="published_without_decision"}')
        assert "published_while_objected: post b-leak of user b" in follow.log()
        # interrupted, it exits 1: a pass found a violation
        assert follow.interrupt() == 1, follow.log()
    finally:
        if follow is not None and follow.alive():
            follow.interrupt()
        env.close()
