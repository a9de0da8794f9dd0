"""Operator replay: re-decide past posts under the worker's current state and policy.

The command selects posts from the ``posts`` topic by record time (offsets from
``offsets_for_times``) and optionally by user, keeps the latest version of each post,
and sends each as a replay request through the worker's internal user topic, on the
partition that holds the user's consent state. The running worker decides it exactly
as live traffic, emits only differences (unless it is a dry run), and answers on the
replay-results topic, which this command reads to report progress and the summary.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from streams.core.records import (
    KIND,
    KIND_REPLAY,
    REPLAY_DRY_RUN,
    REPLAY_ID,
    SRC_OFFSET,
    SRC_PARTITION,
    SRC_TOPIC,
    check_post,
    partition_for_user,
)
from streams.kafka.connection import command_config, raise_if_denied
from streams.kafka.topics import admin_client, check_access, describe
from streams.serde.codec import POST, Codec, DecodeError
from streams.settings import Settings, SettingsError


class ReplayError(RuntimeError):
    """A replay that cannot run or finish; the message is one line."""


def parse_time(text: str, flag: str) -> int:
    """Epoch millis from ISO 8601 (UTC if no zone) or from a number of epoch millis."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SettingsError(f"{flag} must be ISO 8601 or epoch milliseconds: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


@dataclass
class ReplayPlan:
    """What a replay selects."""

    start_ms: int
    end_ms: int
    users: frozenset[str] | None = None
    dry_run: bool = False
    timeout: float = 300.0
    replay_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])


@dataclass
class ReplayReport:
    """What a replay did."""

    replay_id: str
    read: int = 0
    selected: int = 0
    skipped: int = 0
    changes: Counter = field(default_factory=Counter)  # (change, reason) -> count
    changed_posts: list[tuple[str, str, str, str]] = field(default_factory=list)


def worker_running(settings: Settings) -> bool:
    """True when the worker's consumer group has members."""
    admin = admin_client(settings, command=True)
    try:
        future = admin.describe_consumer_groups([settings.app_id])[settings.app_id]
        group = future.result(timeout=15)
    except KafkaException as exc:
        raise_if_denied(exc.args[0], settings)
        return False
    return len(group.members) > 0


class Progress:
    """A one-line progress bar on stderr (only on a terminal)."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label = total, label
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.tty or (not force and now - self._last < 0.1):
            return
        self._last = now
        width = 30
        filled = int(width * done / self.total) if self.total else width
        sys.stderr.write(
            f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total}"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def _ranges(consumer: Consumer, topic: str, plan: ReplayPlan) -> list[tuple[int, int, int]]:
    """(partition, first offset, end offset) of the posts in the time range."""
    md = consumer.list_topics(topic, timeout=10).topics[topic]
    partitions = sorted(md.partitions)
    starts = consumer.offsets_for_times(
        [TopicPartition(topic, p, plan.start_ms) for p in partitions], timeout=15
    )
    ends = consumer.offsets_for_times(
        [TopicPartition(topic, p, plan.end_ms + 1) for p in partitions], timeout=15
    )
    out = []
    for s, e in zip(starts, ends, strict=True):
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, s.partition), timeout=10)
        first = high if s.offset < 0 else s.offset
        last = high if e.offset < 0 else e.offset
        if last > first:
            out.append((s.partition, first, last))
    return out


def _read_posts(
    settings: Settings, codec: Codec, plan: ReplayPlan, report: ReplayReport
) -> dict[str, tuple[bytes, str, int, int, str]]:
    """The latest version of each selected post: post id -> (bytes, user, partition,
    offset, topic)."""
    consumer = Consumer(
        command_config(
            settings,
            {
                "group.id": f"{settings.app_id}-replay-{plan.replay_id}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            },
        )
    )
    selected: dict[str, tuple[bytes, str, int, int, str]] = {}
    try:
        ranges = _ranges(consumer, settings.posts_topic, plan)
        total = sum(last - first for _, first, last in ranges)
        progress = Progress(total, "reading posts")
        remaining = {p: last for p, _, last in ranges}
        consumer.assign([TopicPartition(settings.posts_topic, p, first) for p, first, _ in ranges])
        deadline = time.monotonic() + plan.timeout
        while remaining:
            if time.monotonic() > deadline:
                raise ReplayError(f"could not read the selected posts within {plan.timeout:.0f}s")
            for msg in consumer.consume(5000, timeout=0.5):
                if msg.error():
                    raise_if_denied(msg.error(), settings)
                    continue
                p, offset = msg.partition(), msg.offset()
                if p not in remaining or offset >= remaining[p]:
                    continue
                if offset + 1 >= remaining[p]:
                    del remaining[p]
                report.read += 1
                try:
                    _, post = codec.decode(msg.value(), POST)
                    check_post(post)
                except (DecodeError, TypeError):
                    report.skipped += 1  # the worker sent it to the DLQ when it arrived
                    continue
                if plan.users is not None and post["user_id"] not in plan.users:
                    continue
                selected[post["post_id"]] = (msg.value(), post["user_id"], p, offset, msg.topic())
            progress.update(report.read)
            # partitions whose remaining records were all aborted or compacted away
            for p in list(remaining):
                position = consumer.position([TopicPartition(settings.posts_topic, p)])[0].offset
                if position >= remaining[p]:
                    del remaining[p]
        progress.update(report.read, force=True)
        progress.close()
    finally:
        consumer.close()
    report.selected = len(selected)
    return selected


def run_replay(settings: Settings, plan: ReplayPlan, codec: Codec) -> ReplayReport:
    """Send the selected posts to the worker and collect its answers."""
    if plan.start_ms > plan.end_ms:
        raise SettingsError("--from is after --to")
    admin = admin_client(settings, command=True)
    existing = describe(admin, settings)
    check_access(settings, "replay", admin)
    for topic in (settings.posts_topic, settings.user_events_topic, settings.replay_results_topic):
        if topic not in existing:
            raise ReplayError(
                f"topic {topic} does not exist; is the app id {settings.app_id!r} "
                "right and `enforcer topics create` done?"
            )
    if not worker_running(settings):
        raise ReplayError(
            f"no worker of app id {settings.app_id!r} is running; start `enforcer worker` first"
        )
    report = ReplayReport(plan.replay_id)
    results = Consumer(
        command_config(
            settings,
            {
                "group.id": f"{settings.app_id}-replay-results-{plan.replay_id}",
                "enable.auto.commit": False,
                "auto.offset.reset": "latest",
            },
        )
    )
    try:
        md = results.list_topics(settings.replay_results_topic, timeout=10)
        parts = md.topics[settings.replay_results_topic].partitions
        # start at the current end, so only this replay's answers are read
        ends = []
        for p in parts:
            _, high = results.get_watermark_offsets(
                TopicPartition(settings.replay_results_topic, p), timeout=10
            )
            ends.append(TopicPartition(settings.replay_results_topic, p, high))
        results.assign(ends)
        selected = _read_posts(settings, codec, plan, report)
        # routed by the internal topic's own partition count, whatever --partitions says:
        # a request on another partition than its user's would read none of its state
        _send_requests(settings, plan, selected.values(), existing[settings.user_events_topic])
        _collect(results, plan, report, set(selected), settings)
    finally:
        results.close()
    return report


def _send_requests(
    settings: Settings,
    plan: ReplayPlan,
    selected: Iterable[tuple[bytes, str, int, int, str]],
    partitions: int,
) -> None:
    producer = Producer(command_config(settings, {"linger.ms": 5, "enable.idempotence": True}))
    failures: list[str] = []

    def delivered(err, _msg) -> None:
        if err is not None:
            failures.append(str(err))

    for value, user_id, partition, offset, topic in selected:
        key = user_id.encode("utf-8")
        headers: list[tuple[str, str | bytes | None]] = [
            (KIND, KIND_REPLAY),
            (REPLAY_ID, plan.replay_id.encode()),
            (REPLAY_DRY_RUN, b"1" if plan.dry_run else b"0"),
            (SRC_TOPIC, topic.encode()),
            (SRC_PARTITION, str(partition).encode()),
            (SRC_OFFSET, str(offset).encode()),
        ]
        while True:
            try:
                producer.produce(
                    settings.user_events_topic,
                    value,
                    key,
                    partition_for_user(key, partitions),
                    on_delivery=delivered,
                    headers=headers,
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(60) or failures:
        raise ReplayError(f"could not send replay requests: {failures[:1] or 'timeout'}")


def _collect(
    results: Consumer, plan: ReplayPlan, report: ReplayReport, pending: set[str], settings: Settings
) -> None:
    progress = Progress(len(pending), "re-deciding")
    total = len(pending)
    deadline = time.monotonic() + plan.timeout
    while pending:
        if time.monotonic() > deadline:
            progress.close()
            raise ReplayError(
                f"the worker answered {total - len(pending)} of {total} replay "
                f"requests within {plan.timeout:.0f}s; run the replay again"
            )
        for msg in results.consume(5000, timeout=0.5):
            if msg.error():
                raise_if_denied(msg.error(), settings)
                continue
            if msg.key() != plan.replay_id.encode():
                continue
            answer = json.loads(msg.value())
            if answer["post_id"] not in pending:
                continue
            pending.discard(answer["post_id"])
            report.changes[(answer["change"], answer["reason"])] += 1
            if answer["change"] != "UNCHANGED":
                report.changed_posts.append(
                    (answer["post_id"], answer["user_id"], answer["change"], answer["reason"])
                )
        progress.update(total - len(pending))
    progress.update(total, force=True)
    progress.close()


def format_report(report: ReplayReport, dry_run: bool) -> str:
    """The summary table printed at the end."""
    lines = []
    if dry_run:
        lines.append("dry run: nothing was written; these posts would change:")
        for post_id, user_id, change, reason in sorted(report.changed_posts)[:200]:
            lines.append(f"  {change:<10} {reason:<18} {post_id} (user {user_id})")
        if len(report.changed_posts) > 200:
            lines.append(f"  ... and {len(report.changed_posts) - 200} more")
    lines.append(f"{'change':<12}{'reason':<20}{'posts':>8}")
    for (change, reason), n in sorted(report.changes.items()):
        lines.append(f"{change:<12}{reason:<20}{n:>8}")
    lines.append(
        f"replay {report.replay_id}: {report.read} records read, {report.selected} posts "
        f"re-decided, {report.skipped} unreadable skipped, "
        f"{len(report.changed_posts)} {'would change' if dry_run else 'changed'}"
    )
    return "\n".join(lines)


def now_ms() -> int:
    """The current time in epoch milliseconds."""
    return int(time.time() * 1000)
