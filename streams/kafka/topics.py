"""Topic administration: what the enforcer needs, created idempotently and checked.

Every topic of the contract plus the internal ones. The internal topics (the user
re-keying topic and the tables' changelogs) must have exactly the worker's partition
count, or table reads would silently miss: a mismatch stops the worker at start.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from confluent_kafka import (
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewTopic,
    OffsetSpec,
    ResourceType,
)

from streams.kafka import connection
from streams.kafka.connection import QUIET, command_config, librdkafka_config
from streams.settings import Settings, SettingsError

T = TypeVar("T")

TABLES = ("consent", "ledger")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    """One topic the enforcer uses."""

    name: str
    role: str  # input | output | internal
    config: dict[str, str] = field(default_factory=dict)


# The internal user-events topic keeps every record until the gate has committed past
# it, whatever its timestamps (they are the inputs' own, possibly old): the gate deletes
# what it has committed (``purge_committed``), as Kafka Streams does with its
# repartition topics. Time-based retention could delete an objection before it was read.
INTERNAL_RETENTION = {"retention.ms": "-1", "retention.bytes": "-1"}

# Kafka's default message.max.bytes (1 MiB plus the 12 bytes of a batch's log header)
KAFKA_MAX_MESSAGE_BYTES = 1048588


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic, with its role and configuration."""
    compact = {"cleanup.policy": "compact"}
    audit = {
        "retention.ms": str(settings.audit_retention_ms),
        "message.timestamp.type": "LogAppendTime",
    }
    specs = [
        TopicSpec(settings.posts_topic, "input"),
        TopicSpec(settings.objections_topic, "input"),
        # tombstones (retractions) stay long enough for downstream consumers to see them
        TopicSpec(
            settings.training_topic,
            "output",
            {**compact, "delete.retention.ms": str(settings.tombstone_retention_ms)},
        ),
        # the audit topics: kept forever by default; record timestamps are the broker's
        # append time, so a reader sees when each record was acknowledged
        TopicSpec(settings.retractions_topic, "output", audit),
        TopicSpec(settings.decisions_topic, "output", audit),
        TopicSpec(settings.receipts_topic, "output", audit),
        # the DLQ holds the inputs' bytes, post content included
        TopicSpec(settings.dlq_topic, "output", {"retention.ms": str(settings.dlq_retention_ms)}),
        TopicSpec(settings.user_events_topic, "internal", INTERNAL_RETENTION),
        TopicSpec(settings.replay_results_topic, "output", {"retention.ms": str(7 * 86400000)}),
    ]
    specs += [TopicSpec(settings.changelog_topic(t), "internal", compact) for t in TABLES]
    # each worker's HTTP address by group member, for consent lookups (streams/runtime/lookup.py)
    specs.append(TopicSpec(settings.endpoints_topic, "internal", compact))
    return specs


def admin_client(settings: Settings, *, command: bool = False) -> AdminClient:
    """An admin client that fails fast when the broker cannot be reached, and prints
    nothing itself. A ``command``'s (a one-shot command's, or the worker's checks at
    start) stops with one line when the cluster refuses its login or certificate
    (``describe`` serves that); the worker's long-lived ones, never polled, do not
    collect errors."""
    role = {"socket.connection.setup.timeout.ms": 5000}
    if command:
        return AdminClient(command_config(settings, role))
    config: dict[str, Any] = {**librdkafka_config(settings, role), "log_level": 0, "logger": QUIET}
    return AdminClient(config)


# Errors after which a client's cached metadata (leaders, leader epochs) may be out of
# date. librdkafka's admin ListOffsets retries with the leader epoch it cached before a
# leader moved and is answered FENCED_LEADER_EPOCH forever (confluentinc/librdkafka#4620);
# after a broker restart the gate's and the re-keying stage's lookups failed so for minutes.
STALE_METADATA = frozenset(
    {
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.UNKNOWN_LEADER_EPOCH,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError._NOENT,  # "No leaders found"
    }
)


def stale_metadata(exc: BaseException) -> bool:
    """Whether a Kafka error says the client's view of the partition leaders is old."""
    error = kafka_error(exc)
    return error is not None and error.code() in STALE_METADATA


# Errors a broker gives while leaders or coordinators move (a broker restarting, a
# rebalance): asked again, not acted on (the other codes are librdkafka's retriable ones)
TRANSIENT = STALE_METADATA | {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
}


def kafka_error(exc: BaseException) -> KafkaError | None:
    """The ``KafkaError`` of a ``KafkaException``, None for anything else."""
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return error if isinstance(error, KafkaError) else None


def asked_until_answered(ask: Callable[[], T], what: str, within: float = 120.0) -> T:
    """``ask()``, asked again (with a growing pause) while the broker answers with a
    transient error, for at most ``within`` seconds; then, or on any other error, the
    error is raised."""
    deadline = time.monotonic() + within
    pause = 0.1
    while True:
        try:
            return ask()
        except KafkaException as exc:
            error = kafka_error(exc)
            transient = error is not None and (error.retriable() or error.code() in TRANSIENT)
            if not transient or time.monotonic() + pause > deadline:
                raise
            log.warning("%s: %s; asking again", what, error)
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


class RenewingAdmin:
    """A long-lived process's admin client, made anew (from fresh metadata) after an
    error that says its view of the leaders is old; the caller asks again later."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.client = admin_client(settings)

    def renew_if_stale(self, exc: BaseException) -> bool:
        """Replace the client if ``exc`` is a stale-metadata error; whether it did."""
        if not stale_metadata(exc):
            return False
        self.client = admin_client(self._settings)
        return True


def describe(admin: AdminClient, settings: Settings, timeout: float = 10.0) -> dict[str, int]:
    """Topic name -> partition count (of the topics the principal may describe); raises
    ``SettingsError`` if the broker is unreachable, ``KafkaAccessError`` at once when it
    refuses the login or the certificate."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            metadata = admin.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
            break
        except KafkaException as exc:
            admin.poll(0)  # serves error_cb: a refused login or certificate raises here
            if time.monotonic() >= deadline:
                raise SettingsError(
                    f"cannot reach Kafka at {settings.bootstrap_servers}: "
                    f"{exc.args[0].str() if exc.args else exc}"
                ) from None
    return {name: len(t.partitions) for name, t in metadata.topics.items() if t.error is None}


def topic_names(settings: Settings) -> list[str]:
    """Every topic the enforcer uses."""
    return [spec.name for spec in topic_specs(settings)]


def written_topics(settings: Settings) -> list[str]:
    """The topics the worker writes: every topic but the inputs."""
    return [spec.name for spec in topic_specs(settings) if spec.role != "input"]


def record_limit_config(settings: Settings) -> dict[str, str]:
    """``max.message.bytes`` of a topic the worker writes, as created: the larger of
    ``--max-record-bytes`` and Kafka's default (``check_record_limit``)."""
    return {"max.message.bytes": str(max(settings.max_record_bytes, KAFKA_MAX_MESSAGE_BYTES))}


def preflight(settings: Settings, command: str) -> dict[str, int]:
    """Before a command uses the cluster: reach it (one line when it cannot, or refuses
    the login or certificate) and check the ACLs the command needs; the topics."""
    admin = admin_client(settings, command=True)
    existing = describe(admin, settings)
    check_access(settings, command, admin)
    return existing


def check_access(settings: Settings, command: str, admin: AdminClient | None = None) -> None:
    """Stop with one line when the principal lacks an ACL ``command`` needs
    (``connection.check_access``); a broker slow to answer is asked again (a loaded
    cluster's timeout is no reason for a worker not to start)."""
    client = admin or admin_client(settings, command=True)
    asked_until_answered(
        lambda: connection.check_access(client, settings, command, topic_names(settings)),
        "checking the principal's ACLs",
    )


def broker_count(admin: AdminClient) -> int:
    """How many brokers the cluster has."""
    return len(admin.list_topics(timeout=10).brokers)


def replication_factor(admin: AdminClient, settings: Settings) -> int:
    """The configured replication factor, or min(3, brokers)."""
    if settings.replication_factor is not None:
        return settings.replication_factor
    return max(1, min(3, broker_count(admin)))


def check_partitions(existing: dict[str, int], settings: Settings) -> None:
    """Stop when an internal topic's partition count differs from the worker's."""
    for spec in topic_specs(settings):
        count = existing.get(spec.name)
        if spec.role == "internal" and count is not None and count != settings.partitions:
            raise SettingsError(
                f"internal topic {spec.name} has {count} partitions but the worker is configured "
                f"for {settings.partitions}; run with --partitions {count} (or use a new --app-id)"
            )


def ensure_topics(settings: Settings, *, create_inputs: bool) -> list[str]:
    """Create missing topics (idempotent); returns the names created.

    Inputs are only created when asked (``topics create``): a worker pointed at a
    misspelt input topic stops instead of waiting on an empty one.
    """
    admin = admin_client(settings, command=True)
    existing = describe(admin, settings)
    check_partitions(existing, settings)
    missing_inputs = [t for t in settings.input_topics if t not in existing]
    if missing_inputs and not create_inputs:
        raise SettingsError(
            f"input topic(s) {', '.join(missing_inputs)} do not exist; run "
            "`enforcer topics create` or check --posts-topic/--objections-topic"
        )
    if settings.user_events_topic in existing:
        keep_internal_records(admin, settings.user_events_topic)
    rf = replication_factor(admin, settings)
    # with three replicas or more, a write is acknowledged by two: one broker lost
    # never loses an acknowledged record
    durable = {"min.insync.replicas": "2"} if rf >= 3 else {}
    # the topics the worker writes take any record it may write (check_record_limit)
    limit = record_limit_config(settings)
    new = [
        NewTopic(
            spec.name,
            settings.partitions,
            rf,
            config={**durable, **({} if spec.role == "input" else limit), **spec.config},
        )
        for spec in topic_specs(settings)
        if spec.name not in existing
    ]
    created: list[str] = []
    if not new:
        return created
    for name, future in admin.create_topics(new, request_timeout=30).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            err = exc.args[0]
            if err.name() != "TOPIC_ALREADY_EXISTS":
                raise SettingsError(f"cannot create topic {name}: {err.str()}") from None
    # a concurrent creator may have used another partition count; and the topics are
    # usable (in the metadata every client gets) before this returns
    deadline = time.monotonic() + 30.0
    while True:
        existing = describe(admin, settings)
        check_partitions(existing, settings)
        missing = [name for name in created if name not in existing]
        if not missing:
            return created
        if time.monotonic() > deadline:
            raise SettingsError(f"created topics are not in the metadata after 30 s: {missing}")
        time.sleep(0.2)


def keep_internal_records(admin: AdminClient, topic: str) -> None:
    """Give an existing internal topic (made by an earlier version, with the broker's
    time-based retention) the retention it must have (``INTERNAL_RETENTION``)."""
    resource = ConfigResource(ResourceType.TOPIC, topic)
    config = admin.describe_configs([resource])[resource].result(timeout=30)
    wrong = {k: v for k, v in INTERNAL_RETENTION.items() if config[k].value != v}
    if not wrong:
        return
    log.warning("topic %s: setting %s (records are deleted once processed)", topic, wrong)
    resource = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in wrong.items()
        ],
    )
    try:
        admin.incremental_alter_configs([resource])[resource].result(timeout=30)
    except KafkaException as exc:
        raise SettingsError(
            f"cannot set the retention of internal topic {topic}: {exc.args[0].str()}"
        ) from None


def check_record_limit(
    settings: Settings, admin: AdminClient | None = None, within: float = 120.0
) -> None:
    """Stop (``SettingsError``, one line) when ``--max-record-bytes`` is more than the
    broker accepts on a topic the worker writes.

    The broker refuses a record batch larger than its topic's ``max.message.bytes``
    (which is the broker's ``message.max.bytes`` unless the topic sets its own); the
    worker's producers batch at most ``--max-record-bytes`` (librdkafka's
    ``message.max.bytes``, framing included), and every record size check of the
    enforcer is against that flag. A larger flag would let a record pass those checks
    that the broker then refuses at delivery: the worker stops (exit 70) and meets the
    same record after every restart. Asked again while the broker does not answer
    (``asked_until_answered``, ``within`` seconds)."""
    admin = admin or admin_client(settings, command=True)
    names = written_topics(settings)
    entries = asked_until_answered(
        lambda: _max_message_bytes(admin, names), "describing the topics' configs", within
    )
    limits = [(int(entries[name].value), name) for name in names]
    smallest, topic = min(limits, key=lambda limit: limit[0])
    if settings.max_record_bytes <= smallest:
        return
    entry = entries[topic]
    where = (
        "set on the topic"
        if getattr(entry.source, "value", entry.source) == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
        else "the broker's message.max.bytes"
    )
    raise SettingsError(
        f"--max-record-bytes {settings.max_record_bytes} is more than topic {topic} accepts: "
        f"max.message.bytes {smallest} ({where}); a record between the two would be "
        f"refused at delivery after every restart: use --max-record-bytes {smallest} or less, "
        f"or raise max.message.bytes of {topic}"
    )


def _max_message_bytes(admin: AdminClient, topics: list[str]) -> dict[str, ConfigEntry]:
    """Each topic's effective ``max.message.bytes`` entry (one DescribeConfigs request);
    a request that does not end in time is raised as a (transient) ``_TIMED_OUT``."""
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in topics]
    futures = admin.describe_configs(resources, request_timeout=10)
    entries = {}
    for resource, future in futures.items():
        try:
            config = future.result(timeout=15)
        except concurrent.futures.TimeoutError:
            raise KafkaException(
                KafkaError(KafkaError._TIMED_OUT, "DescribeConfigs timed out")
            ) from None
        entries[resource.name] = config["max.message.bytes"]
    return entries


def purge_committed(admin: AdminClient, topic: str, committed: dict[int, int]) -> None:
    """Delete the internal topic's records below the offsets the gate has committed
    (they are processed; nothing reads them again)."""
    if committed:
        futures = admin.delete_records(
            [TopicPartition(topic, p, o) for p, o in committed.items() if o > 0]
        )
        for future in futures.values():
            future.result(timeout=30)


class DataLossError(SettingsError):
    """Records that must not be skipped were deleted before they were processed."""


def earliest_offset(admin: AdminClient, topic: str, partition: int) -> int:
    """The first offset still stored in a partition (after retention)."""
    tp = TopicPartition(topic, partition)
    return max(0, admin.list_offsets({tp: OffsetSpec.earliest()})[tp].result(timeout=30).offset)


def resume_offset(
    admin: AdminClient, topic: str, partition: int, offset: int, reader: str, accept_loss: bool
) -> tuple[int, int]:
    """Where ``reader`` resumes a partition at ``offset``, and how many records it skips:
    none, unless retention deleted records from ``offset`` on before they were
    processed. Those are skipped (logged with the range) only with ``accept_loss``;
    otherwise ``DataLossError`` says which."""
    earliest = earliest_offset(admin, topic, partition)
    if offset >= earliest:
        return offset, 0
    where = f"{topic}[{partition}] offsets {offset} to {earliest - 1} ({earliest - offset} records)"
    if not accept_loss:
        raise DataLossError(
            f"{where} were deleted before {reader} processed them; objection events may be "
            "lost: stopping (run with --accept-data-loss to skip them)"
        )
    log.error("%s were deleted before %s processed them; skipped", where, reader)
    return earliest, earliest - offset


def start_offset(
    admin: AdminClient, group: str, topic: str, partition: int, accept_loss: bool
) -> tuple[int, int]:
    """Where a consumer group resumes a partition (``resume_offset`` from its committed
    offset, or the partition's earliest offset when it has none)."""
    tp = TopicPartition(topic, partition)
    request = [ConsumerGroupTopicPartitions(group, [tp])]
    result = admin.list_consumer_group_offsets(request)[group].result(timeout=30)
    for committed in result.topic_partitions or []:
        if committed.partition == partition and committed.offset >= 0:
            return resume_offset(
                admin, topic, partition, committed.offset, f"group {group}", accept_loss
            )
    return earliest_offset(admin, topic, partition), 0
