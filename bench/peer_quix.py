"""The enforcer's gate written with Quix Streams: the peer of the throughput benchmark.

    python -m bench.peer_quix --bootstrap-servers HOST:PORT --app-id ID \\
        --posts-topic T --objections-topic T --training-topic T --retractions-topic T \\
        --decisions-topic T --dlq-topic T --state-dir DIR

Same semantics as the Faust enforcer, on the same pure modules (codec, records,
consent, enforcement, policy); only the stream processing is Quix's:

1. ``posts`` and ``objections`` are read as raw bytes, decoded and checked; a record
   that fails goes, unchanged and with an ``error`` header, to the DLQ (a branch).
2. The two valid streams are merged (``concat``) and re-keyed by ``user_id``
   (``group_by``: one internal repartition topic), so one stateful step sees each
   user's posts and objection events in order.
3. The stateful step (RocksDB, keyed by user) holds the consent state and the live
   posts, calls ``on_post`` / ``on_objection`` and returns the output records, which
   are produced by ``to_topic`` (training records and tombstones, retractions,
   decisions), encoded with ``Codec.encode`` and keyed like the enforcer's.

Runs until SIGTERM or SIGINT; at-least-once (state and offsets are committed after
the outputs are flushed, at each checkpoint).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from quixstreams import Application, State, message_context
from quixstreams.dataframe import StreamingDataFrame
from quixstreams.models import Topic
from quixstreams.models.serializers import SerializationContext, Serializer

from streams.codec import (
    DECISION,
    OBJECTION,
    POST,
    RETRACTION,
    TRAINING_RECORD,
    Codec,
    DecodeError,
)
from streams.consent import decode_state, encode_state
from streams.enforcement import Effects, Source, on_objection, on_post
from streams.policy import Policy, load_policy
from streams.records import SRC_OFFSET, SRC_PARTITION, SRC_TOPIC, check_objection, check_post

KIND_POST, KIND_OBJECTION = "p", "o"  # the "k" field of a decoded value
CONSENT, LIVE = "consent", "live"  # the two state keys of a user
# An output record: (topic, key, value or None for a tombstone, timestamp in ms)
Output = tuple[Topic, bytes, bytes | None, int]


class Payload(Serializer):
    """Value serializer of the output topics: the encoded bytes of an ``Output``."""

    def __call__(self, value: Output, ctx: SerializationContext) -> bytes | None:
        """The value bytes (``None``: a tombstone)."""
        return value[2]


def _now_ms() -> int:
    return int(time.time() * 1000)


class Gate:
    """Per-record logic: decode and check inputs, enforce, build the output records."""

    def __init__(self, policy: Policy, codec: Codec, outputs: dict[str, Topic]) -> None:
        self.policy = policy
        self.codec = codec
        self.training = outputs["training"]
        self.retractions = outputs["retractions"]
        self.decisions = outputs["decisions"]

    def decoder(
        self, name: str, kind: str, check: Callable[[dict[str, Any]], None]
    ) -> Callable[[bytes | None], dict[str, Any]]:
        """A step reading raw values of one input topic into ``{"k", "r", "s"}`` (kind,
        record, source), or ``{"e", "v", "s"}`` (error, raw value, source) if invalid."""
        decode = self.codec.decode

        def step(value: bytes | None) -> dict[str, Any]:
            ctx = message_context()
            source = [ctx.topic, ctx.partition, ctx.offset]
            try:
                _, record = decode(value, name)  # type: ignore[arg-type]  # None: DecodeError
                check(record)
            except DecodeError as exc:
                return {"e": str(exc), "v": value, "s": source}
            return {"k": kind, "r": record, "s": source}

        return step

    def enforce(self, value: dict[str, Any], state: State) -> list[Output]:
        """Decide a post or apply an objection event for the user of the current key."""
        record, now = value["r"], _now_ms()
        source = Source(*value["s"])
        stored = state.get(CONSENT)
        consent = decode_state(stored.encode() if stored else None)
        live: dict[str, str] = state.get(LIVE) or {}
        if value["k"] == KIND_POST:
            fx = on_post(self.policy, record, consent, record["post_id"] in live, now, source)
        else:
            new_state, fx = on_objection(self.policy, consent, record, live, now, source)
            # always written, as the enforcer does, even when unchanged
            state.set(CONSENT, encode_state(new_state).decode())
        if fx.ledger_add or fx.ledger_remove:
            live.update(fx.ledger_add)
            for post_id in fx.ledger_remove:
                live.pop(post_id, None)
            if live:
                state.set(LIVE, live)
            else:
                state.delete(LIVE)
        return self.outputs(fx, now)

    def outputs(self, fx: Effects, now: int) -> list[Output]:
        """The records of ``fx``, in the enforcer's order and with its keys."""
        enc, out = self.codec.encode, []
        training, retractions, decisions = self.training, self.retractions, self.decisions
        for record in fx.publish:
            value = enc(TRAINING_RECORD, record, training.name)
            out.append((training, record["post_id"].encode(), value, now))
        out.extend((training, post_id.encode(), None, now) for post_id in fx.tombstones)
        for record in fx.retractions:
            value = enc(RETRACTION, record, retractions.name)
            out.append((retractions, record["user_id"].encode(), value, now))
        for record in fx.decisions:
            value = enc(DECISION, record, decisions.name)
            out.append((decisions, record["post_id"].encode(), value, now))
        return out


def _is_valid(value: dict[str, Any]) -> bool:
    return "e" not in value


def _is_invalid(value: dict[str, Any]) -> bool:
    return "e" in value


def _dlq_headers(value: dict[str, Any], _key: Any, _ts: int, headers: list) -> list:
    topic, partition, offset = value["s"]
    return [
        *headers,
        ("error", value["e"].encode("utf-8", "replace")),
        (SRC_TOPIC, topic.encode()),
        (SRC_PARTITION, str(partition).encode()),
        (SRC_OFFSET, str(offset).encode()),
    ]


def build(app: Application, args: argparse.Namespace, policy: Policy) -> None:
    """Declare the topics and the dataframe topology on ``app``."""
    raw = {"value_deserializer": "bytes", "key_deserializer": "bytes"}
    posts = app.topic(args.posts_topic, **raw)
    objections = app.topic(args.objections_topic, **raw)
    dlq = app.topic(args.dlq_topic, value_serializer="bytes", key_serializer="bytes")
    payload = Payload()
    outputs = {
        name: app.topic(topic, value_serializer=payload, key_serializer="bytes")
        for name, topic in (
            ("training", args.training_topic),
            ("retractions", args.retractions_topic),
            ("decisions", args.decisions_topic),
        )
    }
    gate = Gate(policy, Codec(), outputs)

    def valid(topic: Topic, name: str, kind: str, check: Callable) -> StreamingDataFrame:
        decoded = app.dataframe(topic).apply(gate.decoder(name, kind, check))
        invalid = decoded.filter(_is_invalid).set_headers(_dlq_headers)
        invalid.apply(lambda v: v["v"]).to_topic(dlq)  # the value unchanged
        return decoded.filter(_is_valid)

    merged = valid(posts, POST, KIND_POST, check_post).concat(
        valid(objections, OBJECTION, KIND_OBJECTION, check_objection)
    )
    by_user = merged.group_by(
        lambda v: v["r"]["user_id"], name="user", key_serializer="str", key_deserializer="str"
    )
    (
        by_user.apply(gate.enforce, stateful=True, expand=True)
        .set_timestamp(lambda v, _k, _t, _h: v[3])
        .to_topic(lambda v, _k, _t, _h: v[0], key=lambda v: v[1])
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.peer_quix", description=__doc__)
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--app-id", required=True, help="the consumer group")
    for name in ("posts", "objections", "training", "retractions", "decisions", "dlq"):
        parser.add_argument(f"--{name}-topic", required=True)
    parser.add_argument("--state-dir", required=True, help="RocksDB state directory")
    parser.add_argument("--policy", default=None, help="policy file (default: packaged)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the peer until SIGTERM or SIGINT."""
    args = parse_args(argv)
    policy = load_policy(args.policy)
    app = Application(
        broker_address=args.bootstrap_servers,
        consumer_group=args.app_id,
        auto_offset_reset="earliest",
        processing_guarantee="at-least-once",
        state_dir=args.state_dir,
        loglevel="WARNING",
    )
    build(app, args, policy)
    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
