"""The worker's /metrics: prometheus_client's text format from the worker's counters,
and the consumer lag of each input partition (re-keying stage and gate)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from streams.gate.metrics import Metrics, gate_lags
from streams.rekey.stage import LAG_BASE, LAG_PARTITIONS, Rekeyer, RekeyStage
from streams.serde.codec import Codec
from streams.settings import Settings


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(name, sorted labels) -> value, parsed by prometheus_client's own parser."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_text_parses_and_carries_every_counter():
    m = Metrics()
    m.decisions[("published", "eligible")] += 3
    m.decisions[("blocked", 'odd "reason"\n')] += 1
    m.dlq["posts"] += 2
    m.objections["OBJECT"] += 4
    m.retractions, m.retracted_posts = 1, 5
    m.observe_latency(0.02)
    m.retraction_latency.observe(0.3)
    got = samples(m.render(True, [("gate", "app-user-events", 3, 7)]))
    assert got[("enforcer_ready", ())] == 1
    assert got[("enforcer_decisions_total", (("outcome", "published"), ("reason", "eligible")))]
    odd = (("outcome", "blocked"), ("reason", 'odd "reason"\n'))
    assert got[("enforcer_decisions_total", odd)] == 1  # escaped, and read back whole
    assert got[("enforcer_dlq_total", (("source_topic", "posts"),))] == 2
    assert got[("enforcer_retracted_posts_total", ())] == 5
    assert got[("enforcer_decision_latency_seconds_count", ())] == 1
    assert got[("enforcer_retraction_latency_seconds_bucket", (("le", "0.5"),))] == 1
    lag = (("partition", "3"), ("stage", "gate"), ("topic", "app-user-events"))
    assert got[("enforcer_consumer_lag_records", lag)] == 7


def test_the_rekeying_stage_publishes_the_lag_of_its_assigned_partitions():
    settings = Settings()
    counts = [0] * LAG_BASE + [-1] * (2 * LAG_PARTITIONS)
    rekeyer = Rekeyer(
        settings, Codec(None), threading.Event(), threading.Event(), counts, threading.Event()
    )
    highs = {(settings.posts_topic, 0): 100, (settings.objections_topic, 2): 10}

    class Consumer:
        def get_watermark_offsets(self, tp, cached=False):
            assert cached  # no request to the broker
            return (0, highs.get((tp.topic, tp.partition), -1001))

    rekeyer._done = {
        (settings.posts_topic, 0): 60,
        (settings.objections_topic, 2): 10,
        (settings.posts_topic, 1): 5,  # no fetch yet: not known, not reported
    }
    rekeyer._publish_lags(Consumer())
    stage = SimpleNamespace(settings=settings, counts=counts)
    assert sorted(RekeyStage.lags(stage)) == [
        ("rekey", settings.objections_topic, 2, 0),
        ("rekey", settings.posts_topic, 0, 40),
    ]
    del rekeyer._done[(settings.posts_topic, 0)]  # revoked
    rekeyer._publish_lags(Consumer())
    assert RekeyStage.lags(stage) == [("rekey", settings.objections_topic, 2, 0)]
    metrics = Metrics()
    metrics.stage = SimpleNamespace(
        inputs=dict, dlq=dict, skipped=dict, lags=lambda: RekeyStage.lags(stage)
    )
    lag = (("partition", "2"), ("stage", "rekey"), ("topic", settings.objections_topic))
    assert samples(metrics.render(True))[("enforcer_consumer_lag_records", lag)] == 0


def test_the_gate_lag_is_the_high_watermark_minus_the_next_offset():
    class Consumer:
        def highwater(self, tp):
            return {0: 50, 1: None}.get(tp.partition, 0)

    assert gate_lags(Consumer(), "t", {0: 20, 1: 3}) == [("gate", "t", 0, 30)]
    assert gate_lags(object(), "t", {0: 20}) == []  # no consumer yet


def test_an_objection_that_retracts_posts_is_timed():
    from streams.core.policy import load_policy
    from streams.core.records import KIND_OBJECTION, KIND_POST
    from streams.serde.codec import OBJECTION, POST
    from tests.unit.test_fail_closed import PUBLISHED_POST, _event
    from tests.unit.test_splice import CODEC, _gate, _message

    processor, _out = _gate(False, load_policy())
    processor.gate(_message(KIND_POST, CODEC.encode(POST, PUBLISHED_POST), 0, "u1"))
    assert processor.metrics.retraction_latency.n == 0
    event = _event("e1", "u1", occurred_at=PUBLISHED_POST["created_at"] + 1)
    processor.gate(_message(KIND_OBJECTION, CODEC.encode(OBJECTION, event), 1, "u1"))
    assert processor.metrics.retracted_posts == 1
    assert processor.metrics.retraction_latency.n == 1
