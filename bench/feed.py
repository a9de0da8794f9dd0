"""The latency run's load: posts at a fixed rate, each stamped with its send time.

    python -m bench.feed BOOTSTRAP TOPIC RATE SECONDS

A process of its own, so that its work does not share an interpreter (and a GIL)
with the reader that timestamps arrivals. ``created_at`` is set when the post is sent;
sends are paced per millisecond tick rather than per record.
"""

from __future__ import annotations

import sys
import time

from confluent_kafka import Producer

from streams.codec import Codec
from streams.generator import TrafficGenerator


def main(argv: list[str]) -> int:
    """Send ``RATE`` posts a second for ``SECONDS`` seconds."""
    bootstrap, topic, rate, seconds = argv[0], argv[1], int(argv[2]), float(argv[3])
    codec = Codec()
    gen = TrafficGenerator(5000, seed=rate, objection_rate=0.0)
    # an upstream producer as librdkafka configures it by default (linger 5 ms)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    total = int(rate * seconds)
    started = time.monotonic()
    sent = 0
    while sent < total:
        due = min(total, int((time.monotonic() - started) * rate) + 1)
        while sent < due:
            post = gen.post()
            post["created_at"] = int(time.time() * 1000)
            producer.produce(topic, codec.encode("Post", post), post["post_id"].encode())
            sent += 1
        producer.poll(0)
        time.sleep(max(0.0, started + sent / rate - time.monotonic()))
    producer.flush(30)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
