"""A/B of two commits of the enforcer on one broker, interleaved (issue 15: the gate
split by concern and its Checkpoint, against the code before it).

    python -m bench.gate_split_ab --before COMMIT --after COMMIT [--reps 5]

Each commit is checked out in a git worktree of its own (``/tmp``), with its own C
extension (``pip wheel``, the ``.so`` unzipped into the worktree; nothing is built in
this tree). Workers are started exactly as ``bench.run.start_enforcer`` starts them,
from the worktree of the commit measured, so ``python -m streams`` imports that
commit's package. One local broker and one data set (``bench.run``); an uncounted
latency run first warms the broker. Each repetition runs, for both commits in turn (the
order alternating: AB, BA, AB...): end-to-end latency at each rate
(``bench.run.latency_run``), throughput over the data set with the worker's defaults
(fencing on) and with fencing off (``bench.commit_interval.throughput_run``). Writes
``bench/results/gate-split-ab-<timestamp>.json``: every run's figures, the load average
around it, and median and min-max per commit and kind.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench.commit_interval as commit_interval
import bench.run as run
from bench.commit_interval import spread, throughput_run
from bench.run import Config, broker, latency_run, machine, produce_data, say, settings_for
from streams.kafka.topics import ensure_topics

ROOT = Path(__file__).resolve().parent.parent
FIGURES = {
    "latency": ("p50_ms", "p99_ms", "p999_ms"),
    "throughput": (
        "per_second",
        "cpu_seconds_per_1000",
        "main_thread_cpu_seconds_per_1000",
        "broker_cpu_seconds_per_1000",
    ),
}


def worktree(commit: str, where: Path) -> Path:
    """``commit`` checked out at ``where`` with its own C extension built."""
    subprocess.run(["git", "worktree", "add", "--detach", str(where), commit], cwd=ROOT, check=True)
    wheels = Path(tempfile.mkdtemp(prefix="whl-"))
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels)]
    subprocess.run([*pip, str(where)], check=True)
    (wheel,) = glob.glob(str(wheels / "*.whl"))
    subprocess.run(
        ["unzip", "-o", "-q", wheel, "streams/gate/_native*.so", "-d", str(where)], check=True
    )
    shutil.rmtree(wheels, ignore_errors=True)
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            "import streams, streams.gate.native as n; print(streams.__file__, n.available())",
        ],
        cwd=where,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not check[0].startswith(str(where)) or check[1] != "True":
        raise SystemExit(f"{where}: imports {check[0]}, native fast path {check[1]}")
    return where


def summarise(runs: list[dict[str, Any]], codes: list[str]) -> dict[str, Any]:
    """Per commit and kind of run (the broker's warm-up not counted): median and min-max
    of each figure over the repetitions, and how many runs failed."""
    table: dict[str, Any] = {}
    for code in codes:
        mine = [r for r in runs if r["code"] == code and "figures" in r and r["rep"] >= 0]
        entry: dict[str, Any] = {}
        for key in sorted({r["what"] for r in mine}):
            got = [r["figures"] for r in mine if r["what"] == key]
            kind = "latency" if key.startswith("latency") else "throughput"
            entry[key] = {
                k: spread([g[k] for g in got]) for k in FIGURES[kind] if all(k in g for g in got)
            }
        entry["failed_runs"] = sum(1 for r in runs if r["code"] == code and "error" in r)
        table[code] = entry
    return table


def main(argv: list[str] | None = None) -> int:
    """Measure both commits, interleaved, and write the results file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", required=True)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--posts", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--rates", default="2000", help='comma list of posts/s, or "" (none)')
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--warmup-seconds", type=float, default=5.0)
    parser.add_argument("--broker-warmup-seconds", type=float, default=40.0)
    parser.add_argument(
        "--throughput",
        default="default,fencing-off",
        help="comma list of throughput variants: default (fencing on), fencing-off",
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    rates = [int(r) for r in args.rates.split(",") if r]
    variants = {
        "default": ("throughput", {}),
        "fencing-off": ("throughput_fencing_off", {"ENFORCER_FENCING": "off"}),
    }
    throughput = [variants[v] for v in args.throughput.split(",") if v]
    commits = {
        name: subprocess.run(
            ["git", "rev-parse", ref], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        for name, ref in (("before", args.before), ("after", args.after))
    }
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"gate-split-ab-{stamp}.json"
    workdir = Path(tempfile.mkdtemp(prefix="enforcer-gate-ab-"))
    trees = {name: worktree(c, workdir / f"code-{name}") for name, c in commits.items()}

    # bench.run.start_enforcer starts `python -m streams` in bench.run.ROOT: the worktree
    # of the commit a run measures (AB_CODE in its environment, removed before the start)
    original = run.start_enforcer

    def start_in_tree(s: Any, wd: Path, name: str, env: dict[str, str] | None = None) -> Any:
        env = dict(env or {})
        saved, run.ROOT = run.ROOT, trees[env.pop("AB_CODE")]
        try:
            return original(s, wd, name, env)
        finally:
            run.ROOT = saved

    run.start_enforcer = start_in_tree
    commit_interval.start_enforcer = start_in_tree

    result: dict[str, Any] = {
        "started": stamp,
        "commits": commits,
        "plan": {
            "reps": args.reps,
            "posts": args.posts,
            "users": args.users,
            "rates": rates,
            "latency_seconds": args.latency_seconds,
            "warmup_seconds": args.warmup_seconds,
            "order": "AB, BA, AB, ... (before first in even repetitions)",
            "throughput variants": [v for v, _ in throughput],
        },
        "machine": machine(),
        "runs": [],
    }

    def measured(what: str, code: str, rep: int, measure: Any) -> None:
        entry: dict[str, Any] = {"what": what, "code": code, "commit": commits[code], "rep": rep}
        entry["at"] = datetime.now(UTC).isoformat(timespec="seconds")
        entry["load_before"] = os.getloadavg()
        t0 = time.monotonic()
        try:
            figures = measure()
        except Exception as exc:  # recorded; the other runs go on
            entry["error"] = f"{type(exc).__name__}: {exc}"
            say(f"{what} {code} failed: {entry['error']}")
        else:
            entry["figures"] = {k: v for k, v in figures.items() if k != "distribution_ms"}
        entry["wall_seconds"] = time.monotonic() - t0
        entry["load_after"] = os.getloadavg()
        result["runs"].append(entry)
        result["summary"] = summarise(result["runs"], list(commits))
        path.write_text(json.dumps(result, indent=2))

    started = time.monotonic()
    try:
        with broker(None, workdir) as (bootstrap, kafka, broker_pid):
            result["kafka"] = kafka
            tag = uuid.uuid4().hex[:6]
            posts_topic, objections_topic = f"ab-{tag}-posts", f"ab-{tag}-objections"
            data = settings_for(bootstrap, f"ab-{tag}-data", posts_topic, objections_topic)
            ensure_topics(data, create_inputs=True)
            say(f"producing {args.posts:,} posts for {args.users:,} users")
            result["data"] = produce_data(
                bootstrap, data, Config(posts=args.posts, users=args.users)
            )
            say(f"warming the broker ({args.broker_warmup_seconds:.0f}s, not counted)")
            measured(
                "warmup",
                "before",
                -1,
                lambda: latency_run(
                    bootstrap,
                    workdir,
                    rates[0] if rates else 2000,
                    args.broker_warmup_seconds,
                    1.0,
                    broker_pid,
                    {"AB_CODE": "before"},
                ),
            )
            for rep in range(args.reps):
                ordered = ["before", "after"] if rep % 2 == 0 else ["after", "before"]
                for rate in rates:
                    for code in ordered:
                        say(f"rep {rep + 1}/{args.reps}: {code} latency at {rate:,}/s")
                        measured(
                            f"latency_{rate}",
                            code,
                            rep,
                            lambda rate=rate, code=code: latency_run(
                                bootstrap,
                                workdir,
                                rate,
                                args.latency_seconds,
                                args.warmup_seconds,
                                broker_pid,
                                {"AB_CODE": code},
                            ),
                        )
                for variant, env in throughput:
                    for code in ordered:
                        say(f"rep {rep + 1}/{args.reps}: {code} {variant}")
                        measured(
                            variant,
                            code,
                            rep,
                            lambda code=code, env=env: throughput_run(
                                bootstrap,
                                workdir,
                                posts_topic,
                                objections_topic,
                                args.posts,
                                broker_pid,
                                {**env, "AB_CODE": code},
                            ),
                        )
    finally:
        result["wall_seconds"] = time.monotonic() - started
        loads = [x for r in result["runs"] for x in (r["load_before"][0], r["load_after"][0])]
        if loads:
            result["load_average_1min"] = spread(loads)
        path.write_text(json.dumps(result, indent=2))
        for tree in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT)
        shutil.rmtree(workdir, ignore_errors=True)
    say(f"wrote {path} in {result['wall_seconds']:.0f}s")
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
