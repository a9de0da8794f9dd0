"""The fencing cost tables of README.md and docs/operations.md, from a results file of
``bench.commit_interval``.

    python -m bench.commit_interval_figures [bench/results/commit-interval-<ts>.json ...] [--write]

Prints the table of each file (the newest results file by default); ``--write`` puts the
first file's table between ``<!-- commit-interval:begin -->`` and
``<!-- commit-interval:end -->``, and every file's between ``<!-- commit-interval-all:begin
-->`` and ``<!-- commit-interval-all:end -->``, in each of those files that has them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bench.figures import median_range, results
from bench.report import write_between

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- commit-interval:begin -->", "<!-- commit-interval:end -->"
BEGIN_ALL, END_ALL = "<!-- commit-interval-all:begin -->", "<!-- commit-interval-all:end -->"
TARGETS = (ROOT / "README.md", ROOT / "docs" / "operations.md")


def label(env: dict[str, str]) -> str:
    """A variant as its settings."""
    if env.get("ENFORCER_FENCING") == "off":
        return "fencing off"
    parts = [f"{env.get('ENFORCER_TXN_COMMIT_INTERVAL', 'default')} s"]
    if env.get("ENFORCER_TXN_COMMIT_BLOCKING") == "1":
        parts.append("the event loop waiting for each commit (the previous code)")
    parts += [
        f"`{k}={v}`"
        for k, v in env.items()
        if k
        not in ("ENFORCER_FENCING", "ENFORCER_TXN_COMMIT_INTERVAL", "ENFORCER_TXN_COMMIT_BLOCKING")
    ]
    return "on, " + ", ".join(parts)


def table(result: dict[str, Any]) -> str:
    """A markdown paragraph and table: median (min-max) per variant."""
    plan, summary = result["plan"], result["summary"]
    rates = plan["rates"]
    reps = {
        name: sum(1 for r in result["runs"] if r["variant"] == name and r["kind"] == "throughput")
        for name in result["variants"]
    }
    load = result.get("load_average_1min")
    lines = [
        f"`{Path(result['file']).name}`: {result['machine']['cores']} cores, "
        f"{result['versions']['kafka']} (local, one node), 8 partitions, one worker; "
        f"median (min-max) of {min(reps.values())} interleaved repetitions; latency: post sent "
        f"to its `training-ingest` record readable by a `read_committed` reader "
        f"({plan['latency_seconds']:.0f} s at each rate after {plan['warmup_seconds']:.0f} s "
        f"not counted); throughput over {plan['posts']:,} posts"
        + (
            f"; 1-minute load average {load['min']:.1f}-{load['max']:.1f} during the runs:"
            if load
            else ":"
        ),
        "",
    ]
    head = ["fencing, commit interval"]
    for rate in rates:
        head += [f"p50 / p99 / p99.9 at {rate:,}/s, ms"]
    head += ["posts/s", "worker CPU-s per 1,000 posts", "broker CPU-s per 1,000 posts"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, env in result["variants"].items():
        entry = summary.get(name, {})
        row = [label(env)]
        for rate in rates:
            lat = entry.get(f"latency_{rate}")
            row.append(
                " / ".join(
                    median_range(lat.get(k) if lat else None)
                    for k in ("p50_ms", "p99_ms", "p999_ms")
                )
            )
        tp = entry.get("throughput", {})
        row += [
            median_range(tp.get("per_second")),
            median_range(tp.get("cpu_seconds_per_1000"), 3),
            median_range(tp.get("broker_cpu_seconds_per_1000"), 3),
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", *findings(result)]
    failed = {n: e["failed_runs"] for n, e in summary.items() if e.get("failed_runs")}
    if failed:
        lines += [
            "",
            "Failed runs (not counted): " + ", ".join(f"{n} {c}" for n, c in failed.items()),
        ]
    return "\n".join(lines) + "\n"


def findings(result: dict[str, Any]) -> list[str]:
    """Each fencing variant against fencing off, from the medians: posts/s and CPU per
    post as ratios, and p50/p99 at the lowest rate."""
    summary, variants = result["summary"], result["variants"]
    base_name = next(
        (n for n, env in variants.items() if env.get("ENFORCER_FENCING") == "off"), None
    )
    base = summary.get(base_name or "", {})
    rate = min(result["plan"]["rates"])
    out = []
    for name, env in variants.items():
        if name == base_name or not base:
            continue
        mine = summary.get(name, {})
        tp, tp0 = mine.get("throughput"), base.get("throughput")
        lat = mine.get(f"latency_{rate}")
        if not (tp and tp0 and lat):
            continue
        ratio = tp["per_second"]["median"] / tp0["per_second"]["median"]
        cpu = tp["cpu_seconds_per_1000"]["median"] / tp0["cpu_seconds_per_1000"]["median"]
        out.append(
            f"* {label(env)}: {ratio:.2f} x the posts/s of fencing off, {cpu:.2f} x its worker "
            f"CPU per post; p50/p99 at {rate:,}/s {lat['p50_ms']['median']:,.0f}/"
            f"{lat['p99_ms']['median']:,.0f} ms."
        )
    return out


def write(
    text: str, targets: tuple[Path, ...] = TARGETS, markers: tuple[str, str] = (BEGIN, END)
) -> list[Path]:
    """Put ``text`` between the ``markers`` of each target that has them."""
    begin, end = markers
    return [target for target in targets if write_between(target, text, begin, end)]


def main(argv: list[str]) -> int:
    """Print the table of a results file; ``--write`` also updates the documents."""
    texts = [table(result) for result in results(argv, "commit-interval-*.json")]
    if "--write" in argv:
        written = write(texts[0]) + write("\n".join(texts), markers=(BEGIN_ALL, END_ALL))
        if not written:
            print(f"no {BEGIN} markers in {', '.join(str(t) for t in TARGETS)}", file=sys.stderr)
            return 1
    print("\n".join(texts), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
