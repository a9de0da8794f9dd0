"""The Faust application built from settings: topics, tables, agents and web pages,
declared in one place.

Flow (see README): ``posts`` and ``objections`` are re-keyed by the ``user_id`` in
their value onto one internal topic (murmur2, the worker's partition count) by the
re-keying stage (``rekey/stage.py``), so a user's posts, objections and replay requests
reach one gate agent, in order, on the partition that holds the user's consent state
and live-post ledger.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from dataclasses import dataclass
from typing import Any, NoReturn

import faust
from confluent_kafka import KafkaException
from faust.types import TP

from streams import faust_compat
from streams.core.policy import Policy
from streams.gate.checkpoint import Checkpoint
from streams.gate.metrics import Metrics, gate_lags
from streams.gate.processor import Processor
from streams.kafka.connection import faust_connection, librdkafka_config
from streams.kafka.outputs import OutputProducer
from streams.kafka.topics import (
    DataLossError,
    RenewingAdmin,
    purge_committed,
    resume_offset,
    start_offset,
)
from streams.rekey.stage import RekeyStage
from streams.runtime import standby
from streams.runtime.lookup import install_consent_lookup
from streams.serde.codec import Codec
from streams.settings import Settings
from streams.state.ledger import TableState, without_wal

RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}

log = logging.getLogger(__name__)


def stop_worker(line: str) -> NoReturn:
    """Stop the worker at once with one critical line, exit code 70, and nothing more
    committed: what was not committed is processed again by the next owner."""
    log.critical("%s", line)
    logging.shutdown()
    os._exit(70)


@dataclass
class Enforcer:
    """A configured worker: the Faust app and the parts the agents and pages use."""

    app: faust.App
    processor: Processor
    metrics: Metrics


GATE_BATCH = 2000
GATE_WITHIN = 0.005  # seconds a partial batch waits for more records


def _dispatch_to_gate(app: faust.App, topic: str, processor: Processor) -> None:
    """Hand the internal topic's records to the processor a fetched batch at a time,
    straight from Faust's fetch (``faust_compat.take_fetched``), instead of one by one
    through Faust's message objects, async iteration, dispatch, conductor, channel queue,
    stream and event objects (together a third of the worker's time in the profile, and
    a queue hop of latency). The gate owns its offsets (``gate/offsets.py``), so Faust's
    acknowledgements are not needed; records of other topics (changelogs) go on to
    Faust unchanged.

    While Faust has the flow stopped or suspended (a rebalance, tables being recovered)
    a record is not processed, exactly as Faust drops it from its queues then: the
    tables may not be recovered yet (fail closed), and the gate sees the gap and seeks
    back later. Processing has no ``await``, so a batch is never left half done."""
    consumer = app.consumer
    deliver = consumer.callback
    flow = app.flow_control

    def may_process() -> bool:
        return (
            consumer.flow_active
            and flow.is_active()
            and not consumer.suspend_flow.is_set()
            and not consumer.should_stop
        )

    def take(records: dict) -> None:
        mine = [tp for tp in records if tp.topic == topic] if records else ()
        if mine:
            batches = [records.pop(tp) for tp in mine]
            if may_process():
                for tp, batch in zip(mine, batches, strict=True):
                    # aiokafka records: timestamps in milliseconds
                    processor.process(batch, timestamp_scale=0.001, partition=tp.partition)

    deliveries = consumer.changelog_deliveries

    async def on_message(message: Any) -> None:
        # records of the topic that still come this way are handled one at a time
        if message.topic != topic:
            if deliveries.deliverable(message.tp, message.offset):
                await deliver(message)
        elif may_process():
            processor.process_one(message)

    faust_compat.take_fetched(consumer, take)
    consumer.callback = on_message
    processor.checkpoint.may_process = may_process  # records held during a commit (release)


def _fence_before_recovery(
    app: faust.App,
    topic: str,
    changelogs: list[str],
    outputs: OutputProducer,
    checkpoint: Checkpoint,
) -> None:
    """With fencing: on every assignment, initialise a transactional producer for each
    assigned partition of the gate's topic **before** Faust restores the tables.
    ``init_transactions`` fences every earlier producer of the partition (a worker that
    was frozen past its session timeout cannot write its outputs or table changes any
    more) and completes or aborts its open transaction, so recovery, reading
    ``read_committed``, sees the partition's final committed state. Then each assigned
    changelog partition gets an end record (``OutputProducer.mark_ends``), so that
    recovery has a record to end on after the last commit marker.

    Faust restores tables from ``TableManager.on_rebalance`` (it starts the recovery
    service), which ``App._on_partitions_assigned`` awaits before it sends the
    ``on_partitions_assigned`` signal, too late for this: the table manager's method is
    wrapped instead (checked to exist at start)."""
    tables = app.tables
    if not callable(getattr(tables, "on_rebalance", None)) or not hasattr(tables, "recovery"):
        raise RuntimeError("Faust's TableManager.on_rebalance is gone: fencing cannot work")
    restore = tables.on_rebalance

    async def on_rebalance(
        assigned: Any, revoked: Any, newly_assigned: Any, generation_id: int = 0
    ) -> None:
        mine = sorted(tp.partition for tp in assigned if tp.topic == topic)
        await checkpoint.idle()  # a producer is dropped only once its commit has ended
        outputs.drop([p for p in outputs.partitions if p not in mine])
        new = [p for p in mine if p not in outputs.partitions]
        loop = asyncio.get_running_loop()
        if new:
            outputs.add(await loop.run_in_executor(None, outputs.start, new))
            log.info("transactional producers initialised for partitions %s", new)
        if mine:
            await loop.run_in_executor(None, outputs.mark_ends, changelogs, mine)
        await restore(assigned, revoked, newly_assigned, generation_id)

    tables.on_rebalance = on_rebalance


def standby_reader_config(settings: Settings) -> dict[str, Any]:
    """The standby reader's librdkafka consumer (``runtime/standby.py``): the app's group
    id, which the worker may read, though it never joins the group or commits; with
    fencing it reads only committed changelog records, as recovery does."""
    return librdkafka_config(
        settings,
        {
            "group.id": settings.app_id,
            "client.id": f"{settings.instance_id}-standby",
            "isolation.level": "read_committed" if settings.fencing else "read_uncommitted",
        },
    )


def faust_settings(settings: Settings, replication_factor: int) -> dict[str, Any]:
    """Faust configuration for the worker; every choice here is deliberate."""
    return {
        **faust_connection(settings),  # broker and credentials (kafka/connection.py)
        "store": "rocksdb://",
        "datadir": str(settings.data_dir),
        "topic_partitions": settings.partitions,
        "topic_replication_factor": replication_factor,
        "consumer_auto_offset_reset": "earliest",
        "consumer_group_instance_id": settings.instance_id,
        # Faust's assignor checks that a member's URL did not change; with static
        # membership a restarted worker (on another web port) would trip it.
        "canonical_url": f"http://{settings.instance_id}.invalid",
        "producer_acks": -1,
        "producer_linger": 0.002,
        "producer_max_batch_size": 256 * 1024,
        "broker_commit_interval": 1.0,
        "broker_session_timeout": float(settings.session_timeout_s),
        "broker_heartbeat_interval": min(3.0, settings.session_timeout_s / 3),
        "broker_max_poll_records": 2000,
        "stream_buffer_maxsize": 8192,
        "stream_wait_empty": True,
        "table_standby_replicas": settings.standby_replicas,  # at most workers - 1 (Faust)
        "web_enabled": True,
        "web_bind": settings.web_host,
        "web_host": settings.web_host,
        "web_port": settings.web_port,
        "web_tables_enabled": False,  # table data over HTTP without authentication: never
        "web_router_enabled": False,
        "web_stats_enabled": False,
        "web_graph_enabled": False,
        "web_metrics_enabled": False,
        "worker_redirect_stdouts": False,
        "processing_guarantee": "at_least_once",
    }


def raw_table(app: faust.App, settings: Settings, name: str, help_text: str) -> Any:
    """A RocksDB table of bytes to bytes, with a changelog of the worker's partition count.

    Faust derives a "json" serializer from ``key_type=bytes``, for the store and for
    the changelog topic it creates with the table; both are set to raw here.
    """
    changelog = app.topic(
        settings.changelog_topic(name),
        partitions=settings.partitions,
        compacting=True,
        deleting=False,
        acks=False,
        internal=True,
        **RAW,
    )
    table = app.Table(
        name,
        help=help_text,
        partitions=settings.partitions,
        default=None,
        schema=faust.Schema(**RAW),
        changelog_topic=changelog,
    )
    table.key_serializer = table.value_serializer = "raw"
    without_wal(table)
    return table


COMMIT_INTERVAL = 1.0  # seconds between the gate's offset commits
# with fencing, outputs are visible to read_committed readers only once committed:
# every settings.txn_commit_interval seconds (--txn-commit-interval)
PURGE_INTERVAL = 30.0  # seconds between deletions of processed internal records


def wire_offsets(
    app: faust.App,
    settings: Settings,
    processor: Processor,
    metrics: Metrics,
) -> None:
    """The gate's own offset management: start positions, seeks after gaps, the
    checkpoint on a timer (``gate/checkpoint.py``: outputs first, at-least-once), and
    forgetting partitions on rebalance."""
    topic = settings.user_events_topic
    admin = RenewingAdmin(settings)  # its lookups run in executor threads
    loop_tasks: set[asyncio.Task] = set()

    def skipped(found: tuple[int, int]) -> int:
        # records retention deleted before the gate read them (only with
        # --accept-data-loss; without it the lookup raised DataLossError)
        offset, lost = found
        if lost:
            metrics.skipped_records[topic] += lost
        return offset

    async def in_executor(function: Any, *args: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(None, function, *args)
        except DataLossError as exc:  # a gap in the gate's input: fail closed
            stop_worker(str(exc))
        except KafkaException as exc:  # asked again later, from fresh metadata if stale
            admin.renew_if_stale(exc)
            raise

    async def lookup_start(partition: int) -> int:
        return skipped(
            await in_executor(
                start_offset,
                admin.client,
                settings.app_id,
                topic,
                partition,
                settings.accept_data_loss,
            )
        )

    async def resume_at(partition: int, offset: int) -> int:
        return skipped(
            await in_executor(
                resume_offset,
                admin.client,
                topic,
                partition,
                offset,
                "the gate",
                settings.accept_data_loss,
            )
        )

    async def reposition(partition: int, expected: int | None) -> None:
        # Seek the partition to the next record the gate must process: its committed
        # offset after an unknown start, the next expected offset after a gap (records
        # Faust skipped come again). Faust's own perform_seek is no use here: aiokafka's
        # seek_to_committed skips partitions whose committed offset is missing or 0, and
        # the gate would then wait for a record that never comes.
        try:
            if expected is None:
                target = await lookup_start(partition)
            else:
                target = await resume_at(partition, expected)
            if target != expected:
                processor.offsets.start(partition, target)
            await app.consumer.seek(TP(topic, partition), target)
        except Exception as exc:  # revoked meanwhile, broker away: asked again later
            log.warning("partition %d: repositioning failed: %s", partition, exc)

    def request(partition: int, expected: int | None) -> None:
        task = asyncio.ensure_future(reposition(partition, expected))
        loop_tasks.add(task)
        task.add_done_callback(loop_tasks.discard)

    processor.positions.reposition = request
    faust_compat.unfilter_read_offsets(app.consumer)

    checkpoint = processor.checkpoint
    outputs = processor.outputs
    fencing = checkpoint.fencing

    @app.timer(settings.txn_commit_interval if fencing else COMMIT_INTERVAL)
    async def commit_gate_offsets() -> None:
        processor.positions.retry()
        await checkpoint.commit()

    @app.timer(PURGE_INTERVAL)
    async def purge_processed_records() -> None:
        # the internal topic keeps records until they are processed (kafka/topics.py)
        done = checkpoint.purgeable()
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, purge_committed, admin.client, topic, done
            )
        except Exception as exc:  # purged at the next interval
            admin.renew_if_stale(exc)
            log.warning("could not delete processed records of %s: %s", topic, exc)

    # On a clean stop, commit once more after Faust has stopped fetching and before it
    # closes the tables, so that a restart does not decide the last second again.
    async def commit_after_streams() -> None:
        try:
            await checkpoint.commit()
        except Exception as exc:  # the next worker re-reads; at-least-once holds
            log.warning("final offset commit failed: %s", exc)

    faust_compat.after_streams_drained(app, commit_after_streams)

    async def revoked(app: faust.App, tps: Any, **kwargs: Any) -> None:
        await checkpoint.idle()  # a producer is dropped only once its commit has ended
        for tp in tps:
            if tp.topic == topic:
                processor.forget(tp.partition)
        if fencing:  # re-created and initialised on assignment (_fence_before_recovery)
            outputs.drop([tp.partition for tp in tps if tp.topic == topic])

    async def assigned(app: faust.App, tps: Any, **kwargs: Any) -> None:
        mine = sorted(tp.partition for tp in tps if tp.topic == topic)
        for partition in mine:
            processor.forget(partition)
        # Faust seeks these partitions to the committed offsets; know them too, so that
        # the first records need no lookup (a record before this is done is re-read)
        for partition in mine:
            try:
                start = await lookup_start(partition)
            except Exception as exc:  # a timeout, a leader moving: looked up again later
                # (the partition's first record is UNKNOWN and repositions it)
                log.warning("partition %d: start offset not known yet: %s", partition, exc)
                continue
            if partition not in processor.offsets.expected:
                processor.offsets.start(partition, start)

    app.on_partitions_revoked.connect(revoked)
    app.on_partitions_assigned.connect(assigned)


def build(
    settings: Settings, policy: Policy, codec: Codec, replication_factor: int = 1
) -> Enforcer:
    """Build the worker's Faust app."""
    app = faust.App(settings.app_id, **faust_settings(settings, replication_factor))
    faust_compat.use_gate_transport(
        app,
        fetch_min_bytes=settings.fetch_min_bytes,
        read_committed=settings.fencing,
        fast_dispatch=os.environ.get("ENFORCER_FAST_DISPATCH", "1") != "0",
    )
    n = settings.partitions
    # acks=False: Faust does not commit this topic's offsets (it would commit past
    # records its streams skip during recovery); the gate commits its own (gate/offsets.py).
    user_events = app.topic(
        settings.user_events_topic, partitions=n, internal=True, acks=False, **RAW
    )
    consent = raw_table(app, settings, "consent", "Consent state per user (per platform).")
    ledger = raw_table(app, settings, "ledger", "Live posts per user.")
    # standby records queued when recovery completes are kept (Faust emptied the queue)
    faust_compat.keep_changelog_queue_on_resume(app)
    metrics = Metrics()
    outputs = OutputProducer(settings)
    consent_state = TableState(consent, settings.changelog_topic("consent"), outputs)
    ledger_state = TableState(ledger, settings.changelog_topic("ledger"), outputs)
    processor = Processor(
        app, settings, policy, codec, consent_state, ledger_state, outputs, metrics
    )
    rekeyer = RekeyStage(settings)
    processor.rekeyer = metrics.stage = rekeyer
    metrics.codec = codec

    # The agent subscribes the worker to the internal topic, which is what makes Faust
    # assign its partitions together with the table partitions. Its records normally
    # reach the processor straight from Faust's fetch loop (_dispatch_to_gate); the
    # stream path remains for ENFORCER_DIRECT_DISPATCH=0. Processing has no await, so a
    # shutdown cannot cancel it halfway through an input.
    async def gate(stream: faust.StreamT) -> None:
        async for events in stream.take_events(GATE_BATCH, within=GATE_WITHIN):
            processor.process(event.message for event in events)

    app.agent(user_events, name="gate")(gate)
    if os.environ.get("ENFORCER_DIRECT_DISPATCH", "1") != "0":
        _dispatch_to_gate(app, settings.user_events_topic, processor)
    wire_offsets(app, settings, processor, metrics)
    if settings.fencing:
        _fence_before_recovery(
            app,
            settings.user_events_topic,
            [settings.changelog_topic("consent"), settings.changelog_topic("ledger")],
            outputs,
            processor.checkpoint,
        )

    if settings.standby_replicas:  # after every other wrapper of tables.on_rebalance
        standby.install(app, standby_reader_config(settings))

    @app.task
    async def start_rekeying() -> None:
        rekeyer.start()

    @app.timer(1.0)
    async def watch_rekeying() -> None:
        if not rekeyer.is_alive() and not rekeyer.stopping.is_set() and not app.should_stop:
            log.critical("the re-keying stage exited (%s); exiting", rekeyer.process.exitcode)
            logging.shutdown()
            os._exit(70)

    frozen = False

    @app.task
    async def freeze_startup_objects() -> None:
        # The objects of a started worker (Faust, aiokafka, the tables) live as long as
        # it does; once it is ready, move them out of the collector's reach. A full
        # collection then no longer walks them: 50 ms pauses, a tail of every latency.
        # Done once: the task ends there.
        nonlocal frozen
        while not app.should_stop:
            if processor.ready():
                gc.collect()
                gc.freeze()
                frozen = True
                return
            await app.sleep(0.2)

    @app.on_before_shutdown.connect
    def stop_rekeying(app: faust.App, **kwargs: Any) -> None:
        rekeyer.stop(30)
        outputs.flush()

    def worker_ready() -> bool:
        return frozen and processor.ready()

    @app.page("/ready")
    async def ready(web: Any, request: Any) -> Any:
        ok = worker_ready()
        return web.json({"ready": ok}, status=200 if ok else 503)

    @app.page("/metrics")
    async def prometheus(web: Any, request: Any) -> Any:
        lags = gate_lags(app.consumer, settings.user_events_topic, processor.offsets.expected)
        text = metrics.render(worker_ready(), lags)
        return web.text(text, content_type="text/plain; version=0.0.4")

    install_consent_lookup(app, settings, processor)  # GET /consent/{user_id}, if configured
    return Enforcer(app, processor, metrics)
