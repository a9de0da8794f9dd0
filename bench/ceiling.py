"""The client ceiling: a plain confluent-kafka consume-and-produce loop that copies
records byte for byte, with no decoding. Prints one JSON line of figures.

    python -m bench.ceiling --bootstrap-servers B --source T --target T --count N
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from confluent_kafka import Consumer, Producer


def main() -> None:
    """Copy ``--count`` records from ``--source`` to ``--target`` as fast as possible."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args()
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap_servers,
            "group.id": f"ceiling-{time.time_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            "fetch.wait.max.ms": 10,
            "queued.min.messages": 100000,
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap_servers,
            "linger.ms": 5,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1000000,
            "enable.idempotence": True,
            "acks": "all",
        }
    )
    consumer.subscribe([args.source])
    copied = 0
    first = None
    cpu0 = time.process_time()
    while copied < args.count:
        for msg in consumer.consume(10000, timeout=0.5):
            if msg.error():
                continue
            if first is None:
                first = time.monotonic()
                cpu0 = time.process_time()
            while True:
                try:
                    producer.produce(args.target, msg.value(), msg.key())
                    break
                except BufferError:
                    producer.poll(0.01)
            copied += 1
        producer.poll(0)
    producer.flush(60)
    elapsed = time.monotonic() - (first or time.monotonic())
    cpu = time.process_time() - cpu0
    consumer.close()
    print(
        json.dumps(
            {
                "records": copied,
                "seconds": elapsed,
                "per_second": copied / elapsed if elapsed else 0.0,
                "cpu_seconds_per_1000": cpu / copied * 1000 if copied else 0.0,
                "cores": cpu / elapsed if elapsed else 0.0,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


if __name__ == "__main__":
    main()
