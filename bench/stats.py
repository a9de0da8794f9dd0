"""The pure parts of the benchmark (``bench/matrix.py``): statistics, the order of the
runs, the equal-outputs comparison, the latency search. No Kafka, no processes: tested by
``tests/unit/test_bench_stats.py``."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# outcome and reason of each decision on a post, in the order written (consecutive
# repeats collapsed: an at-least-once redelivery is not a different outcome)
Decisions = dict[str, tuple[tuple[str, str], ...]]


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of ``values`` (and how many)."""
    if not values:
        return {"n": 0, "median": math.nan, "min": math.nan, "max": math.nan}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def quantile(ordered: Sequence[float], p: float) -> float:
    """The ``p`` quantile of sorted ``ordered`` by nearest rank (the smallest value with at
    least ``p`` of the values at or below it); NaN when empty."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(p * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def order(systems: Sequence[str], reps: int) -> list[tuple[int, str]]:
    """(repetition, system) in the order to run them: every system once per round, the
    round's first system rotating (A B C, B C A, C A B, ...)."""
    out = []
    for rep in range(reps):
        k = rep % len(systems)
        out += [(rep, s) for s in [*systems[k:], *systems[:k]]]
    return out


def collapse(pairs: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """``pairs`` with consecutive repeats removed."""
    out: list[tuple[str, str]] = []
    for pair in pairs:
        if not out or out[-1] != pair:
            out.append(pair)
    return tuple(out)


def final_keys(records: Iterable[tuple[bytes | None, bytes | None]]) -> frozenset[bytes]:
    """The keys a compacted topic keeps, given its records (key, value) in offset order
    per key: the last value per key wins, a tombstone (None) removes the key."""
    live: dict[bytes | None, bool] = {}
    for key, value in records:
        live[key] = value is not None
    return frozenset(k for k, alive in live.items() if alive and k is not None)


@dataclass
class Outputs:
    """What one run of a system decided: per post id its decisions, and the final key set
    of its ``training-ingest``."""

    decisions: Decisions
    training: frozenset[bytes]
    label: str = ""

    def distinct_posts(self) -> int:
        return len(self.decisions)


def compare(expected: Outputs, got: Outputs, limit: int = 10) -> list[str]:
    """Every difference between two runs' outputs, worded (at most ``limit`` examples of
    each kind, with counts); empty when equal."""
    diffs: list[str] = []
    a, b = expected.decisions, got.decisions
    who = f"{got.label} vs {expected.label}"
    missing = sorted(a.keys() - b.keys())
    extra = sorted(b.keys() - a.keys())
    if missing:
        diffs.append(f"{who}: {len(missing)} posts without a decision, e.g. {missing[:limit]}")
    if extra:
        diffs.append(f"{who}: {len(extra)} posts decided only here, e.g. {extra[:limit]}")
    changed = sorted(p for p in a.keys() & b.keys() if a[p] != b[p])
    if changed:
        examples = [f"{p}: {_words(b[p])} instead of {_words(a[p])}" for p in changed[:limit]]
        diffs.append(f"{who}: {len(changed)} posts decided otherwise, e.g. " + "; ".join(examples))
    lost = sorted(expected.training - got.training)
    more = sorted(got.training - expected.training)
    if lost or more:
        diffs.append(
            f"{who}: final training-ingest differs: {len(lost)} keys missing "
            f"(e.g. {[k.decode(errors='replace') for k in lost[:limit]]}), {len(more)} extra "
            f"(e.g. {[k.decode(errors='replace') for k in more[:limit]]})"
        )
    return diffs


def _words(decisions: tuple[tuple[str, str], ...]) -> str:
    return " then ".join(f"{o}/{r}" for o, r in decisions) or "nothing"


@dataclass
class Comparison:
    """Every run's outputs compared with the first run's (the reference)."""

    reference: Outputs | None = None
    runs: int = 0
    differences: list[str] = field(default_factory=list)

    def add(self, outputs: Outputs) -> list[str]:
        """Compare ``outputs`` with the reference (or make it the reference); the
        differences found."""
        self.runs += 1
        if self.reference is None:
            self.reference = outputs
            return []
        found = compare(self.reference, outputs)
        self.differences += found
        return found

    def as_dict(self) -> dict[str, object]:
        ref = self.reference
        return {
            "equal": not self.differences,
            "runs_compared": self.runs,
            "reference": ref.label if ref else None,
            "distinct_posts_decided": ref.distinct_posts() if ref else 0,
            "training_keys": len(ref.training) if ref else 0,
            "outcomes": _outcome_counts(ref.decisions) if ref else {},
            "differences": self.differences,
        }


def _outcome_counts(decisions: Decisions) -> dict[str, int]:
    counts: dict[str, int] = {}
    for seq in decisions.values():
        key = " then ".join(f"{o}/{r}" for o, r in seq)
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


# -- per-run figures into the summary ------------------------------------------------
FIGURES = (
    "posts_per_second",
    "worker_cpu_seconds_per_1000",
    "broker_cpu_seconds_per_1000",
    "total_cpu_seconds_per_1000",
    "peak_rss_mb",
)


def summary(runs: Iterable[Mapping[str, object]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per system, median/min/max of each of ``FIGURES`` over its runs."""
    by_system: dict[str, list[Mapping[str, object]]] = {}
    for run in runs:
        by_system.setdefault(str(run["system"]), []).append(run)
    return {
        system: {
            f: summarize([float(r[f]) for r in rs if isinstance(r.get(f), int | float)])  # type: ignore[arg-type]
            for f in FIGURES
        }
        for system, rs in by_system.items()
    }


def ratios(
    summ: Mapping[str, Mapping[str, Mapping[str, float]]], subject: str = "enforcer"
) -> dict[str, dict[str, float]]:
    """The headline: ``subject`` over every other system, from medians, per wall second
    (posts/s over posts/s) and per CPU-second (posts per worker CPU-second; and per
    CPU-second of the worker and the broker together)."""
    out: dict[str, dict[str, float]] = {}
    me = summ.get(subject)
    if not me:
        return out
    for other, fig in summ.items():
        if other == subject:
            continue
        out[other] = {
            "per_wall_second": me["posts_per_second"]["median"] / fig["posts_per_second"]["median"],
            "per_worker_cpu_second": fig["worker_cpu_seconds_per_1000"]["median"]
            / me["worker_cpu_seconds_per_1000"]["median"],
            "per_cpu_second_with_broker": fig["total_cpu_seconds_per_1000"]["median"]
            / me["total_cpu_seconds_per_1000"]["median"],
        }
    return out


# -- latency ----------------------------------------------------------------------------
def latency_figures(latencies_ms: Sequence[float], sent: int) -> dict[str, float]:
    """p50/p99/p99.9/max over every post sent: a post never decided counts as infinitely
    late (so it moves the percentiles instead of vanishing)."""
    ordered = sorted(latencies_ms)
    missing = max(0, sent - len(ordered))
    full = ordered + [math.inf] * missing
    return {
        "sent": sent,
        "decided": len(ordered),
        "never_decided": missing,
        "p50_ms": quantile(full, 0.5),
        "p99_ms": quantile(full, 0.99),
        "p999_ms": quantile(full, 0.999),
        "max_ms": full[-1] if full else math.nan,
    }


def next_rate(p99_by_rate: Mapping[int, float], limit_ms: float = 100.0) -> int | None:
    """The next rate to try in the search for the highest rate whose p99 stays under
    ``limit_ms``: double above the highest passing rate when nothing above it was tried,
    halve below the lowest when nothing passes, else bisect the gap between the highest
    passing rate and the lowest failing one above it (None when that gap is within 15%)."""
    if not p99_by_rate:
        return None
    passing = [r for r, p in p99_by_rate.items() if p < limit_ms]
    failing = [r for r, p in p99_by_rate.items() if not p < limit_ms]
    if not passing:
        low = min(failing)
        return low // 2 if low > 250 else None
    best = max(passing)
    above = [r for r in failing if r > best]
    if not above:
        return best * 2
    gap = min(above)
    if gap - best <= 0.15 * best:
        return None
    return int(round((best + gap) / 2, -2)) or None


def highest_passing(p99_by_rate: Mapping[int, float], limit_ms: float = 100.0) -> dict[str, object]:
    """The highest rate tried whose p99 was under ``limit_ms``, and the lowest tried above
    it whose p99 was not (the bracket of the search)."""
    passing = [r for r, p in p99_by_rate.items() if p < limit_ms]
    best = max(passing) if passing else None
    above = [r for r, p in p99_by_rate.items() if not p < limit_ms and (best is None or r > best)]
    return {"highest_under": best, "lowest_over": min(above) if above else None}


def fmt(value: float, digits: int = 0) -> str:
    """A figure for a table: thousands separated; NaN and infinity as words."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "never"
    return f"{value:,.{digits}f}"
