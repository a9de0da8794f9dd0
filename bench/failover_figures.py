"""The README's failover figures, from a results file of ``bench.failover``.

    python -m bench.failover_figures [bench/results/failover-<timestamp>.json] [--write]

Prints the table (the newest results file by default); ``--write`` puts it into
README.md between ``<!-- failover:begin -->`` and ``<!-- failover:end -->``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- failover:begin -->", "<!-- failover:end -->"


def _range(stats: dict | None, digits: int = 1, scale: float = 1.0) -> str:
    if not stats:
        return "-"
    med, lo, hi = (stats[k] * scale for k in ("median", "min", "max"))
    return f"{med:,.{digits}f} ({lo:,.{digits}f}-{hi:,.{digits}f})"


def table(result: dict) -> str:
    cfg = result["config"]
    summary = result["summary"]
    runs = result["runs"]
    lines = [
        f"`{Path(result['file']).name}`: {cfg['users']:,} users' consent state and "
        f"{cfg['live_posts']:,} live posts, {cfg['partitions']} partitions, "
        f"{cfg['workers']} workers, {cfg['rate_posts_per_s']} posts/s, "
        f"{result['machine']['cores']} cores, {result['versions']['kafka']} "
        f"({cfg['broker']}); median (min-max) of "
        f"{sum(1 for r in runs if r['mode'] == 'cold')} cold and "
        f"{sum(1 for r in runs if r['mode'] == 'warm')} warm runs, seconds after the kill:",
        "",
        "| | partitions decide again | broker timed the member out, rebalance begins "
        "| tables restored in | restore rate (records/s) |",
        "|---|---|---|---|---|",
    ]
    for mode, label in (("cold", "cold (`--standby-replicas 0`)"), ("warm", "warm (`1`)")):
        s = summary.get(mode, {})
        restore = _range(s.get("restore_s")) if s.get("restore_s") else "nothing to restore"
        failover, timed_out = _range(s.get("failover_s")), _range(s.get("rebalance_started_s"))
        rate = _range(s.get("restore_records_per_s"), 0)
        lines.append(f"| {label} | **{failover}** | {timed_out} | {restore} | {rate} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    write = "--write" in argv
    paths = [a for a in argv if a != "--write"]
    path = (
        Path(paths[0])
        if paths
        else max((ROOT / "bench" / "results").glob("failover-*.json"), key=lambda p: p.name)
    )
    result = json.loads(path.read_text())
    result["file"] = str(path)
    text = table(result)
    if write:
        readme = ROOT / "README.md"
        content = readme.read_text()
        head, rest = content.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        readme.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
