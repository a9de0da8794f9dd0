"""Counters and a latency histogram, rendered in the Prometheus text format."""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Any


def label(value: str) -> str:
    """A label value escaped as the Prometheus text format requires."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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
        self.stage: Any = None  # the re-keying stage: inputs() and dlq() counts
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

    def render(self, ready: bool) -> str:
        """The Prometheus text exposition of every metric."""
        out = [
            "# HELP enforcer_ready 1 when every assigned partition is recovered and consuming.",
            "# TYPE enforcer_ready gauge",
            f"enforcer_ready {int(ready)}",
            "# HELP enforcer_decisions_total Decisions written, by outcome and reason.",
            "# TYPE enforcer_decisions_total counter",
        ]
        for (outcome, reason), n in sorted(self.decisions.items()):
            labels = f'outcome="{label(outcome)}",reason="{label(reason)}"'
            out.append(f"enforcer_decisions_total{{{labels}}} {n}")
        out += [
            "# HELP enforcer_dlq_total Records sent to the dead-letter topic, by source topic.",
            "# TYPE enforcer_dlq_total counter",
        ]
        for topic, n in sorted(self._with_stage(self.dlq, "dlq").items()):
            out.append(f'enforcer_dlq_total{{source_topic="{label(topic)}"}} {n}')
        out += [
            "# HELP enforcer_inputs_total Input records read, by kind.",
            "# TYPE enforcer_inputs_total counter",
        ]
        for kind, n in sorted(self._with_stage(self.inputs, "inputs").items()):
            out.append(f'enforcer_inputs_total{{kind="{label(kind)}"}} {n}')
        out += [
            "# HELP enforcer_objection_events_total Objection events applied to the consent "
            "table, by action.",
            "# TYPE enforcer_objection_events_total counter",
        ]
        for action, n in sorted(self.objections.items()):
            out.append(f'enforcer_objection_events_total{{action="{label(action)}"}} {n}')
        out += [
            "# HELP enforcer_clamped_objection_events_total Objection events dated more than "
            "the allowed clock skew ahead, applied at the time they were read.",
            "# TYPE enforcer_clamped_objection_events_total counter",
            f"enforcer_clamped_objection_events_total {self.clamped_events}",
            "# HELP enforcer_skipped_records_total Input records deleted by retention before "
            "they were processed, by topic (skipped: posts always, others only when accepted).",
            "# TYPE enforcer_skipped_records_total counter",
        ]
        for topic, n in sorted(self._with_stage(self.skipped_records, "skipped").items()):
            out.append(f'enforcer_skipped_records_total{{topic="{label(topic)}"}} {n}')
        registry_errors = sum(
            counter.value
            for counter in (
                getattr(self.codec, "registry_errors", None),
                getattr(self.stage, "registry_errors", None),
            )
            if counter is not None
        )
        out += [
            "# HELP enforcer_schema_registry_errors_total Schema registry requests that "
            "failed (refused, timed out, an error status other than not found), gate and "
            "re-keying stage.",
            "# TYPE enforcer_schema_registry_errors_total counter",
            f"enforcer_schema_registry_errors_total {registry_errors}",
        ]
        out += [
            "# HELP enforcer_retractions_total Retraction records written.",
            "# TYPE enforcer_retractions_total counter",
            f"enforcer_retractions_total {self.retractions}",
            "# HELP enforcer_retracted_posts_total Posts retracted from training-ingest.",
            "# TYPE enforcer_retracted_posts_total counter",
            f"enforcer_retracted_posts_total {self.retracted_posts}",
            "# HELP enforcer_decision_latency_seconds Input record timestamp to decision.",
            "# TYPE enforcer_decision_latency_seconds histogram",
        ]
        cumulative = 0
        for bound, n in zip(LATENCY_BUCKETS, self.latency_counts, strict=False):
            cumulative += n
            out.append(f'enforcer_decision_latency_seconds_bucket{{le="{bound}"}} {cumulative}')
        out.append(f'enforcer_decision_latency_seconds_bucket{{le="+Inf"}} {self.latency_n}')
        out.append(f"enforcer_decision_latency_seconds_sum {self.latency_sum:.6f}")
        out.append(f"enforcer_decision_latency_seconds_count {self.latency_n}")
        return "\n".join(out) + "\n"
