"""``enforcer audit --user USER``: one user's timeline, from the topics alone.

* Objection events and withdrawals, each with its ConsentReceipt (what it did, when it was
  applied, how many posts it retracted), from ``enforcer-consent-receipts``.
* Every decision on the user's posts (published, blocked with its reason, retracted with
  its cause, the policy version, the times), from ``enforcer-decisions``.
* For each objection that put the user's posts out of training: the posts that were live
  when it was applied, and the time until each was retracted (the exposure window), from
  the time the user objected (``occurred_at``) and from the time it was applied.

How it reads by key: receipts and retractions are keyed by user id and written by the
worker's producer with librdkafka's default partitioner (CRC-32 of the key modulo the
partition count), so only that one partition of each is read. Decisions are keyed by
post id, so their partitions are all read, but a record is decoded only when the user
id's bytes occur in it (a substring test on the raw value), and ``--from``/``--to``
bound each partition by offsets (``offsets_for_times`` on the records' timestamps,
the broker's append time on topics the enforcer created). See docs/compliance.md for
what it costs on a large topic.
"""

from __future__ import annotations

import json
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from streams.kafka.connection import AUDIT_GROUP, command_config, raise_if_denied
from streams.kafka.topics import preflight
from streams.serde.codec import CONSENT_RECEIPT, DECISION, RETRACTION, Codec, DecodeError
from streams.settings import Settings


def key_partition(key: bytes, partitions: int) -> int:
    """The partition librdkafka's default partitioner (``consistent_random``) gives a
    non-empty key: CRC-32 of the key modulo the partition count."""
    return (zlib.crc32(key) & 0xFFFFFFFF) % partitions


def _ms(ms: int | None) -> str:
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


@dataclass
class Scan:
    """What reading one topic cost."""

    topic: str
    partitions: int
    records: int = 0
    decoded: int = 0
    seconds: float = 0.0


@dataclass
class Timeline:
    user_id: str
    receipts: list[dict] = field(default_factory=list)
    decisions: dict[str, list[dict]] = field(default_factory=dict)  # post id -> in order
    retractions: list[dict] = field(default_factory=list)
    exposures: list[dict] = field(default_factory=list)
    scans: list[Scan] = field(default_factory=list)


def _consumer(settings: Settings) -> Consumer:
    return Consumer(
        command_config(
            settings,
            {
                "group.id": AUDIT_GROUP,
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "fetch.max.bytes": 52428800,
            },
        )
    )


def read_partitions(
    settings: Settings,
    topic: str,
    partitions: list[int] | None,
    start_ms: int,
    end_ms: int | None,
    needle: bytes,
    decode: Any,
) -> tuple[list[tuple[int, dict]], Scan]:
    """The records of ``topic`` (only ``partitions``, or all) in the time range whose
    value contains ``needle``, decoded by ``decode`` (None: not wanted), with their
    timestamps."""
    started = time.monotonic()
    consumer = _consumer(settings)
    try:
        md = consumer.list_topics(topic, timeout=30).topics[topic]
        if md.error is not None:
            raise RuntimeError(f"topic {topic}: {md.error.str()}")
        count = len(md.partitions)
        wanted = partitions if partitions is not None else sorted(md.partitions)
        scan = Scan(topic, len(wanted))
        ranges: dict[int, list[int]] = {}
        starts = consumer.offsets_for_times(
            [TopicPartition(topic, p, start_ms) for p in wanted], timeout=30
        )
        ends = None
        if end_ms is not None:
            ends = consumer.offsets_for_times(
                [TopicPartition(topic, p, end_ms + 1) for p in wanted], timeout=30
            )
        for i, p in enumerate(wanted):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            first = starts[i].offset if starts[i].offset >= 0 else high
            last = high
            if ends is not None and ends[i].offset >= 0:
                last = ends[i].offset
            if last > max(first, low):
                ranges[p] = [max(first, low), last]
        out: list[tuple[int, dict]] = []
        if ranges:
            consumer.assign([TopicPartition(topic, p, r[0]) for p, r in ranges.items()])
        deadline = time.monotonic() + 3600
        while ranges and time.monotonic() < deadline:
            for m in consumer.consume(10000, timeout=0.5):
                if m.error():
                    raise_if_denied(m.error(), settings)
                    continue
                p, offset = m.partition(), m.offset()
                r = ranges.get(p)
                if r is None or offset >= r[1]:
                    continue
                scan.records += 1
                value = m.value()
                if value is not None and needle in value:
                    record = decode(value)
                    scan.decoded += 1
                    if record is not None:
                        out.append((m.timestamp()[1], record))
                if offset + 1 >= r[1]:
                    del ranges[p]
            for p in list(ranges):
                if consumer.position([TopicPartition(topic, p)])[0].offset >= ranges[p][1]:
                    del ranges[p]
        scan.seconds = time.monotonic() - started
        assert count >= 1
        return out, scan
    finally:
        consumer.close()


def audit(
    settings: Any, codec: Codec, user_id: str, start_ms: int = 0, end_ms: int | None = None
) -> Timeline:
    """The user's timeline (see the module's doc)."""
    key = user_id.encode("utf-8")
    line = Timeline(user_id)

    def decoder(name: str):
        def decode(value: bytes) -> dict | None:
            try:
                record = codec.decode(value, name)[1]
            except DecodeError:
                return None
            return record if record.get("user_id") == user_id else None

        return decode

    s = settings
    preflight(s, "audit")

    def one_partition(topic: str) -> list[int]:
        c = _consumer(s)
        try:
            md = c.list_topics(topic, timeout=30).topics[topic]
            return [key_partition(key, len(md.partitions))] if md.partitions else []
        finally:
            c.close()

    receipts, scan = read_partitions(
        s,
        s.receipts_topic,
        one_partition(s.receipts_topic),
        0,
        end_ms,
        key,
        decoder(CONSENT_RECEIPT),
    )
    line.scans.append(scan)
    retractions, scan = read_partitions(
        s,
        s.retractions_topic,
        one_partition(s.retractions_topic),
        start_ms,
        end_ms,
        key,
        decoder(RETRACTION),
    )
    line.scans.append(scan)
    decisions, scan = read_partitions(s, s.decisions_topic, None, 0, end_ms, key, decoder(DECISION))
    line.scans.append(scan)
    first: dict[str, dict] = {}
    for _, r in sorted(receipts, key=lambda x: (x[1]["applied_at"], x[0])):
        first.setdefault(f"{r['source_topic']}:{r['source_partition']}:{r['source_offset']}", r)
    line.receipts = [r for r in first.values() if r["applied_at"] >= start_ms]
    line.retractions = [r for _, r in retractions]
    by_post: dict[str, list[dict]] = defaultdict(list)
    for ts, d in sorted(decisions, key=lambda x: (x[1]["decided_at"], x[0])):
        by_post[d["post_id"]].append({**d, "logged_at": ts})
    line.decisions = {
        pid: ds for pid, ds in by_post.items() if any(d["decided_at"] >= start_ms for d in ds)
    }
    line.exposures = exposures(list(first.values()), by_post, start_ms)
    return line


def exposures(receipts: list[dict], by_post: dict[str, list[dict]], start_ms: int) -> list[dict]:
    """For each receipt of an OBJECT event that was applied: the posts live when it was
    applied (published and not retracted before) and when each was retracted."""
    out = []
    for r in sorted(receipts, key=lambda r: r["applied_at"]):
        if r["action"] != "OBJECT" or r["outcome"] not in ("APPLIED", "CLAMPED_FROM_FUTURE"):
            continue
        if r["applied_at"] < start_ms:
            continue
        at = r["applied_at"]
        posts = []
        for pid, ds in by_post.items():
            live = False
            for d in ds:  # what was live just before the event was applied
                if d["decided_at"] > at or (d["decided_at"] == at and d["outcome"] == "RETRACTED"):
                    break
                if d["outcome"] == "PUBLISHED":
                    live = True
                elif d["outcome"] == "RETRACTED":
                    live = False
            if not live:
                continue
            later = [d for d in ds if d["decided_at"] >= at and d["outcome"] == "RETRACTED"]
            retracted = later[0] if later else None
            posts.append(
                {
                    "post_id": pid,
                    "published_at": max(
                        d["decided_at"]
                        for d in ds
                        if d["outcome"] == "PUBLISHED" and d["decided_at"] <= at
                    ),
                    "retracted_at": retracted["decided_at"] if retracted else None,
                    "retraction_logged_at": retracted["logged_at"] if retracted else None,
                    "cause": retracted.get("cause") if retracted else None,
                    "seconds_after_applied": (
                        (retracted["decided_at"] - at) / 1000.0 if retracted else None
                    ),
                    "seconds_after_objected": (
                        (retracted["decided_at"] - r["occurred_at"]) / 1000.0 if retracted else None
                    ),
                }
            )
        out.append(
            {
                "event_id": r["event_id"],
                "platform": r["platform"],
                "occurred_at": r["occurred_at"],
                "applied_at": at,
                "posts_retracted": r["posts_retracted"],
                "live_posts": sorted(posts, key=lambda p: p["post_id"]),
            }
        )
    return out


def as_json(line: Timeline) -> str:
    return json.dumps(
        {
            "user_id": line.user_id,
            "receipts": line.receipts,
            "decisions": line.decisions,
            "retractions": line.retractions,
            "exposures": line.exposures,
            "scans": [vars(s) for s in line.scans],
        },
        indent=2,
        sort_keys=True,
    )


def as_text(line: Timeline) -> str:
    out = [f"user {line.user_id}"]
    out.append(f"objection events ({len(line.receipts)}):")
    for r in line.receipts:
        scope = r["platform"] or "every platform"
        given = _ms(r["occurred_at"])
        if r["applied_occurred_at"] != r["occurred_at"]:
            given += f" (applied as {_ms(r['applied_occurred_at'])})"
        out.append(
            f"  {_ms(r['applied_at'])}  {r['action']:8s} {scope:14s} event {r['event_id']}: "
            f"{r['outcome']}, occurred {given}, retracted {r['posts_retracted']} post(s), "
            f"objected after: {', '.join(r['objected_platforms']) or 'none'} "
            f"[{r['source_topic']}[{r['source_partition']}]@{r['source_offset']}]"
        )
    out.append(f"posts ({len(line.decisions)}):")
    for pid in sorted(line.decisions, key=lambda p: line.decisions[p][0]["decided_at"]):
        for d in line.decisions[pid]:
            extra = f" cause {d['cause']}" if d.get("cause") else ""
            extra += f" replay {d['replay_id']}" if d.get("replay_id") else ""
            out.append(
                f"  {_ms(d['decided_at'])}  post {pid}: {d['outcome']} {d['reason']} "
                f"(policy {d['policy_version']}){extra}"
            )
    out.append("exposure windows (objections applied, and the posts then live):")
    if not line.exposures:
        out.append("  none")
    for e in line.exposures:
        scope = e["platform"] or "every platform"
        out.append(
            f"  event {e['event_id']} ({scope}), objected {_ms(e['occurred_at'])}, applied "
            f"{_ms(e['applied_at'])}: {len(e['live_posts'])} live post(s)"
        )
        for p in e["live_posts"]:
            if p["retracted_at"] is None:
                out.append(
                    f"    post {p['post_id']} (published {_ms(p['published_at'])}): NOT "
                    "retracted (on a platform outside this objection's scope, or a leak: "
                    "see enforcer verify)"
                )
            else:
                out.append(
                    f"    post {p['post_id']} (published {_ms(p['published_at'])}): retracted "
                    f"{_ms(p['retracted_at'])}, {p['seconds_after_applied']:.3f} s after it "
                    f"was applied, {p['seconds_after_objected']:.3f} s after the user objected"
                )
    for s in line.scans:
        out.append(
            f"read {s.topic}: {s.partitions} partition(s), {s.records} records, "
            f"{s.decoded} decoded, {s.seconds:.2f} s"
        )
    return "\n".join(out)
