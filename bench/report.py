"""The README's benchmark table and chart, generated from a results file of
``bench.matrix`` (no figure is copied by hand).

    python -m bench.report [bench/results/matrix-<ts>.json] [--write]

Prints the table of the file (the newest ``matrix-*.json`` by default); ``--write`` puts
it between ``<!-- bench-matrix:begin -->`` and ``<!-- bench-matrix:end -->`` in README.md
and draws ``bench/results/matrix-<ts>.png`` beside the file.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from bench.stats import fmt

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
BEGIN, END = "<!-- bench-matrix:begin -->", "<!-- bench-matrix:end -->"
ORDER = (
    "enforcer",
    "enforcer-alos",
    "enforcer-python",
    "streams",
    "streams-eos",
    "quix",
    "ceiling",
)
NAMES = {
    "enforcer": "enforcer (fencing on, as shipped)",
    "enforcer-alos": "enforcer, fencing off",
    "enforcer-python": "enforcer without the C fast path",
    "streams": "Kafka Streams, at-least-once",
    "streams-eos": "Kafka Streams, exactly_once_v2",
    "quix": "Quix Streams (expert peer)",
    "ceiling": "ceiling (copy loops, the enforcer's records)",
}
# the targets
LATENCY_TARGET_MS, LATENCY_TARGET_RATE = 50.0, 10000
QUIX_TARGET = 3.0


def newest() -> Path:
    files = sorted(RESULTS.glob("matrix-*.json"))
    if not files:
        raise SystemExit("no bench/results/matrix-*.json")
    return files[-1]


def cell(s: dict[str, float] | None, digits: int = 0) -> str:
    """``median (min-max)``."""
    if not s or not s.get("n"):
        return "-"
    return f"{fmt(s['median'], digits)} ({fmt(s['min'], digits)}-{fmt(s['max'], digits)})"


def _load(result: dict[str, Any]) -> str:
    """The machine's 1-minute load average over the runs (it is shared)."""
    loads = [
        r[k]
        for r in [*result.get("runs", []), *_points(result)]
        for k in ("load_average_before", "load_average_after")
        if isinstance(r.get(k), int | float)
    ]
    if not loads:
        return ""
    lo, hi = min(loads), max(loads)
    return f" The machine's 1-minute load average was {lo:.1f}-{hi:.1f} during the runs."


def _points(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for v in result.get("latency", {}).values() for p in v["points"]]


def _systems(result: dict[str, Any], present: Any) -> list[str]:
    return [s for s in ORDER if s in present]


def _records_per_post(result: dict[str, Any], system: str) -> str:
    """Records the system's first run wrote per post, read back from its topics. The
    enforcer deletes its internal topic's records once processed (read back: none); its
    re-keying stage forwards every input once, so they are counted as one per input."""
    inputs = sum(result.get("data", {}).values())
    posts = result.get("data", {}).get("post", 0) or 1
    for run in result.get("runs", []):
        if run["system"] == system and run.get("records_written"):
            written = run["records_written"]
            total = written["records_per_post"] * posts
            purged = [
                t
                for t, v in written["topics"].items()
                if t.endswith("-user-events-repartition") and not v["records"]
            ]
            if purged:
                return f"{(total + inputs) / posts:.2f}*"
            return f"{total / posts:.2f}"
    if system == "ceiling" and result.get("ceiling_calibration"):
        cal = result["ceiling_calibration"]
        posts = result["data"].get("post", 0) or 1
        total = cal["inputs"] + sum(c for c, _ in cal["outputs"].values())
        return f"{total / posts:.2f}"
    return "-"


def cpu_by_thread(result: dict[str, Any], system: str, top: int = 6) -> str:
    """The system's CPU per 1,000 posts by thread (median over its runs), largest first."""
    per: dict[str, list[float]] = {}
    runs = [r for r in result.get("runs", []) if r["system"] == system]
    for run in runs:
        for where, sec in (run.get("thread_cpu_seconds_per_1000") or {}).items():
            per.setdefault(where, []).append(sec)
    if not per:
        return ""
    import statistics

    med = {w: statistics.median(v + [0.0] * (len(runs) - len(v))) for w, v in per.items()}
    best = sorted(med.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"`{w}` {v * 1000:.1f}" for w, v in best)


def startup_notes(lat: dict[str, Any], head: int = 5) -> list[str]:
    """Per system and fixed rate: the worst per-second p99 of the first ``head`` seconds
    and of the rest, and the median per-second p99 of the rest."""
    import statistics

    out = []
    for s in [x for x in ORDER if x in lat]:
        for p in sorted(lat[s]["points"], key=lambda p: p["rate"]):
            per = p.get("per_second") or []
            first = [x["p99_ms"] for x in per if x["second"] < head]
            rest = [x["p99_ms"] for x in per if x["second"] >= head]
            if not first or not rest:
                continue
            out.append(
                f"{NAMES.get(s, s)} at {p['rate']:,}/s: worst second's p99 {fmt(max(first))} ms "
                f"in the first {head} s, {fmt(max(rest))} ms after (median second "
                f"{fmt(statistics.median(rest))} ms)"
            )
    return out


def targets(result: dict[str, Any]) -> list[str]:
    """The issue's targets, each met or missed and by how much."""
    out = []
    ratios = result.get("ratios", {})
    st = ratios.get("streams")
    if st:
        r = st["per_worker_cpu_second"]
        out.append(
            f"enforcer at or above Kafka Streams (at-least-once) per CPU-second: "
            f"**{r:.2f}x**, {'met' if r >= 1 else f'missed by {(1 - r) * 100:.0f}%'}"
            f" (per wall second {st['per_wall_second']:.2f}x)"
        )
    ea = result.get("summary", {}).get("enforcer-alos")
    if st and ea:
        s = result["summary"]
        r = (
            s["streams"]["worker_cpu_seconds_per_1000"]["median"]
            / ea["worker_cpu_seconds_per_1000"]["median"]
        )
        out.append(f"the enforcer with fencing off against the same: **{r:.2f}x** per CPU-second")
    q = ratios.get("quix")
    if q:
        r = q["per_worker_cpu_second"]
        out.append(
            f"at least {QUIX_TARGET:.0f} times the Quix peer per CPU-second: **{r:.2f}x**, "
            + ("met" if r >= QUIX_TARGET else f"missed by {(1 - r / QUIX_TARGET) * 100:.0f}%")
            + f" (per wall second {q['per_wall_second']:.2f}x)"
        )
    lat = result.get("latency", {}).get("enforcer")
    if lat:
        for p in lat["points"]:
            if p["rate"] == LATENCY_TARGET_RATE:
                v = p["p99_ms"]
                out.append(
                    f"p99 under {LATENCY_TARGET_MS:.0f} ms at {LATENCY_TARGET_RATE:,} posts/s, "
                    f"every sample counted: **{fmt(v)} ms**, "
                    + (
                        "met"
                        if v < LATENCY_TARGET_MS
                        else f"missed by {fmt(v - LATENCY_TARGET_MS)} ms"
                    )
                )
    return out


def table(result: dict[str, Any], name: str) -> str:
    """Markdown: a paragraph naming the run, the throughput table, the headline ratios,
    the targets, the equal-outputs verdict and the latency table."""
    cfg, git = result["config"], result.get("git", {})
    summ = result.get("summary", {})
    reps = {s: v["posts_per_second"]["n"] for s, v in summ.items()}
    dirty = " (with uncommitted changes)" if git.get("uncommitted_in_measured_code") else ""
    lines = [
        f"`{name}` (commit `{git.get('commit', '?')[:7]}`{dirty}, {result['started']}): "
        f"{result['machine']['cores']} cores ({result['machine']['cpu_model']}), "
        f"{result.get('versions', {}).get('kafka', '?')} (local, one node), 8 partitions; "
        f"{cfg['posts']:,} posts of {cfg['users']:,} users ({cfg['objector_share']:.0%} "
        f"objecting, their objection events first); each system "
        f"{min(reps.values(), default=0)}-{max(reps.values(), default=0)} times, "
        f"interleaved (the first system of each round rotating); median (min-max). "
        f"Clock: first re-keyed record to the decision completing the set of post ids "
        f"(broker append time); CPU of the system's processes and of the broker over "
        f"that window.{_load(result)}",
        "",
    ]
    if summ:
        head = [
            "system",
            "posts/s",
            "worker CPU-s per 1,000 posts",
            "broker CPU-s per 1,000 posts",
            "peak RSS, MB",
            "records written per post",
        ]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for s in _systems(result, summ):
            f = summ[s]
            lines.append(
                "| "
                + " | ".join(
                    [
                        NAMES.get(s, s),
                        cell(f["posts_per_second"]),
                        cell(f["worker_cpu_seconds_per_1000"], 3),
                        cell(f["broker_cpu_seconds_per_1000"], 3),
                        cell(f["peak_rss_mb"]),
                        _records_per_post(result, s),
                    ]
                )
                + " |"
            )
        if any(_records_per_post(result, s).endswith("*") for s in summ):
            lines.append("")
            lines.append(
                "\\* the enforcer deletes its internal topic's records once processed; its "
                "re-keying stage writes one per input (posts and objection events), counted "
                "here."
            )
        lines.append("")
        ratios = result.get("ratios", {})
        if ratios:
            lines.append("The enforcer (as shipped) over each system, from medians:")
            lines.append("")
            for s in _systems(result, ratios):
                r = ratios[s]
                lines.append(
                    f"* {NAMES.get(s, s)}: **{r['per_worker_cpu_second']:.2f}x** per "
                    f"worker CPU-second, {r['per_cpu_second_with_broker']:.2f}x per CPU-second "
                    f"with the broker's, {r['per_wall_second']:.2f}x per wall second"
                )
            lines.append("")
        where = cpu_by_thread(result, "enforcer")
        if where:
            lines.append(
                "Where the enforcer's CPU goes (CPU-ms per 1,000 posts by thread, median of its "
                "runs; `python/...` is the re-keying child process): " + where + "."
            )
            lines.append("")
        eq = result.get("equal_outputs")
        if eq:
            if eq["equal"]:
                lines.append(
                    f"Equal outputs: every run of every system decided the "
                    f"{eq['distinct_posts_decided']:,} posts with the same outcomes and reasons "
                    f"and left the same {eq['training_keys']:,} keys on `training-ingest` "
                    f"({eq['runs_compared']} runs compared with `{eq['reference']}`)."
                )
            else:
                lines.append(
                    f"**Outputs differ** ({len(eq['differences'])} differences): "
                    + "; ".join(eq["differences"][:3])
                )
            lines.append("")
    lat = result.get("latency", {})
    if lat:
        rates = sorted({p["rate"] for v in lat.values() for p in v["points"]})
        fixed = [r for r in cfg["latency_rates"] if r in rates]
        lines.append(
            f"Latency: a post's send time to its decision readable by a `read_committed` "
            f"reader, every post sent from the moment the system was ready counted (a post "
            f"never decided counts as infinitely late), {cfg['latency_seconds']:.0f} s per "
            f"rate (search steps {cfg['search_seconds']:.0f} s), each on a fresh system "
            f"after the broker was warmed by "
            f"{cfg['broker_warmup_seconds']:.0f} s of unrelated traffic:"
        )
        lines.append("")
        head = ["system"] + [f"p50 / p99 / p99.9 at {r:,}/s, ms" for r in fixed]
        head += ["highest rate with p99 < 100 ms (rates tried)"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for s in _systems(result, lat):
            pts = {p["rate"]: p for p in lat[s]["points"]}
            row = [NAMES.get(s, s)]
            for r in fixed:
                p = pts.get(r)
                row.append(
                    f"{fmt(p['p50_ms'])} / {fmt(p['p99_ms'])} / {fmt(p['p999_ms'])}"
                    + (f" ({p['never_decided']:,} never decided)" if p["never_decided"] else "")
                    if p
                    else "-"
                )
            search = lat[s]["search"]
            best, over = search["highest_under"], search["lowest_over"]
            tried = ", ".join(f"{r:,}: {fmt(pts[r]['p99_ms'])}" for r in sorted(pts))
            if best:
                found = f"{best:,}" + (f" (not {over:,})" if over else "")
            else:
                found = f"none: not even {over:,}" if over else "none"
            row.append(f"{found} [p99 by rate: {tried}]")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    if lat:
        notes = startup_notes(lat)
        if notes:
            lines.append(
                "Where the latency goes: the p99 of each second (from the per-second "
                "timeline in the file), the first seconds after ready against the rest "
                "(every second counts in the table above; this only says when the slow "
                "samples came):"
            )
            lines.append("")
            lines += [f"* {n}" for n in notes]
            lines.append("")
    tg = targets(result)
    if tg:
        lines.append("Targets of issue 20:")
        lines.append("")
        lines += [f"* {t}" for t in tg]
        lines.append("")
    if result.get("failures"):
        lines.append("Runs that failed: " + "; ".join(result["failures"]))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def chart(result: dict[str, Any], path: Path) -> None:
    """Posts/s and CPU per post per system (median, min-max bars), and p99 by rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = result.get("summary", {})
    systems = _systems(result, summ)
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    colors = {
        "enforcer": "#1f77b4",
        "enforcer-alos": "#6baed6",
        "enforcer-python": "#9467bd",
        "streams": "#2ca02c",
        "streams-eos": "#98df8a",
        "quix": "#ff7f0e",
        "ceiling": "#999999",
    }
    labels = [s.replace("-", "\n") for s in systems]

    def bars(ax: Any, figure: str, title: str, digits: int) -> None:
        med = [summ[s][figure]["median"] for s in systems]
        lo = [m - summ[s][figure]["min"] for m, s in zip(med, systems, strict=True)]
        hi = [summ[s][figure]["max"] - m for m, s in zip(med, systems, strict=True)]
        b = ax.bar(labels, med, yerr=[lo, hi], capsize=4, color=[colors[s] for s in systems])
        ax.bar_label(b, labels=[fmt(m, digits) for m in med], padding=2, fontsize=8)
        ax.set_title(title, fontsize=10)

    if systems:
        bars(axes[0], "posts_per_second", "posts/s (median, min-max)", 0)
        bars(axes[1], "worker_cpu_seconds_per_1000", "worker CPU-s per 1,000 posts", 3)
        broker = [summ[s]["broker_cpu_seconds_per_1000"]["median"] for s in systems]
        worker = [summ[s]["worker_cpu_seconds_per_1000"]["median"] for s in systems]
        axes[1].bar(labels, broker, bottom=worker, color="#dddddd", label="+ broker")
        axes[1].legend(fontsize=8)
    lat = result.get("latency", {})
    ax = axes[2]
    for s in _systems(result, lat):
        pts = sorted(lat[s]["points"], key=lambda p: p["rate"])
        ys = [p["p99_ms"] if math.isfinite(p["p99_ms"]) else 1e5 for p in pts]
        ax.plot([p["rate"] for p in pts], ys, "o-", color=colors[s], label=s)
    if lat:
        ax.axhline(100, color="red", lw=0.8, ls="--", label="100 ms")
        ax.axhline(50, color="red", lw=0.8, ls=":", label="50 ms")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("posts/s")
        ax.set_ylabel("p99, ms (every sample)")
        ax.set_title("p99 latency, post sent -> decision readable", fontsize=10)
        ax.legend(fontsize=8)
    commit = result.get("git", {}).get("commit", "?")[:7]
    fig.suptitle(
        f"{path.stem} (commit {commit}): {result['config']['posts']:,} posts, "
        f"{result['machine']['cores']} cores",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_between(path: Path, text: str, begin: str = BEGIN, end: str = END) -> bool:
    """Replace what is between ``begin`` and ``end`` in ``path``; False if no markers."""
    content = path.read_text()
    if begin not in content or end not in content:
        return False
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{text}{end}{tail}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", default=None)
    parser.add_argument("--write", action="store_true")
    parser.add_argument(
        "--marker",
        default=None,
        help="write between <!-- bench-matrix-MARKER:begin/end --> instead (a second run)",
    )
    args = parser.parse_args(argv)
    path = Path(args.file) if args.file else newest()
    result = json.loads(path.read_text())
    text = table(result, path.name)
    print(text)
    if args.write:
        png = path.with_suffix(".png")
        chart(result, png)
        rel = png.relative_to(ROOT) if png.is_relative_to(ROOT) else png
        text += f"\n![{path.stem}]({rel})\n"
        begin, end = BEGIN, END
        if args.marker:
            begin = f"<!-- bench-matrix-{args.marker}:begin -->"
            end = f"<!-- bench-matrix-{args.marker}:end -->"
        if not write_between(README, text, begin, end):
            print(f"no {begin} / {end} in {README}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
