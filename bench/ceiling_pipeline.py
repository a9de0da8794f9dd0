"""The true ceiling (issue 20, part 3): the enforcer's record traffic with no work between.

    python -m bench.ceiling_pipeline --bootstrap-servers B --inputs POSTS,OBJECTIONS \\
        --internal T --partitions 8 --group G --inputs-count I \\
        --output decisions=TOPIC:COUNT:BYTES [--output training=TOPIC:COUNT:BYTES ...]

Two processes, as the enforcer runs (a worker and its re-keying child), each a plain
confluent-kafka consume-and-produce loop with the clients tuned as the enforcer's (linger
5 ms, 10,000-record batches, idempotent, acks=all, 100,000 queued records):

1. **re-keying** (a child process): copies every input record's bytes, key and headers
   to the internal topic (``--partitions``), as the enforcer's re-keying stage forwards
   them, without reading the user id (its key is the input's);
2. **gate** (this process): for every internal record writes the records the enforcer
   wrote for it, counted from a real enforcer run's topics: an output given as
   ``TOPIC:COUNT:BYTES`` gets COUNT records over ``--inputs-count`` internal records,
   spread evenly (the k-th record writes floor(k*COUNT/I) - floor((k-1)*COUNT/I)), each
   BYTES long (a slice of the input's bytes, repeated if short), keyed by the input's key.

No decoding, no state, no transactions (the enforcer with fencing commits
transactions; this loop does not). Runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence

from confluent_kafka import Consumer, Producer

PRODUCER = {
    "linger.ms": 5,
    "batch.num.messages": 10000,
    "queue.buffering.max.messages": 1000000,
    "enable.idempotence": True,
    "acks": "all",
}
CONSUMER = {
    "auto.offset.reset": "earliest",
    "enable.auto.commit": True,
    "fetch.wait.max.ms": 10,
    "queued.min.messages": 100000,
}


def _produce(producer: Producer, topic: str, value: bytes | None, key: bytes | None, **kw) -> None:
    while True:
        try:
            producer.produce(topic, value, key, **kw)
            return
        except BufferError:
            producer.poll(0.01)


def sized(value: bytes, size: int) -> bytes:
    """``value`` cut or repeated to ``size`` bytes."""
    if not value:
        return bytes(size)
    if len(value) >= size:
        return value[:size]
    return (value * (size // len(value) + 1))[:size]


def spread(k: int, count: int, total: int) -> int:
    """How many of ``count`` records the ``k``-th (1-based) of ``total`` inputs writes."""
    return (k * count) // total - ((k - 1) * count) // total


def run(args: argparse.Namespace, stage: str, stopping: threading.Event) -> None:
    """One stage's loop, until ``stopping``."""
    group = f"{args.group}-{stage}"
    consumer = Consumer(
        {"bootstrap.servers": args.bootstrap_servers, "group.id": group, **CONSUMER}
    )
    producer = Producer({"bootstrap.servers": args.bootstrap_servers, **PRODUCER})
    if stage == "rekey":
        consumer.subscribe(args.inputs.split(","))
        internal = args.internal
        while not stopping.is_set():
            for msg in consumer.consume(10000, timeout=0.2):
                if msg.error():
                    continue
                _produce(producer, internal, msg.value(), msg.key(), headers=msg.headers())
            producer.poll(0)
    else:
        outputs = []
        for spec in args.output:
            _name, rest = spec.split("=", 1)
            topic, count, size = rest.rsplit(":", 2)
            outputs.append((topic, int(count), int(size)))
        total = max(1, args.inputs_count)
        consumer.subscribe([args.internal])
        k = 0
        while not stopping.is_set():
            for msg in consumer.consume(10000, timeout=0.2):
                if msg.error():
                    continue
                k += 1
                value, key = msg.value() or b"", msg.key()
                for topic, count, size in outputs:
                    for _ in range(spread(k, count, total)):
                        _produce(producer, topic, sized(value, size), key)
            producer.poll(0)
    producer.flush(30)
    with contextlib.suppress(Exception):
        consumer.close()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling_pipeline", description=__doc__)
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--inputs", required=True, help="input topics, comma separated")
    parser.add_argument("--internal", required=True)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--group", required=True)
    parser.add_argument("--inputs-count", type=int, required=True)
    parser.add_argument("--output", action="append", default=[], help="NAME=TOPIC:COUNT:BYTES")
    parser.add_argument("--stage", choices=("both", "rekey", "gate"), default="both")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    child = None
    if args.stage == "both":
        raw = list(sys.argv[1:] if argv is None else argv)
        child = subprocess.Popen(
            [sys.executable, "-m", "bench.ceiling_pipeline", *raw, "--stage", "rekey"],
            cwd=os.getcwd(),
        )
    try:
        run(args, "rekey" if args.stage == "rekey" else "gate", stopping)
    finally:
        if child is not None:
            child.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(30)
            if child.poll() is None:
                child.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
