"""A small run of the benchmark, so that it cannot rot (figures are not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

PEER_PYTHON = ROOT / ".venv-peer" / "bin" / "python"


def test_benchmark_smoke_run_writes_results(kafka: str, tmp_path: Path) -> None:
    args = [
        sys.executable,
        "-m",
        "bench.run",
        "--quick",
        "--bootstrap-servers",
        kafka,
        "--out",
        str(tmp_path),
    ]
    if PEER_PYTHON.exists():
        args += ["--peer-python", str(PEER_PYTHON)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    [json_path] = tmp_path.glob("*.json")
    data = json.loads(json_path.read_text())
    assert json_path.with_suffix(".png").stat().st_size > 10_000
    for name in ("ceiling", "enforcer") + (("peer",) if PEER_PYTHON.exists() else ()):
        assert data["throughput"][name]["per_second"] > 0, name
        assert data["throughput"][name]["records"] >= data["config"]["posts"]
    assert "enforcer_over_ceiling" in data["ratios"]
    enforcer = data["throughput"]["enforcer"]
    # both count whole clock ticks, read a moment apart: allow two ticks over a short run
    slack = 2 / os.sysconf("SC_CLK_TCK") / enforcer["records"] * 1000
    main = enforcer["main_thread_cpu_seconds_per_1000"]
    assert 0 < main <= enforcer["cpu_seconds_per_1000"] + slack
    # what a quarter of the ceiling would take: the main thread is part of the worker
    capacity = data["capacity"]
    quarter_slack = capacity["quarter_of_ceiling_per_second"] * slack / 1000
    assert capacity["main_thread_cores_needed"] > 0
    assert capacity["main_thread_cores_needed"] <= capacity["enforcer_cores_needed"] + quarter_slack
    assert data["latency"][0]["samples"] > 0
    assert data["memory"]["users"] == data["config"]["memory_users"]
    assert data["versions"]["kafka"] and data["machine"]["cores"]
