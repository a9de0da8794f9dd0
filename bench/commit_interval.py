"""What fencing's commit interval costs: latency seen by a ``read_committed`` reader and
throughput, with fencing off and on at several transaction commit intervals.

    python -m bench.commit_interval [--quick] [--reps 3] [--posts 200000]
        [--variant NAME:VAR=VALUE,VAR=VALUE ...]

One local broker (``bench.run.broker``). Each repetition measures, for every variant in
turn (the order rotated by one each repetition: ABCD, BCDA, CDAB), end-to-end latency at
each rate (``bench.run.latency_run``: p50/p99/p99.9, its reader ``read_committed``) and
then throughput over one pre-generated data set (``bench.run.measure_throughput``), so
the variants share whatever load the machine had at the time. Each variant is a set of
environment variables given to the worker. The load average before and after each run
is recorded. Writes ``bench/results/commit-interval-<timestamp>.json``; the tables in
README.md and docs/operations.md come from it (``python -m bench.commit_interval_figures``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.run import (
    Config,
    broker,
    latency_run,
    machine,
    measure_throughput,
    produce_data,
    say,
    settings_for,
    start_enforcer,
    stop,
    versions,
)
from streams.kafka.topics import ensure_topics

ROOT = Path(__file__).resolve().parent.parent

# name -> the worker's environment; fencing on is the default, the interval is not
VARIANTS: dict[str, dict[str, str]] = {
    "off": {"ENFORCER_FENCING": "off"},
    "on-1.0": {"ENFORCER_FENCING": "on", "ENFORCER_TXN_COMMIT_INTERVAL": "1.0"},
    "on-0.25": {"ENFORCER_FENCING": "on", "ENFORCER_TXN_COMMIT_INTERVAL": "0.25"},
    "on-0.1": {"ENFORCER_FENCING": "on", "ENFORCER_TXN_COMMIT_INTERVAL": "0.1"},
    # the event loop waiting for each commit, as before TransactionCommits (A/B)
    "on-0.1-blocking": {
        "ENFORCER_FENCING": "on",
        "ENFORCER_TXN_COMMIT_INTERVAL": "0.1",
        "ENFORCER_TXN_COMMIT_BLOCKING": "1",
    },
}


@dataclasses.dataclass
class Plan:
    """Sizes of one comparison."""

    reps: int = 3
    posts: int = 200_000
    users: int = 100_000
    rates: tuple[int, ...] = (2000, 10000)
    latency_seconds: float = 20.0
    warmup_seconds: float = 5.0  # of each latency run, reported apart (bench.run)
    broker_warmup_seconds: float = 40.0  # one uncounted run first: a new broker's JIT


QUICK = Plan(
    reps=1,
    posts=5000,
    users=1000,
    rates=(500,),
    latency_seconds=3.0,
    warmup_seconds=1.0,
    broker_warmup_seconds=2.0,
)

LATENCY_KEYS = ("p50_ms", "p99_ms", "p999_ms", "max_ms")
THROUGHPUT_KEYS = (
    "per_second",
    "cpu_seconds_per_1000",
    "broker_cpu_seconds_per_1000",
    "main_thread_busy",
)


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """``NAME:VAR=VALUE,VAR=VALUE`` (no variables: the worker's defaults)."""
    name, _, spec = text.partition(":")
    env = {}
    for item in filter(None, spec.split(",")):
        var, sep, value = item.partition("=")
        if not sep or not var.startswith("ENFORCER_"):
            raise argparse.ArgumentTypeError(f"not VAR=VALUE with an ENFORCER_ variable: {item}")
        env[var] = value
    if not name:
        raise argparse.ArgumentTypeError(f"a variant needs a name: {text}")
    return name, env


def order(names: list[str], rep: int) -> list[str]:
    """The variants in the order of repetition ``rep``: rotated by one each time."""
    shift = rep % len(names)
    return names[shift:] + names[:shift]


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(runs: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Per variant: median and min-max of each figure over the repetitions."""
    out: dict[str, Any] = {}
    for name in names:
        mine = [r for r in runs if r["variant"] == name and "error" not in r]
        entry: dict[str, Any] = {}
        for rate in sorted({r["rate"] for r in mine if r["kind"] == "latency"}):
            got = [r["figures"] for r in mine if r["kind"] == "latency" and r["rate"] == rate]
            entry[f"latency_{rate}"] = {k: spread([g[k] for g in got]) for k in LATENCY_KEYS}
        got = [r["figures"] for r in mine if r["kind"] == "throughput"]
        if got:
            entry["throughput"] = {
                k: spread([g[k] for g in got]) for k in THROUGHPUT_KEYS if all(k in g for g in got)
            }
        entry["failed_runs"] = sum(1 for r in runs if r["variant"] == name and "error" in r)
        out[name] = entry
    return out


def throughput_run(
    bootstrap: str,
    workdir: Path,
    posts_topic: str,
    objections_topic: str,
    expected: int,
    broker_pid: int | None,
    env: dict[str, str],
) -> dict[str, Any]:
    """One worker (its own app id and outputs) over the shared inputs, from the start."""
    prefix = f"tp-{uuid.uuid4().hex[:6]}"
    s = settings_for(bootstrap, prefix, posts_topic, objections_topic)
    ensure_topics(s, create_inputs=True)
    proc, _ = start_enforcer(s, workdir, prefix, env)
    try:
        # the clock starts at the first re-keyed record (or decision), not at the first
        # record of any internal topic: with fencing the changelogs get their end records
        # (outputs.mark_ends) on assignment, seconds before the first post is decided
        figures = measure_throughput(
            proc, bootstrap, s.decisions_topic, expected, 1800, (s.user_events_topic,), broker_pid
        )
    finally:
        stop(proc)
    if "broker_cores" in figures:
        figures["broker_cpu_seconds_per_1000"] = (
            figures["broker_cores"] * figures["seconds"] / figures["records"] * 1000
        )
    return figures


def git_head() -> str:
    """The commit of the code measured (``+`` when the tree has changes), or ``""``."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "streams"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return ""
    return head + ("+" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    """Measure every variant, interleaved, and write the results file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--posts", type=int, default=None, help="posts of the throughput runs")
    parser.add_argument("--rates", default=None, help="comma list of posts/s (latency)")
    parser.add_argument("--latency-seconds", type=float, default=None)
    parser.add_argument(
        "--variant",
        action="append",
        type=parse_variant,
        help="NAME:ENFORCER_VAR=VALUE,... (repeatable; default: VARIANTS)",
    )
    parser.add_argument("--bootstrap-servers", default=None, help="use this broker")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--note", default="", help="what code this measures (into the file)")
    args = parser.parse_args(argv)
    plan = dataclasses.replace(QUICK) if args.quick else Plan()
    if args.reps:
        plan.reps = args.reps
    if args.posts:
        plan.posts = args.posts
    if args.rates:
        plan.rates = tuple(int(r) for r in args.rates.split(","))
    if args.latency_seconds:
        plan.latency_seconds = args.latency_seconds
    variants = dict(args.variant) if args.variant else dict(VARIANTS)
    names = list(variants)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out / f"commit-interval-{stamp}.json"
    workdir = Path(tempfile.mkdtemp(prefix="enforcer-commit-interval-"))
    started = time.monotonic()
    result: dict[str, Any] = {
        "started": stamp,
        "plan": dataclasses.asdict(plan),
        "variants": variants,
        "code": {"commit": git_head(), "note": args.note},
        "machine": machine(),
        "runs": [],
    }

    def record(entry: dict[str, Any]) -> None:
        result["runs"].append(entry)
        result["summary"] = summarise(result["runs"], names)
        path.write_text(json.dumps(result, indent=2))  # kept current: a long run may stop

    def measured(kind: str, variant: str, rep: int, rate: int | None, run: Any) -> None:
        entry: dict[str, Any] = {"kind": kind, "variant": variant, "rep": rep, "rate": rate}
        entry["load_before"] = os.getloadavg()
        entry["at"] = datetime.now(UTC).isoformat(timespec="seconds")
        t0 = time.monotonic()
        try:
            figures = run()
        except Exception as exc:  # recorded; the other runs go on
            entry["error"] = f"{type(exc).__name__}: {exc}"
            logs = sorted(workdir.glob("*.log"), key=lambda p: p.stat().st_mtime)
            if logs:  # the worker's last lines (its log level is warn: no content)
                entry["log_tail"] = logs[-1].read_text(errors="replace")[-3000:]
            say(f"{kind} {variant} failed: {entry['error']}")
        else:
            if kind == "latency":
                figures = {k: v for k, v in figures.items() if k != "distribution_ms"}
            entry["figures"] = figures
        entry["wall_seconds"] = time.monotonic() - t0
        entry["load_after"] = os.getloadavg()
        record(entry)

    with broker(args.bootstrap_servers, workdir) as (bootstrap, kafka, broker_pid):
        result["versions"] = versions(None, kafka)
        run = uuid.uuid4().hex[:6]
        posts_topic, objections_topic = f"ci-{run}-posts", f"ci-{run}-objections"
        data = settings_for(bootstrap, f"ci-{run}-data", posts_topic, objections_topic)
        ensure_topics(data, create_inputs=True)
        say(f"producing {plan.posts:,} posts for {plan.users:,} users on {bootstrap}")
        cfg = Config(posts=plan.posts, users=plan.users)
        result["data"] = produce_data(bootstrap, data, cfg)

        # an uncounted run first: a freshly started broker compiles for its first minute
        say(f"warming the broker ({plan.broker_warmup_seconds:.0f}s, not counted)")
        first = names[0]
        measured(
            "warmup",
            first,
            -1,
            plan.rates[0],
            lambda: latency_run(
                bootstrap,
                workdir,
                plan.rates[0],
                plan.broker_warmup_seconds,
                1.0,
                broker_pid,
                variants[first],
            ),
        )
        for rep in range(plan.reps):
            ordered = order(names, rep)
            for rate in plan.rates:
                for name in ordered:
                    say(f"rep {rep + 1}/{plan.reps}: {name} latency at {rate:,} posts/s")
                    measured(
                        "latency",
                        name,
                        rep,
                        rate,
                        lambda rate=rate, name=name: latency_run(
                            bootstrap,
                            workdir,
                            rate,
                            plan.latency_seconds,
                            plan.warmup_seconds,
                            broker_pid,
                            variants[name],
                        ),
                    )
            for name in ordered:
                say(f"rep {rep + 1}/{plan.reps}: {name} throughput over {plan.posts:,} posts")
                measured(
                    "throughput",
                    name,
                    rep,
                    None,
                    lambda name=name: throughput_run(
                        bootstrap,
                        workdir,
                        posts_topic,
                        objections_topic,
                        plan.posts,
                        broker_pid,
                        variants[name],
                    ),
                )
    result["wall_seconds"] = time.monotonic() - started
    loads = [x for r in result["runs"] for x in (r["load_before"][0], r["load_after"][0])]
    result["load_average_1min"] = spread(loads)
    path.write_text(json.dumps(result, indent=2))
    say(f"wrote {path} in {result['wall_seconds']:.0f}s")
    shutil.rmtree(workdir, ignore_errors=True)
    from bench.commit_interval_figures import table

    print(table({**result, "file": str(path)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
