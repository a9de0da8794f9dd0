"""The README's failover figures, from results files of ``bench.failover``.

    python -m bench.failover_figures [bench/results/failover-<timestamp>.json ...] [--write]

Prints a table per file (the newest results file by default), saying which restore
path the workers used (``ENFORCER_DIRECT_RESTORE`` in the file's ``worker_env``);
``--write`` puts them into README.md between ``<!-- failover:begin -->`` and
``<!-- failover:end -->``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.figures import median_range, results
from bench.report import write_between

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- failover:begin -->", "<!-- failover:end -->"


def restore_path(result: dict) -> str:
    """Which restore the workers of a results file used."""
    if "worker_env" not in result:  # files from before the direct restore
        return "Faust's recovery loop"
    if result["worker_env"].get("ENFORCER_DIRECT_RESTORE") == "1":
        return "direct restore (`ENFORCER_DIRECT_RESTORE=1`)"
    return "Faust's recovery loop (`ENFORCER_DIRECT_RESTORE=0`)"


def table(result: dict) -> str:
    cfg = result["config"]
    summary = result["summary"]
    runs = result["runs"]
    loads = [x for r in runs for x in r.get("load_average_at_kill", [])[:1]]
    span = f"{min(loads):.0f}" if loads and min(loads) == max(loads) else ""
    span = span or (f"{min(loads):.0f}-{max(loads):.0f}" if loads else "")
    load = f", load average at the kill {span}" if loads else ""
    commit = result.get("commit", {}).get("head", "")
    at = f", commit {commit[:7]}" if commit else ""
    counts = {m: sum(1 for r in runs if r["mode"] == m) for m in ("cold", "warm")}
    counted = " and ".join(f"{n} {m}" for m, n in counts.items() if n)
    counted += " runs" if sum(counts.values()) > 1 else " run"
    lines = [
        f"`{Path(result['file']).name}` ({restore_path(result)}{at}{load}): "
        f"{cfg['users']:,} users' consent state and "
        f"{cfg['live_posts']:,} live posts, {cfg['partitions']} partitions, "
        f"{cfg['workers']} workers, {cfg['rate_posts_per_s']} posts/s, "
        f"{result['machine']['cores']} cores, {result['versions']['kafka']} "
        f"({cfg['broker']}); median (min-max) of {counted}, seconds after the kill:",
        "",
        "| | partitions decide again | broker timed the member out, rebalance begins "
        "| tables restored in | restore rate (records/s) |",
        "|---|---|---|---|---|",
    ]
    for mode, label in (("cold", "cold (`--standby-replicas 0`)"), ("warm", "warm (`1`)")):
        if not any(r["mode"] == mode for r in runs):
            continue
        s = summary.get(mode, {})
        restore = (
            median_range(s.get("restore_s"), 1) if s.get("restore_s") else "nothing to restore"
        )
        failover = median_range(s.get("failover_s"), 1)
        timed_out = median_range(s.get("rebalance_started_s"), 1)
        rate = median_range(s.get("restore_records_per_s"), 0)
        lines.append(f"| {label} | **{failover}** | {timed_out} | {restore} | {rate} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    text = "\n".join(table(result) for result in results(argv, "failover-*.json"))
    readme = ROOT / "README.md"
    if "--write" in argv and not write_between(readme, text, BEGIN, END):
        print(f"no {BEGIN} / {END} in {readme}", file=sys.stderr)
        return 1
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
