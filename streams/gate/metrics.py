"""The worker's counters and latency histograms, and their Prometheus exposition.

The agents update plain ``Counter`` objects and integers (the fast path adds a batch's
counts at once); nothing on that path touches ``prometheus_client``. At each scrape a
``prometheus_client`` collector (``_Collector``) reads them and yields metric families,
and ``prometheus_client`` writes the text format (label escaping included). Measured on
this machine (``bench/metrics_cost.py``): ``Counter[key] += 1`` costs about 0.25 us,
``prometheus_client``'s ``labels(...).inc()`` about 2.2 us (0.5 us on a cached child); a
scrape about 0.6 ms. See "Health" in docs/operations.md.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector


def label(value: str) -> str:
    """A label value escaped as the Prometheus text format requires (what
    ``prometheus_client`` does; kept for callers writing the format by hand)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# (stage, topic, partition, lag in records): the consumer lag of one input partition
Lag = tuple[str, str, int, int]


class Histogram:
    """Counts per bucket of LATENCY_BUCKETS (not cumulative), their sum and count."""

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0
        self.n = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds
        self.n += 1

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        buckets, cumulative = [], 0
        for bound, n in zip(LATENCY_BUCKETS, self.counts, strict=False):
            cumulative += n
            buckets.append((str(bound), cumulative))
        buckets.append(("+Inf", self.n))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.sum)


class Metrics:
    """The worker's metrics; cheap to update from the agents."""

    def __init__(self) -> None:
        self.decisions: Counter[tuple[str, str]] = Counter()
        self.dlq: Counter[str] = Counter()
        self.retractions = 0
        self.retracted_posts = 0
        self.inputs: Counter[str] = Counter()
        self.objections: Counter[str] = Counter()
        self.clamped_events = 0  # objection events dated too far ahead, applied when read
        # input records lost to retention before they were processed, by topic
        self.skipped_records: Counter[str] = Counter()
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.latency_n = 0
        # input record timestamp of an objection event to its retraction's records
        self.retraction_latency = Histogram()
        self.stage: Any = None  # the re-keying stage: inputs(), dlq(), lags() counts
        self.codec: Any = None  # the gate's codec: its failed schema registry requests

    def _with_stage(self, own: Counter[str], name: str) -> Counter[str]:
        if self.stage is None:
            return own
        return own + Counter(getattr(self.stage, name)())

    def observe_latency(self, seconds: float) -> None:
        """Record one decision latency (input timestamp to decision)."""
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        self.latency_n += 1

    def add_latencies(self, counts: tuple[int, ...], total: float, n: int) -> None:
        """Record ``n`` latencies at once: their count per bucket and their sum."""
        for bucket, count in enumerate(counts):
            self.latency_counts[bucket] += count
        self.latency_sum += total
        self.latency_n += n

    def render(self, ready: bool, lags: Iterable[Lag] = ()) -> str:
        """The Prometheus text exposition (format 0.0.4) of every metric; ``lags``: the
        gate's input partitions' lags (the re-keying stage's come from ``stage``)."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self, ready, lags))
        return generate_latest(registry).decode("utf-8")


class _Collector(Collector):
    """Metric families read from a ``Metrics`` at scrape time."""

    def __init__(self, metrics: Metrics, ready: bool, lags: Iterable[Lag]) -> None:
        self.metrics, self.ready, self.lags = metrics, ready, lags

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        yield GaugeMetricFamily(
            "enforcer_ready",
            "1 when every assigned partition is recovered and consuming.",
            value=int(self.ready),
        )
        family = CounterMetricFamily(
            "enforcer_decisions_total",
            "Decisions written, by outcome and reason.",
            labels=("outcome", "reason"),
        )
        for (outcome, reason), n in sorted(m.decisions.items()):
            family.add_metric((outcome, reason), n)
        yield family
        yield _by_label(
            "enforcer_dlq_total",
            "Records sent to the dead-letter topic, by source topic.",
            "source_topic",
            m._with_stage(m.dlq, "dlq"),
        )
        yield _by_label(
            "enforcer_inputs_total",
            "Input records read, by kind.",
            "kind",
            m._with_stage(m.inputs, "inputs"),
        )
        yield _by_label(
            "enforcer_objection_events_total",
            "Objection events applied to the consent table, by action.",
            "action",
            m.objections,
        )
        yield CounterMetricFamily(
            "enforcer_clamped_objection_events_total",
            "Objection events dated more than the allowed clock skew ahead, applied at the "
            "time they were read.",
            value=m.clamped_events,
        )
        yield _by_label(
            "enforcer_skipped_records_total",
            "Input records deleted by retention before they were processed, by topic "
            "(skipped: posts always, others only when accepted).",
            "topic",
            m._with_stage(m.skipped_records, "skipped"),
        )
        registry_errors = sum(
            counter.value
            for counter in (
                getattr(m.codec, "registry_errors", None),
                getattr(m.stage, "registry_errors", None),
            )
            if counter is not None
        )
        yield CounterMetricFamily(
            "enforcer_schema_registry_errors_total",
            "Schema registry requests that failed (refused, timed out, an error status other "
            "than not found), gate and re-keying stage.",
            value=registry_errors,
        )
        yield CounterMetricFamily(
            "enforcer_retractions_total", "Retraction records written.", value=m.retractions
        )
        yield CounterMetricFamily(
            "enforcer_retracted_posts_total",
            "Posts retracted from training-ingest.",
            value=m.retracted_posts,
        )
        latency = Histogram()
        latency.counts, latency.sum, latency.n = m.latency_counts, m.latency_sum, m.latency_n
        yield latency.family(
            "enforcer_decision_latency_seconds", "Input record timestamp to decision."
        )
        yield m.retraction_latency.family(
            "enforcer_retraction_latency_seconds",
            "Objection event's record timestamp (as written to the objections topic) to its "
            "retraction's records produced, per objection event that retracted posts.",
        )
        lag = GaugeMetricFamily(
            "enforcer_consumer_lag_records",
            "Records of an assigned input partition not yet processed (high watermark "
            "minus the next offset to process), by stage (rekey: posts and objections; "
            "gate: the internal user-events topic).",
            labels=("stage", "topic", "partition"),
        )
        stage_lags = getattr(m.stage, "lags", None)
        every = [*(stage_lags() if stage_lags is not None else ()), *self.lags]
        for stage, topic, partition, n in sorted(every):
            lag.add_metric((stage, topic, str(partition)), n)
        yield lag


def _by_label(name: str, documentation: str, key: str, counts: Counter[str]) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=(key,))
    for value, n in sorted(counts.items()):
        family.add_metric((value,), n)
    return family


def gate_lags(consumer: Any, topic: str, expected: dict[int, int]) -> list[Lag]:
    """The lag of each partition of the gate's input topic assigned here: the Faust
    consumer's high watermark (from its last fetch, no request) minus the next offset
    the gate processes (``OffsetTracker.expected``). A partition whose high watermark
    is not known yet is left out."""
    from faust.types import TP

    lags: list[Lag] = []
    for partition, offset in list(expected.items()):
        try:
            high = consumer.highwater(TP(topic, partition))
        except Exception:  # not started, or the partition just revoked
            continue
        if high is not None and high >= 0:
            lags.append(("gate", topic, partition, max(0, high - offset)))
    return lags
