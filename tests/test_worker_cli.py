"""The worker's command line, configuration errors, HTTP endpoints and logs."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.enforcer_env import Deployment, metric, wait_metric
from tests.support import ROOT, SECRET_TEXT, SECRET_URL, Names, free_port, post


@pytest.fixture
def env(kafka: str, names, tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(kafka, names, tmp_path).create_topics()
    yield deployment
    deployment.close()


def run_enforcer(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streams", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("enforcer: error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def test_unreachable_broker_stops_with_one_line(tmp_path: Path) -> None:
    port = free_port()
    result = run_enforcer(
        "worker", "--bootstrap-servers", f"127.0.0.1:{port}", "--data-dir", str(tmp_path)
    )
    assert_one_line_error(result, f"cannot reach Kafka at 127.0.0.1:{port}")


def test_bad_policy_stops_with_one_line(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text(
        'version = "x"\ncountries = ["UK"]\nvisibilities = ["PUBLIC"]\n'
        'platforms = ["FACEBOOK"]\nadults_only = true\n'
    )
    result = run_enforcer("worker", "--policy", str(policy), "--data-dir", str(tmp_path))
    assert_one_line_error(result, "the United Kingdom is GB")


def test_bad_flags_and_environment_stop_with_one_line(tmp_path: Path, monkeypatch) -> None:
    assert_one_line_error(run_enforcer("worker", "--partitions", "0"), "--partitions must be")
    assert_one_line_error(run_enforcer("worker", "--posts-topic", "a b"), "not a valid topic")
    monkeypatch.setenv("ENFORCER_PARTITIONS", "many")
    assert_one_line_error(run_enforcer("worker"), "ENFORCER_PARTITIONS must be a whole number")


def test_mismatched_partitions_stop_the_worker(kafka: str, names: Names, tmp_path: Path) -> None:
    Deployment(kafka, names, tmp_path, partitions=4).create_topics()
    result = run_enforcer(
        "worker",
        "--bootstrap-servers",
        kafka,
        *names.flags(),
        "--partitions",
        "6",
        "--data-dir",
        str(tmp_path / "d"),
    )
    assert_one_line_error(result, "has 4 partitions but the worker is configured for 6")


def test_missing_input_topic_stops_the_worker(kafka: str, names: Names, tmp_path: Path) -> None:
    result = run_enforcer(
        "worker", "--bootstrap-servers", kafka, *names.flags(), "--data-dir", str(tmp_path / "d")
    )
    assert_one_line_error(result, f"input topic(s) {names.posts}, {names.objections} do not exist")


def test_topics_create_is_idempotent(kafka: str, names: Names) -> None:
    first = run_enforcer(
        "topics", "create", "--bootstrap-servers", kafka, *names.flags(), "--partitions", "3"
    )
    assert first.returncode == 0, first.stderr
    assert f"{names.posts}\tinput\tcreated" in first.stdout
    assert f"{names.app_id}-consent-changelog\tinternal\tcreated" in first.stdout
    second = run_enforcer(
        "topics", "create", "--bootstrap-servers", kafka, *names.flags(), "--partitions", "3"
    )
    assert second.returncode == 0, second.stderr
    assert "created" not in second.stdout and f"{names.training}\toutput\texists" in second.stdout


def test_http_endpoints_and_no_content_in_logs(env: Deployment) -> None:
    n = env.names
    worker = env.worker("--log-level", "debug")
    assert worker.http("/ready") == (200, '{"ready":true}')
    for path in ("/table/", "/table/consent/", "/router/", "/stats/", "/graph/"):
        assert worker.http(path)[0] == 404, path
    env.sender().posts(n.posts, [post("p1", "u"), post("p2", "u", visibility="FRIENDS")]).flush()
    wait_metric(worker, "enforcer_decisions_total", '{outcome="BLOCKED",reason="NOT_PUBLIC"}', 1)
    wait_metric(worker, "enforcer_decisions_total", '{outcome="PUBLISHED",reason="ELIGIBLE"}', 1)
    assert metric(worker, "enforcer_decision_latency_seconds_count") >= 2
    assert metric(worker, "enforcer_ready") == 1
    # the consumer lag of every input partition: the re-keying stage's (written once per
    # commit interval) and the gate's (at scrape time); everything was read: 0
    deadline = time.monotonic() + 30
    internal = f"{n.app_id}-user-events-repartition"
    stages = ("rekey", n.posts), ("rekey", n.objections), ("gate", internal)
    while True:
        text = worker.http("/metrics")[1]
        lags = [
            line for line in text.splitlines() if line.startswith("enforcer_consumer_lag_records{")
        ]
        if all(any(f'stage="{s}",topic="{t}"' in line for line in lags) for s, t in stages):
            break
        assert time.monotonic() < deadline, lags
        time.sleep(0.2)
    assert metric(worker, "enforcer_consumer_lag_records", _lag_labels(stages[0], text)) == 0
    log = worker.full_log()
    assert SECRET_TEXT not in log and SECRET_URL not in log
    # the web server listens on loopback only
    status = subprocess.run(
        ["ss", "-ltnH", f"sport = :{worker.port}"], capture_output=True, text=True
    )
    if status.returncode == 0 and status.stdout.strip():
        assert all("127.0.0.1:" in line for line in status.stdout.splitlines()), status.stdout
    assert worker.stop() == 0


def _lag_labels(stage: tuple[str, str], text: str) -> str:
    """The labels of the first lag sample of ``stage`` (stage, topic) in ``text``."""
    for line in text.splitlines():
        if f'stage="{stage[0]}",topic="{stage[1]}"' in line:
            return line[len("enforcer_consumer_lag_records") : line.index("}") + 1]
    raise AssertionError(stage)


def _stage(worker) -> psutil.Process:
    children = psutil.Process(worker.proc.pid).children()
    # the other child is multiprocessing's resource tracker
    [stage] = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
    return stage


def _wait_gone(process: psutil.Process, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, f"process {process.pid} still running"
        time.sleep(0.1)


def test_the_rekeying_stage_lives_and_dies_with_the_worker(env: Deployment) -> None:
    """The re-keying stage is a child process: it stops with a clean stop, it dies when
    the worker is killed (no orphan left in the consumer group), and the worker stops
    (exit 70, a supervisor restarts it) when the stage dies."""
    worker = env.worker()
    stage = _stage(worker)
    assert worker.stop() == 0
    _wait_gone(stage)

    worker = env.worker()
    stage = _stage(worker)
    worker.proc.kill()  # SIGKILL of the worker's own pid only, not of its process group
    worker.proc.wait()
    _wait_gone(stage)

    worker = env.worker()
    _stage(worker).kill()
    assert worker.proc.wait(30) == 70, worker.log()
    assert "the re-keying stage exited" in worker.full_log()
