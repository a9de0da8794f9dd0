"""Producing synthetic traffic to the input topics (``generate``, ``demo``, benchmarks)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable

from confluent_kafka import Producer

from .generator import Generated, TrafficGenerator
from .settings import Settings


def traffic_producer(settings: Settings) -> Producer:
    """A producer like an upstream one: librdkafka's default partitioner, batched."""
    return Producer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "linger.ms": 10,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 500000,
            "enable.idempotence": True,
            "compression.type": "none",
        }
    )


def produce_records(
    producer: Producer,
    settings: Settings,
    records: Iterable[Generated],
    rate: float = 0.0,
    stop: threading.Event | None = None,
) -> Counter:
    """Produce records (at ``rate`` per second if given); returns counts by kind."""
    topics = {"posts": settings.posts_topic, "objections": settings.objections_topic}
    counts: Counter = Counter()
    started = time.monotonic()
    for i, record in enumerate(records):
        if stop is not None and stop.is_set():
            break
        if rate > 0:
            due = started + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        while True:
            try:
                producer.produce(topics[record.topic_kind], record.value, record.key)
                break
            except BufferError:
                producer.poll(0.05)
        counts[record.kind] += 1
        if i % 1000 == 0:
            producer.poll(0)
    return counts


def produce_traffic(
    settings: Settings,
    gen: TrafficGenerator,
    count: int,
    rate: float = 0.0,
    *,
    objections_first: bool = False,
) -> Counter:
    """Generate and produce ``count`` records, then flush."""
    producer = traffic_producer(settings)
    counts: Counter = Counter()
    if objections_first:
        counts += produce_records(producer, settings, gen.objections_for_all_objectors())
    counts += produce_records(producer, settings, gen.records(count), rate)
    remaining = producer.flush(120)
    if remaining:
        raise RuntimeError(f"{remaining} records were not delivered")
    return counts
