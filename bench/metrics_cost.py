"""What the worker's metrics cost: an increment on the gate's path and a scrape, with
plain ``Counter`` objects read by a ``prometheus_client`` collector at scrape time (what
the worker does, ``streams/gate/metrics.py``) against ``prometheus_client``'s own labelled
counters updated on the path. ``python -m bench.metrics_cost``; prints microseconds."""

from __future__ import annotations

import timeit
from collections import Counter

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram as PromHistogram

from streams.gate.metrics import LATENCY_BUCKETS, Metrics

OUTCOMES = [("published", "eligible")] + [
    ("blocked", r) for r in ("objected", "private", "minor", "country", "platform", "replay")
]


def best(function, number: int) -> float:
    """Microseconds per call, the best of five runs."""
    return min(timeit.repeat(function, number=number, repeat=5)) / number * 1e6


def main() -> None:
    counts: Counter[tuple[str, str]] = Counter()
    key = OUTCOMES[0]

    def plain() -> None:
        counts[key] += 1

    registry = CollectorRegistry()
    decisions = PromCounter("d", "", ("outcome", "reason"), registry=registry)
    child = decisions.labels(*key)

    def labelled() -> None:
        decisions.labels(*key).inc()

    def cached_child() -> None:
        child.inc()

    print(f"increment: Counter[key] += 1        {best(plain, 200_000):.3f} us")
    print(f"increment: labels(...).inc()        {best(labelled, 200_000):.3f} us")
    print(f"increment: cached child .inc()      {best(cached_child, 200_000):.3f} us")

    # a scrape of a worker with every outcome, 2 input topics x 8 + 8 internal partitions
    metrics = Metrics()
    for i, k in enumerate(OUTCOMES):
        metrics.decisions[k] += 1000 * (i + 1)
        decisions.labels(*k).inc(1000 * (i + 1))
    for _ in range(100):
        metrics.observe_latency(0.03)
    lags = [("gate", "objection-enforcer-user-events", p, 10 * p) for p in range(8)]
    lags += [("rekey", t, p, p) for t in ("posts", "objections") for p in range(8)]
    scrape = best(lambda: metrics.render(True, lags), 500)
    print(f"scrape: collector (the worker)      {scrape:.1f} us")
    hist = PromHistogram("h", "", buckets=LATENCY_BUCKETS, registry=registry)
    for _ in range(100):
        hist.observe(0.03)
    scrape = best(lambda: generate_latest(registry), 500)
    print(f"scrape: prometheus_client metrics   {scrape:.1f} us")


if __name__ == "__main__":
    main()
