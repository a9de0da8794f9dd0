"""The latency run's load: posts at a fixed rate, each stamped with its send time.

    python -m bench.feed BOOTSTRAP TOPIC RATE SECONDS

Post ids are ``lat-<rate>-<n>-<send time in microseconds>``.

A process of its own, so that its work does not share an interpreter (and a GIL)
with the reader that timestamps arrivals. It has to stay cheap: on 2 cores every
microsecond it spends is taken from the system under test. Posts are encoded once,
from templates, in pieces; per send only the post id and ``created_at`` (the send
time) are encoded. Sends are paced per millisecond tick rather than per record.
"""

from __future__ import annotations

import sys
import time

from confluent_kafka import Producer

from streams.serde.avro_compiled import encode_long
from streams.serde.codec import Codec
from streams.traffic.generator import TrafficGenerator

TEMPLATES = 5000


def avro_string(s: str) -> bytes:
    """Avro's encoding of a string."""
    data = s.encode("utf-8")
    return encode_long(len(data)) + data


def templates(codec: Codec, rate: int) -> list[tuple[bytes, bytes, bytes]]:
    """(header, the fields between post_id and created_at, the fields after it) of
    encoded posts: the Post schema's field order is post_id, user_id, platform,
    visibility, author_country, author_is_adult, created_at, text, media_urls."""
    gen = TrafficGenerator(TEMPLATES, seed=rate, objection_rate=0.0)
    out = []
    for _ in range(TEMPLATES):
        post = gen.post()
        full = codec.encode("Post", post)
        head = full[:10]  # single-object header: marker and schema fingerprint
        body = full[10:]
        start = len(avro_string(post["post_id"]))
        created = encode_long(post["created_at"])
        # the created_at encoding follows the fields before it; find it from the front
        middle_end = body.index(created, start)
        piece = (head, body[start:middle_end], body[middle_end + len(created) :])
        rebuilt = b"".join((head, avro_string(post["post_id"]), piece[1], created, piece[2]))
        assert codec.decode(rebuilt, "Post")[1] == post, "template pieces do not round-trip"
        out.append(piece)
    return out


def main(argv: list[str]) -> int:
    """Send ``RATE`` posts a second for ``SECONDS`` seconds."""
    bootstrap, topic, rate, seconds = argv[0], argv[1], int(argv[2]), float(argv[3])
    codec = Codec()
    pool = templates(codec, rate)
    # an upstream producer as librdkafka configures it by default (linger 5 ms)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    # connected, with the topic's metadata, before the first timed send: the system's
    # latency, not this client's start, from the first sample on
    producer.list_topics(topic, timeout=30)
    produce, now = producer.produce, time.time
    total = int(rate * seconds)
    started = time.monotonic()
    sent = 0
    while sent < total:
        due = min(total, int((time.monotonic() - started) * rate) + 1)
        while sent < due:
            head, middle, tail = pool[sent % TEMPLATES]
            at = now()
            # the send time in microseconds in the id too: a decision (which has the id
            # but not created_at) gives the post's latency
            post_id = f"lat-{rate}-{sent}-{int(at * 1e6)}"
            value = b"".join(
                (head, avro_string(post_id), middle, encode_long(int(at * 1000)), tail)
            )
            produce(topic, value, post_id.encode())
            sent += 1
        producer.poll(0)
        time.sleep(max(0.0, started + sent / rate - time.monotonic()))
    producer.flush(30)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
