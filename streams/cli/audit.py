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
id's bytes occur in it (a substring test on the raw value, in the consumer's batches),
and ``--to`` ends each partition at ``offsets_for_times`` (the broker's append time on
the topics the enforcer created). ``--from`` starts the decisions there too (less a
clock margin) unless an objection applied in the window needs the posts live when it
was applied; the partitions where that finds one of the user's posts are then read
from their beginning for those posts' earlier decisions (``read_decisions``). The
timeline is the same as the whole one restricted to the window. See
docs/compliance.md for what it costs on a large topic.
"""

from __future__ import annotations

import json
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

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


# The readers' librdkafka settings. A scan is bounded by how fast the consumer's queue is
# refilled. With librdkafka's defaults (1 MB a partition a fetch; once a partition holds
# queued.min.messages, 100,000, its next fetch waits fetch.queue.backoff.ms, 1 s) the
# queue ran dry every few fetches and consume() waited: 5 million decisions took 35 s
# here, against 6-10 s with larger fetches, a million records' queue and a 50 ms backoff
# (0 makes librdkafka's fetcher spin: half as much CPU again, no faster).
READ_TUNING = {
    "fetch.max.bytes": 52428800,
    "max.partition.fetch.bytes": 4194304,
    "queued.min.messages": 1000000,
    "fetch.queue.backoff.ms": 50,
}
READ_BATCH = 10000  # records per consume() call
STALL_SECONDS = 300.0  # a read that gets no record for this long stops with an error
# With --from, decisions are first read from each partition's first record appended at
# or after --from minus this (offsets_for_times on the broker's append time). A
# decision's decided_at is the worker's clock when it queued it, before the broker
# appended it; the margin covers a worker clock up to 5 minutes ahead of the broker's.
CLOCK_MARGIN_MS = 300_000


def _consumer(settings: Settings) -> Consumer:
    return Consumer(
        command_config(
            settings,
            {
                "group.id": AUDIT_GROUP,
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
                **READ_TUNING,
            },
        )
    )


Ranges = dict[int, tuple[int, int]]  # partition -> [first offset, end offset)
Match = tuple[int, int, int, bytes]  # partition, offset, timestamp, value


def plan(
    settings: Settings,
    topic: str,
    partitions: list[int] | None,
    start_ms: int,
    end_ms: int | None,
) -> tuple[Ranges, dict[int, int]]:
    """Per partition (only ``partitions``, or all) the offsets of the records whose
    timestamps are in [start_ms, end_ms] (``offsets_for_times``: exact on the
    LogAppendTime of the audit topics), as [first, end); and each partition's first
    offset (its low watermark)."""
    consumer = _consumer(settings)
    try:
        md = consumer.list_topics(topic, timeout=30).topics[topic]
        if md.error is not None:
            raise RuntimeError(f"topic {topic}: {md.error.str()}")
        wanted = partitions if partitions is not None else sorted(md.partitions)
        starts = consumer.offsets_for_times(
            [TopicPartition(topic, p, max(start_ms, 0)) for p in wanted], timeout=30
        )
        ends = None
        if end_ms is not None:
            ends = consumer.offsets_for_times(
                [TopicPartition(topic, p, end_ms + 1) for p in wanted], timeout=30
            )
        ranges: Ranges = {}
        lows: dict[int, int] = {}
        for i, p in enumerate(wanted):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            first = starts[i].offset if starts[i].offset >= 0 else high
            last = high
            if ends is not None and ends[i].offset >= 0:
                last = ends[i].offset
            ranges[p] = (max(first, low), max(last, first, low))
            lows[p] = low
        return ranges, lows
    finally:
        consumer.close()


def scan(settings: Settings, topic: str, ranges: Ranges, needle: bytes) -> tuple[list[Match], int]:
    """The records of ``topic`` in ``ranges`` whose value contains ``needle`` (a
    substring test on the raw bytes: no record is decoded here), and how many records
    were read. One consumer. After each batch, the partitions' positions say whether
    any record of it lies past its partition's end: when none does (all batches but
    the last of a partition), the batch costs one bytes search a record."""
    ends = {p: r[1] for p, r in ranges.items() if r[1] > r[0]}
    found: list[Match] = []
    records = 0
    if not ends:
        return found, records
    tps = [TopicPartition(topic, p) for p in ends]
    consumer = _consumer(settings)
    try:
        consumer.assign([TopicPartition(topic, p, ranges[p][0]) for p in ends])
        left = set(ends)
        before = {p: ranges[p][0] for p in ends}  # positions before the batch
        eof: dict[int, int] = {}  # partition -> the offset it was at its end at
        quiet_since = time.monotonic()
        while left:
            batch = consumer.consume(READ_BATCH, timeout=0.1)
            if batch:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > STALL_SECONDS:
                raise RuntimeError(
                    f"reading {topic}: no record for {STALL_SECONDS:.0f} s from partitions "
                    f"{sorted(left)} (positions short of their end offsets)"
                )
            after = {tp.partition: tp.offset for tp in consumer.position(tps)}
            past_end = any(after[p] > ends[p] and after[p] != before[p] for p in ends)
            if past_end or any(map(Message.error, batch)):
                # a record past its partition's end, or an error: each record checked
                for m in batch:
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            eof[m.partition()] = m.offset()
                        raise_if_denied(err, settings)
                        continue
                    p, offset = m.partition(), m.offset()
                    if offset >= ends[p]:
                        continue
                    records += 1
                    value = m.value()
                    if value is not None and needle in value:
                        found.append((p, offset, m.timestamp()[1], value))
            else:
                records += len(batch)
                for m in batch:
                    value = m.value()
                    if value is not None and needle in value:
                        found.append((m.partition(), m.offset(), m.timestamp()[1], value))
            before = after
            done = [p for p in left if max(after[p], eof.get(p, -1)) >= ends[p]]
            if done:
                # no more fetching there (a record already fetched still comes: see above)
                consumer.pause([TopicPartition(topic, p) for p in done])
                left.difference_update(done)
        return found, records
    finally:
        consumer.close()


def read(
    settings: Settings, topic: str, ranges: Ranges, needle: bytes, decode: Any
) -> tuple[list[tuple[int, int, dict]], Scan]:
    """The records of ``topic`` in ``ranges`` whose value contains ``needle``, decoded
    by ``decode`` (None: not wanted), as (partition, timestamp, record) in each
    partition's order."""
    started = time.monotonic()
    found, records = scan(settings, topic, ranges, needle)
    result = Scan(topic, len(ranges), records=records, decoded=len(found))
    out: list[tuple[int, int, dict]] = []
    for p, _, ts, value in found:
        record = decode(value)
        if record is not None:
            out.append((p, ts, record))
    result.seconds = time.monotonic() - started
    return out, result


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
    ranges, _ = plan(settings, topic, partitions, start_ms, end_ms)
    out, result = read(settings, topic, ranges, needle, decode)
    result.seconds = time.monotonic() - started
    return [(ts, record) for _, ts, record in out], result


def read_decisions(
    settings: Settings,
    needle: bytes,
    decode: Any,
    start_ms: int,
    end_ms: int | None,
    whole_history: bool,
) -> tuple[list[tuple[int, dict]], Scan]:
    """The user's decisions up to ``end_ms`` that the timeline needs: those of every
    post with a decision at or after ``start_ms``, each with all its earlier ones, and
    with ``whole_history`` every decision up to ``end_ms``.

    Decisions are keyed by post id: all of a post's decisions are on one partition.
    Without ``whole_history`` (no objection applied in the window), each partition is
    first read from ``start_ms - CLOCK_MARGIN_MS`` on; then only the partitions where
    that found one of the user's posts decided at or after ``start_ms`` are read from
    their beginning up to where the first pass started, for those posts' history."""
    started = time.monotonic()
    topic = settings.decisions_topic
    if whole_history or start_ms <= 0:
        ranges, _ = plan(settings, topic, None, 0, end_ms)
        out, result = read(settings, topic, ranges, needle, decode)
        result.seconds = time.monotonic() - started
        return [(ts, d) for _, ts, d in out], result
    window, lows = plan(settings, topic, None, start_ms - CLOCK_MARGIN_MS, end_ms)
    recent, result = read(settings, topic, window, needle, decode)
    partitions = {p for p, _, d in recent if d["decided_at"] >= start_ms}
    earlier: list[tuple[int, int, dict]] = []
    if partitions:
        before = {p: (lows[p], window[p][0]) for p in sorted(partitions)}
        earlier, more = read(settings, topic, before, needle, decode)
        result.records += more.records
        result.decoded += more.decoded
    result.seconds = time.monotonic() - started
    return [(ts, d) for _, ts, d in earlier + recent], result


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
    first: dict[str, dict] = {}
    for _, r in sorted(receipts, key=lambda x: (x[1]["applied_at"], x[0])):
        first.setdefault(f"{r['source_topic']}:{r['source_partition']}:{r['source_offset']}", r)
    # an objection applied in the window lists every post then live: all the history
    exposed = any(_exposure(r, start_ms) for r in first.values())
    decisions, scan = read_decisions(s, key, decoder(DECISION), start_ms, end_ms, exposed)
    line.scans.append(scan)
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


def _exposure(r: dict, start_ms: int) -> bool:
    """Whether receipt ``r`` has an exposure window in a timeline from ``start_ms``."""
    return (
        r["action"] == "OBJECT"
        and r["outcome"] in ("APPLIED", "CLAMPED_FROM_FUTURE")
        and r["applied_at"] >= start_ms
    )


def exposures(receipts: list[dict], by_post: dict[str, list[dict]], start_ms: int) -> list[dict]:
    """For each receipt of an OBJECT event that was applied: the posts live when it was
    applied (published and not retracted before) and when each was retracted."""
    out = []
    for r in sorted(receipts, key=lambda r: r["applied_at"]):
        if not _exposure(r, start_ms):
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
