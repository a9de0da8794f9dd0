"""Producing synthetic traffic to the input topics (``generate``, ``demo``, benchmarks)."""

from __future__ import annotations

import argparse
import threading
import time
from collections import Counter
from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streams.kafka.connection import command_config, raise_if_denied
from streams.kafka.registry import make_codec
from streams.settings import Settings, SettingsError
from streams.traffic.generator import Generated, TrafficGenerator


def make_generator(args: argparse.Namespace, settings: Settings) -> TrafficGenerator:
    """A traffic generator from the traffic flags (``generate``, ``demo``)."""
    if args.gen_users < 1:
        raise SettingsError("--users must be at least 1")
    if not 0 <= args.bad_ratio < 1 or not 0 <= args.objection_rate < 1:
        raise SettingsError("--bad-ratio and --objection-rate must be between 0 and 1")
    return TrafficGenerator(
        args.gen_users,
        args.seed,
        objector_share=args.objector_share,
        objection_rate=args.objection_rate,
        bad_ratio=args.bad_ratio,
        codec=make_codec(settings),
    )


def traffic_producer(settings: Settings) -> Producer:
    """A producer like an upstream one: librdkafka's default partitioner, batched. A
    record the cluster refuses raises (``KafkaAccessError`` for a missing ACL) out of
    the ``poll`` or ``flush`` that reports it."""
    return Producer(
        command_config(
            settings,
            {
                "linger.ms": 10,
                "batch.num.messages": 10000,
                "queue.buffering.max.messages": 500000,
                "enable.idempotence": True,
                "compression.type": "none",
                "on_delivery": _StopOnFailedDelivery(settings),
                "delivery.report.only.error": True,
            },
        )
    )


class _StopOnFailedDelivery:
    """A delivery report callback that raises for a record the broker did not take."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            raise_if_denied(err, self.settings)
            raise KafkaException(err)


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
