"""deploy/kafka/local-kafka: start, status, stop, and an offline second start."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support import ROOT, free_port

SCRIPT = ROOT / "deploy" / "kafka" / "local-kafka"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=300, env=env
    )


def brokers_in(directory: Path) -> list[str]:
    out = subprocess.run(["pgrep", "-af", "kafka.Kafka"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(directory) in line]


def test_start_status_stop_and_offline_restart(kafka: str, tmp_path: Path) -> None:
    # (the session broker fixture has already resolved the jars into the cache)
    port, directory = str(free_port()), tmp_path / "broker"
    started = run("start", "--port", port, "--dir", str(directory))
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
