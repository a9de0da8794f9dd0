"""The compatibility boundary: every private (or unpublished) name of Faust, mode and
aiokafka that the worker relies on is used here and nowhere else, each with why.

faust-streaming, mode-streaming and aiokafka are pinned exactly (``pyproject.toml``;
every other package through ``constraints.txt``): an upgrade is a deliberate change,
made with the crash and chaos tests. Several of these names would fail silently if
they changed (a never-ready worker, a dropped final commit, the gate's partition stall
back), so the worker checks them all before anything else (``require``, called by
``enforcer worker``) and stops with one line naming what is missing.

Faust's own extension points are used where there is one: the app's transport (its
public ``App.transport`` setter) is a ``GateTransport``, whose ``Consumer`` class
attribute makes Faust build a ``GateConsumer``, whose consumer thread is a
``GateConsumerThread``. The private methods these subclasses override apply to the
enforcer's app only, never to Faust's classes as a whole. What Faust offers no hook
for is done on the app's own objects (``unfilter_read_offsets``, ``commit_offsets``,
``after_streams_drained``, ``open_partitions``) or read (``recovered``,
``recovered_to``).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import os
import types
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from time import monotonic
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode.services import WaitResults

log = logging.getLogger(__name__)

# aiokafka's fetch wait for the gate's consumer (Faust hard-codes 1,500 ms)
FETCH_MAX_WAIT_MS = 10
# the versions the names below were checked against (pinned in pyproject.toml)
TESTED = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.1", "aiokafka": "0.14.0"}


# -- what is relied on, checked at start -----------------------------------------------
@dataclass(frozen=True)
class Relied:
    """One name of Faust, mode or aiokafka the worker relies on, and why.

    ``owner`` is ``"module:Class"``; ``params`` a method's parameter names, if it is
    called or overridden; ``used_by`` methods of the owner that must still use the name
    (without them, setting or replacing it would silently do nothing)."""

    owner: str
    name: str
    why: str
    params: tuple[str, ...] | None = None
    used_by: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        """``module.Class.name``, as the self-check names it."""
        return f"{self.owner.replace(':', '.')}.{self.name}"


_CONSUMER = "faust.transport.consumer:Consumer"
_AIOKAFKA = "faust.transport.drivers.aiokafka"

RELIED_ON: tuple[Relied, ...] = (
    Relied(
        f"{_AIOKAFKA}:Transport",
        "Consumer",
        "the class a transport makes the app's consumer from: GateTransport's is GateConsumer",
        used_by=("create_consumer",),
    ),
    Relied(
        f"{_AIOKAFKA}:Consumer",
        "_new_consumer_thread",
        "overridden by GateConsumer to run a GateConsumerThread",
        params=("self",),
        used_by=("__init__",),
    ),
    Relied(
        f"{_AIOKAFKA}:AIOKafkaConsumerThread",
        "_create_worker_consumer",
        "overridden by GateConsumerThread: the worker consumer's fetch settings, which Faust "
        "hard-codes",
        params=("self", "transport"),
        used_by=("_create_consumer",),
    ),
    Relied(
        f"{_AIOKAFKA}:AIOKafkaConsumerThread",
        "_seek_wait",
        "overridden by GateConsumerThread: a recovery seek starts a new epoch of its partitions",
        params=("self", "consumer", "partitions"),
        used_by=("seek_wait",),
    ),
    Relied(
        f"{_AIOKAFKA}:AIOKafkaConsumerThread",
        "_fetch_records",
        "overridden by GateConsumerThread: batches stamped with their partitions' seek epochs",
        params=("self", "consumer", "active_partitions", "timeout", "max_records"),
        used_by=("getmany",),
    ),
    Relied(
        "faust.tables.manager:TableManager",
        "changelog_topics",
        "which fetched batches GateConsumerThread stamps with their seek epoch",
    ),
    Relied(
        "faust.transport.utils:TopicBuffer",
        "add",
        "iterates a fetched batch with iter() as Faust hands it out (SoughtBatch.__iter__)",
        params=("self", "tp", "buffer"),
    ),
    Relied(
        "aiokafka:AIOKafkaConsumer",
        "_fetch_max_wait_ms",
        "set before start: decisions 0.3-1.5 s late at Faust's 1,500 ms",
        used_by=("__init__", "start"),
    ),
    Relied(
        "aiokafka:AIOKafkaConsumer",
        "_fetch_min_bytes",
        "set before start: --fetch-min-bytes for the gate's consumer",
        used_by=("__init__", "start"),
    ),
    Relied(
        "aiokafka:AIOKafkaConsumer",
        "_isolation_level",
        "set before start: read_committed with fencing (Faust does so only for exactly_once)",
        used_by=("__init__", "start"),
    ),
    Relied(
        _CONSUMER,
        "wait_first",
        "GateConsumer awaits a message's callback directly while the flow is not suspended",
        params=("self", "coros", "timeout"),
        used_by=("_drain_messages",),
    ),
    Relied(
        _CONSUMER,
        "suspend_flow",
        "the event whose wait GateConsumer.wait_first drops while it is not set",
        used_by=("__init__", "_drain_messages"),
    ),
    Relied(
        _CONSUMER,
        "callback",
        "replaced by the gate's: its topic's records that still come one by one",
        used_by=("__init__", "_drain_messages"),
    ),
    Relied(
        f"{_AIOKAFKA}:Consumer",
        "_getmany",
        "overridden by GateConsumer: the gate takes its topic's records a fetched batch at a time",
        params=("self", "active_partitions", "timeout"),
        used_by=("_wait_next_records",),
    ),
    Relied(
        _CONSUMER,
        "_read_offset",
        "Faust's filter of records below the last one handed out, off (unfilter_read_offsets)",
        used_by=("__init__", "_drain_messages", "seek"),
    ),
    Relied(
        f"{_AIOKAFKA}:Consumer",
        "_commit",
        "commits the gate's own offsets (Faust's commit() commits only acknowledged ones)",
        params=("self", "offsets"),
    ),
    Relied(
        "faust.app.base:App",
        "_consumer_wait_empty",
        "wrapped: the gate's last commit after a clean stop or a revocation",
        params=("self", "consumer", "logger"),
        used_by=("_stop_consumer", "_on_partitions_revoked"),
    ),
    Relied(
        "faust.app.base:App",
        "transport",
        "set to a GateTransport before anything uses it",
    ),
    Relied(
        "faust.app.base:App",
        "rebalancing",
        "read for readiness",
        used_by=("on_rebalance_start", "on_rebalance_end"),
    ),
    Relied(
        "faust.stores.rocksdb:Store",
        "_dbs",
        "the open RocksDB partitions, read and written by the gate directly",
        used_by=("__init__", "_db_for_partition", "revoke_partitions"),
    ),
    Relied(
        "faust.stores.rocksdb:Store",
        "_db_for_partition",
        "how Faust opens (and restores) a partition into _dbs; the gate never opens one",
        params=("self", "partition"),
    ),
    Relied(
        "faust.stores.rocksdb:Store",
        "persisted_offset",
        "the changelog offset a partition reflects",
        params=("self", "tp"),
    ),
    Relied(
        "faust.stores.rocksdb:Store",
        "set_persisted_offset",
        "persisted by the gate after its own writes",
        params=("self", "tp", "offset"),
    ),
    Relied(
        "faust.stores.rocksdb:RocksDBOptions",
        "open",
        "overridden by ledger.ChangelogBackedOptions: writes without the write-ahead log",
        params=("self", "path", "read_only"),
    ),
    Relied(
        "faust.tables.manager:TableManager",
        "on_rebalance",
        "wrapped with fencing: producers initialised before the tables are restored",
        params=("self", "assigned", "revoked", "newly_assigned", "generation_id"),
    ),
    Relied(
        "faust.tables.manager:TableManager",
        "recovery",
        "the recovery service, read for readiness",
    ),
    Relied(
        "faust.tables.recovery:Recovery",
        "in_recovery",
        "read for readiness",
        used_by=("_set_recovery_started", "_set_recovery_ended"),
    ),
    Relied(
        "faust.tables.recovery:Recovery",
        "completed",
        "read for readiness",
        used_by=("__init__",),
    ),
    Relied(
        "faust.tables.recovery:Recovery",
        "active_highwaters",
        "the changelog end recovery read to, for the offsets the gate persists",
        used_by=("__init__", "active_remaining"),
    ),
    # the direct restore (GateConsumer._getmany, restore_fetched): what Faust's own
    # recovery loop (_slurp_changelogs) reads and writes for each changelog event
    *(
        Relied(
            "faust.tables.recovery:Recovery",
            name,
            "the direct restore keeps it as Faust's recovery loop (_slurp_changelogs) does",
        )
        for name in (
            "active_tps",
            "standby_tps",
            "active_offsets",
            "standby_offsets",
            "tp_to_table",
            "buffers",
            "signal_recovery_end",
            "need_recovery",
            "flush_buffers",
            "_set_recovery_ended",
            "standby_remaining_total",
        )
    ),
    Relied(
        "faust.tables.recovery:Recovery",
        "_active_events_received_at",
        "the direct restore marks when records came, as Faust's recovery loop does",
        used_by=("_verify_remaining",),
    ),
    Relied(
        "faust.tables.recovery:Recovery",
        "_standby_events_received_at",
        "the direct restore marks when records came, as Faust's recovery loop does",
    ),
    Relied(
        "faust.tables.manager:TableManager",
        "on_standbys_ready",
        "called by the direct restore once the standbys have caught up",
        params=("self",),
    ),
    Relied(
        "faust.tables.base:Collection",
        "_on_changelog_event",
        "the direct restore leaves a table with a changelog callback to Faust",
        used_by=("on_changelog_event",),
    ),
    Relied(
        "mode.utils.queues:FlowControlEvent",
        "resume",
        "replaced on the app's event (keep_changelog_queue_on_resume): the same, except that "
        "it leaves Faust's changelog queue alone",
        params=("self",),
    ),
    *(
        Relied(
            "mode.utils.queues:FlowControlEvent",
            name,
            "what FlowControlEvent.resume sets and clears, done by keep_changelog_queue_on_resume",
            used_by=("resume",) if name != "_queues" else ("clear", "manage_queue"),
        )
        for name in ("_suspend", "_resume", "_queues")
    ),
    Relied(
        "faust.tables.manager:TableManager",
        "changelog_queue",
        "the recovery loop's queue, which flow_control.resume() must not empty",
    ),
    Relied(
        "faust.tables.recovery:Recovery",
        "on_recovery_completed",
        "calls flow_control.resume() after the standbys started fetching (the reason for "
        "keep_changelog_queue_on_resume)",
        params=("self", "generation_id"),
    ),
    Relied(
        "faust.tables.recovery:Recovery",
        "_add",
        "keeps the offset it last read for a partition whose database has none "
        "(restore_from_start pops it)",
        params=("self", "table", "tp", "offsets"),
    ),
    Relied(
        "faust.tables.recovery:Recovery",
        "add_standby",
        "replaced on the app's recovery (take_standbys): the worker's own reader keeps the "
        "standby copies (runtime/standby.py)",
        params=("self", "table", "tp"),
        used_by=("on_rebalance",),
    ),
    Relied(
        "faust.tables.recovery:Recovery",
        "standby_tps",
        "left empty (take_standbys): Faust's recovery then never resumes, seeks or reads a "
        "standby partition",
        used_by=("__init__", "add_standby", "on_rebalance"),
    ),
    Relied(
        "faust.stores.rocksdb:Store",
        "apply_changelog_batch",
        "the direct restore writes a fetched batch with it (message tp, offset, key, value)",
        params=("self", "batch", "to_key", "to_value"),
    ),
)


class MissingInternals(Exception):
    """The installed Faust, mode or aiokafka lacks a name the worker relies on."""


def _resolve(owner: str) -> Any:
    module, _, qualname = owner.partition(":")
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def _names(code: types.CodeType) -> Iterator[str]:
    """The attribute and global names a code object and the ones nested in it use."""
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _names(const)


def _uses(function: Any) -> set[str]:
    code = getattr(inspect.unwrap(function), "__code__", None)
    return set(_names(code)) if code is not None else set()


def _defined(cls: type, name: str) -> bool:
    """An attribute of the class, an annotated one, or one its ``__init__`` sets."""
    if hasattr(cls, name):
        return True
    if any(name in getattr(c, "__annotations__", {}) for c in cls.__mro__):
        return True
    return name in _uses(getattr(cls, "__init__", None))


def _problem(relied: Relied) -> str | None:
    """What is wrong with one relied-on name, or None."""
    try:
        cls = _resolve(relied.owner)
    except (ImportError, AttributeError):
        return f"{relied.owner.replace(':', '.')} (missing)"
    if not _defined(cls, relied.name):
        return f"{relied.path} (missing)"
    if relied.params is not None:
        try:
            params = tuple(inspect.signature(getattr(cls, relied.name)).parameters)
        except (TypeError, ValueError, AttributeError):
            params = ()
        if params != relied.params:
            return f"{relied.path} (parameters {params}, expected {relied.params})"
    for method in relied.used_by:
        if relied.name not in _uses(getattr(cls, method, None)):
            return f"{relied.path} (no longer used by {method})"
    return None


def check() -> list[str]:
    """What is missing or changed, one entry per relied-on name (empty: all there)."""
    return [p for p in map(_problem, RELIED_ON) if p is not None]


def require() -> None:
    """Raise ``MissingInternals`` with one line naming every missing or changed name."""
    problems = check()
    if problems:
        tested = ", ".join(f"{name} {version}" for name, version in TESTED.items())
        raise MissingInternals(
            f"the installed Faust/mode/aiokafka lacks what the worker relies on: "
            f"{'; '.join(problems)} (tested with {tested})"
        )


# -- the gate's consumer: Faust's transport and consumer classes, subclassed ---------
class GateConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread with the gate's fetch settings.

    Faust hard-codes ``fetch_max_wait_ms=1500`` for its worker consumer. Its fetch
    requests also name the (idle) changelog partitions, and the broker held them for
    the full wait even while the internal topic had data: decisions came 0.3-1.5 s late
    at 1,000 posts/s. A short wait keeps decision latency in milliseconds; a fetch
    returns early once ``fetch_min_bytes`` are there (fewer requests for the broker).

    With fencing the consumer also reads ``read_committed`` (Faust does so only with its
    own ``exactly_once``): table recovery then never restores an aborted write of a
    fenced worker, and the end offsets recovery reads to are the last stable ones.
    aiokafka reads all three when the consumer starts (its fetcher is made then), so
    setting them on the consumer Faust has just built is enough."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        consumer._fetch_min_bytes = transport.fetch_min_bytes
        if transport.read_committed:
            consumer._isolation_level = "read_committed"
        return consumer

    # Records fetched before a recovery seek, handed out after it. Faust's recovery
    # seeks a changelog partition (``Recovery._seek_offsets`` -> ``_seek_wait``) while
    # its drain loop may still be handing out a batch fetched from the old position
    # (it awaits each record's callback). Such a record, applied after the seek, made
    # the recovery loop skip the records the seek was for (at or below the last one it
    # applied): a standby or restored copy silently lacked them (the chaos run
    # 20261203T063705Z: seeks to 0 followed by first records at 63-625). Each seek
    # counts as a new epoch of its partitions; a changelog batch is stamped with its
    # partition's epoch when aiokafka returns it (on the consumer's thread, where the
    # seeks run too), and handing it out stops once its partition was sought again.
    # A batch fetched before a partition's first seek (epoch 0) is stopped by that seek.
    _seek_epochs: dict[Any, int] | None = None

    def _epochs(self) -> dict[Any, int]:
        if self._seek_epochs is None:
            self._seek_epochs = {}
        return self._seek_epochs

    async def _seek_wait(self, consumer: Any, partitions: Mapping[Any, int]) -> None:
        epochs = self._epochs()
        for tp in partitions:
            epochs[tp] = epochs.get(tp, 0) + 1
        await super()._seek_wait(consumer, partitions)

    async def reseek(self, tp: Any, offset: int, epoch: int) -> None:
        """Read ``tp`` again from ``offset``, in a new epoch (``ChangelogDeliveries``),
        unless it was sought since ``epoch`` (recovery's own seek then goes back as far as
        its loop applied, which is before ``offset``)."""
        await self.call_thread(self._reseek, self._ensure_consumer(), tp, offset, epoch)

    async def _reseek(self, consumer: Any, tp: Any, offset: int, epoch: int) -> None:
        epochs = self._epochs()
        if epochs.get(tp, 0) != epoch:
            return
        epochs[tp] = epoch + 1
        if tp in consumer.assignment():
            consumer.seek(tp, offset)

    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: Any,
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Any:
        records = await super()._fetch_records(
            consumer, active_partitions, timeout=timeout, max_records=max_records
        )
        if records:  # no await since aiokafka returned them: no seek in between
            epochs = self._epochs()
            changelogs = self.app.tables.changelog_topics
            for tp, batch in records.items():
                if tp.topic in changelogs:
                    records[tp] = SoughtBatch(batch, epochs, tp)
        return records


class SoughtBatch(list):
    """A fetched batch of a partition that recovery seeks: iterating it stops as soon as
    the partition has been sought again (``GateConsumerThread``)."""

    def __init__(self, batch: Any, epochs: Mapping[Any, int], tp: Any) -> None:
        super().__init__(batch)
        self.epochs = epochs
        self.tp = tp
        self.epoch = epochs.get(tp, 0)

    @property
    def stale(self) -> bool:
        """The partition was sought since this batch was fetched."""
        return self.epochs.get(self.tp, 0) != self.epoch

    def __iter__(self) -> Iterator[Any]:
        for record in super().__iter__():
            if self.stale:
                return
            yield record


class ChangelogDeliveries:
    """Which fetched changelog records Faust's drain loop actually handed on to its
    recovery loop, and a new read of what it dropped.

    Faust drops fetched records in several places on the assumption that a seek will
    follow (records of a partition it no longer counts as active when it hands a batch
    out, records of a flow being suspended), and for a standby partition none does: its
    recovery offset moves past them with the next record applied. A long chaos run
    (20261203T065101Z, instrumented) showed whole first batches of standby partitions
    (548 and 1,476 records) returned by aiokafka 13 ms after the standby seek and never
    queued. Here every changelog batch's offsets are noted when it is fetched (in its
    seek epoch, ``GateConsumerThread``); a record handed on past noted offsets that were
    not is held back, and so is the rest of the partition's epoch, while the partition is
    read again from the first offset dropped (``reseek``): the recovery loop then gets
    the partition's records in order, none missing."""

    def __init__(
        self, epochs: Callable[[], Mapping[Any, int]], reseek: Callable[[Any, int, int], None]
    ) -> None:
        self.epochs = epochs
        self.reseek = reseek
        self.pending: dict[Any, tuple[int, deque[int]]] = {}  # tp -> (epoch, offsets)
        self.held: dict[Any, int] = {}  # tp -> the epoch held back until a new read

    def fetched(self, records: Mapping[Any, Any]) -> None:
        """Note the offsets of the changelog batches just fetched (main thread)."""
        for tp, batch in records.items():
            if isinstance(batch, SoughtBatch) and not batch.stale and batch:
                epoch, offsets = self.pending.get(tp, (None, None))
                if epoch != batch.epoch or offsets is None:
                    offsets = deque()
                    self.pending[tp] = (batch.epoch, offsets)
                offsets.extend(record.offset for record in batch)

    def deliverable(self, tp: Any, offset: int) -> bool:
        """False if the record must not reach the recovery loop: records fetched before
        it in the same epoch were dropped (then a new read is asked for), or its epoch is
        held back until that read."""
        epoch = self.epochs().get(tp, 0)
        if tp in self.held:
            if self.held[tp] == epoch:
                return False
            del self.held[tp]
        noted = self.pending.get(tp)
        if noted is None or noted[0] != epoch:
            return True
        offsets = noted[1]
        first_dropped = None
        while offsets and offsets[0] < offset:
            dropped = offsets.popleft()
            first_dropped = dropped if first_dropped is None else first_dropped
        if offsets and offsets[0] == offset:
            offsets.popleft()
        if first_dropped is None:
            return True
        self.held[tp] = epoch
        del self.pending[tp]
        log.warning(
            "%s[%d]: changelog records from offset %d were fetched but not handed to "
            "recovery; read again from there",
            tp.topic,
            tp.partition,
            first_dropped,
        )
        self.reseek(tp, first_dropped, epoch)
        return False


class GateConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with the gate's dispatch (the app's only consumer)."""

    #: called with each fetched batch (topic partition -> records) before Faust sees it;
    #: it takes out what it handles (``take_fetched``)
    fetched: Callable[[dict], None] | None = None

    def _new_consumer_thread(self) -> Any:
        return GateConsumerThread(self, loop=self.loop, beacon=self.beacon)

    _deliveries: ChangelogDeliveries | None = None
    _reseeks: set[Any] | None = None

    @property
    def changelog_deliveries(self) -> ChangelogDeliveries:
        """The check of what Faust hands on of the changelogs (made on first use)."""
        if self._deliveries is None:
            thread = self._thread
            self._reseeks = set()

            def reseek(tp: Any, offset: int, epoch: int) -> None:
                task = asyncio.ensure_future(thread.reseek(tp, offset, epoch))
                assert self._reseeks is not None
                self._reseeks.add(task)
                task.add_done_callback(self._reseeks.discard)

            self._deliveries = ChangelogDeliveries(thread._epochs, reseek)
        return self._deliveries

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:
        records = await super()._getmany(active_partitions, timeout)
        if self.fetched is not None:
            self.fetched(records)
        if records and self.transport.direct_restore:
            restore_fetched(self, records)
        if records:
            self.changelog_deliveries.fetched(records)
        return records

    async def wait_first(self, *coros: Any, timeout: Any = None) -> Any:
        """Faust hands every fetched message to the streams with
        ``wait_first(callback(message), suspend_flow.wait())``: four tasks and an
        ``asyncio.wait`` per message, the largest per-message cost in the profile. While
        the flow is not suspended (no rebalance), the callback is awaited directly;
        otherwise, or with ``ENFORCER_FAST_DISPATCH=0``, Faust's behaviour is kept."""
        if (
            self.transport.fast_dispatch
            and len(coros) == 2
            and timeout is None
            and asyncio.iscoroutine(coros[0])
            and asyncio.iscoroutine(coros[1])
            and not self.suspend_flow.is_set()
            and not self.should_stop
        ):
            coros[1].close()  # the suspend_flow.wait() that is not needed
            return WaitResults([coros[0]], [await coros[0]], False)
        return await super().wait_first(*coros, timeout=timeout)


class GateTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport, making a ``GateConsumer`` with these settings."""

    Consumer = GateConsumer
    fetch_min_bytes = 1
    read_committed = False
    fast_dispatch = True
    direct_restore = False


def use_gate_transport(
    app: Any, *, fetch_min_bytes: int, read_committed: bool, fast_dispatch: bool
) -> None:
    """Make the app's consumer a ``GateConsumer``. Call right after the app is made,
    before anything uses its transport (its topics, tables and agents do).
    ``ENFORCER_DIRECT_RESTORE`` (``restore_fetched``) is read here."""
    transport = GateTransport(app.conf.broker_consumer, app)
    transport.fetch_min_bytes = fetch_min_bytes
    transport.read_committed = read_committed
    transport.fast_dispatch = fast_dispatch
    transport.direct_restore = direct_restore_enabled()
    app.transport = transport


def direct_restore_enabled() -> bool:
    """``ENFORCER_DIRECT_RESTORE=1`` restores fetched changelog batches directly
    (``restore_fetched``); 0, the default, leaves every record to Faust's recovery loop."""
    return os.environ.get("ENFORCER_DIRECT_RESTORE", "0") == "1"


class ChangelogEvent:
    """A changelog record as Faust's ``Store.apply_changelog_batch`` reads an event:
    ``event.message.tp``, ``.offset``, ``.partition``, ``.key``, ``.value`` (the direct
    restore's fetched records and the standby reader's, ``runtime/standby.py``)."""

    __slots__ = ("key", "offset", "partition", "tp", "value")

    def __init__(self, tp: TP, offset: int, key: bytes | None, value: bytes | None) -> None:
        self.tp = tp
        self.partition = tp.partition
        self.offset = offset
        self.key = key
        self.value = value

    @property
    def message(self) -> ChangelogEvent:
        return self


def restore_fetched(consumer: Any, records: dict) -> None:
    """Restore fetched changelog batches straight into the tables' RocksDB, a batch per
    partition, taking them out of ``records`` before Faust sees them.

    Faust hands every changelog record to its recovery loop one at a time: a message
    object, the conductor's lock, an event with its key and value decoded, a flow-control
    queue, an ``asyncio.wait_for`` per record and the recovery's bookkeeping
    (``need_recovery`` over every partition) per record; in the profile of a worker
    restoring 400,000 records that was nearly all of its 57 s of CPU, and
    ``apply_changelog_batch`` (the RocksDB writes) 2% of it. This does per batch what
    that loop does per record, with the same state: records at or below the offset
    already applied are skipped, the rest written with the table's own
    ``apply_changelog_batch`` (RocksDB write batches and the persisted offset), the
    partition's recovery offset set to the last one; then, as the loop does after each
    record, the end of the active recovery is signalled once nothing is left (Faust's
    ``_restart_recovery`` then goes on exactly as before) and the standbys are marked
    ready once caught up. Anything Faust buffered first is applied first.

    Only partitions Faust is recovering or keeping as standby are taken, only while the
    flow is active (Faust drops fetched records otherwise; they are fetched again after
    its seek), and only for tables without a changelog callback: every other record goes
    on to Faust unchanged."""
    app = consumer.app
    if (
        not consumer.flow_active
        or consumer.suspend_flow.is_set()
        or consumer.should_stop
        or not app.flow_control.is_active()
    ):
        return
    recovery = app.tables.recovery
    active, standby, tables = recovery.active_tps, recovery.standby_tps, recovery.tp_to_table
    mine = [
        tp
        for tp in records
        if (tp in active or tp in standby)
        and getattr(tables.get(tp), "_on_changelog_event", 1) is None
    ]
    if not mine:
        return
    if any(recovery.buffers.values()):
        recovery.flush_buffers()
    now = monotonic()
    any_standby = False
    for tp in mine:
        batch = records.pop(tp)
        if tp in active:
            offsets = recovery.active_offsets
            recovery._active_events_received_at[tp] = now
        else:
            offsets = recovery.standby_offsets
            recovery._standby_events_received_at[tp] = now
            any_standby = True
        seen = offsets.get(tp)
        todo = [
            ChangelogEvent(tp, r.offset, r.key, r.value)
            for r in batch
            if seen is None or r.offset > seen
        ]
        if not todo:
            continue
        tables[tp].apply_changelog_batch(todo)
        offsets[tp] = todo[-1].offset
    if recovery.in_recovery and not recovery.need_recovery():
        recovery.flush_buffers()
        recovery._set_recovery_ended()
        recovery.signal_recovery_end.set()
    if any_standby and not app.tables.standbys_ready and not recovery.standby_remaining_total():
        app.tables.on_standbys_ready()


def take_fetched(consumer: Any, take: Callable[[dict], None]) -> None:
    """Hand each batch the consumer fetches (topic partition -> aiokafka records) to
    ``take`` before Faust sees it; ``take`` removes the partitions it handles."""
    if not isinstance(consumer, GateConsumer):
        raise RuntimeError("the app's consumer is not a GateConsumer (use_gate_transport)")
    consumer.fetched = take


class _Unfiltered(defaultdict):
    """Faust's read offsets, as Faust's drain loop reads them: never one (``None``)."""

    def __init__(self, offsets: Mapping[Any, Any]) -> None:
        super().__init__(lambda: None, offsets)

    def __getitem__(self, tp: Any) -> Any:
        return None


def unfilter_read_offsets(consumer: Any) -> None:
    """Turn off Faust's filter of fetched records: it drops a record whose offset is
    below the last one it handed out (its read offsets), and a seek does not reliably
    reset that: records of a batch fetched before the seek set it forward again, and
    the records the seek was for were then dropped silently.

    * The gate's topic: a partition stalled in the crash test. The gate tracks its own
      offsets (``gate/offsets.py``) and wants every record.
    * The changelogs: recovery seeks a standby or restored partition back (to 0 for one
      with nothing on disk) while records fetched before were still being handed out;
      the filter then dropped the changelog's first records, and the copy lacked them
      for good (the chaos run 20261203T061914Z: the first 122 and 95 records of two
      consent partitions of a restarted worker's standby copies, found by the run's
      local state check). Faust's recovery loop skips by itself any record at or below
      the last one it applied.

    Call before the consumer starts fetching (Faust binds the mapping's methods then)."""
    consumer._read_offset = _Unfiltered(consumer._read_offset)


async def commit_offsets(consumer: Any, offsets: Mapping[TP, int]) -> bool:
    """Commit these offsets for the consumer's group; True if committed. Faust's public
    ``commit`` commits only what its streams acknowledged, and the gate acknowledges
    nothing (it owns its offsets: ``gate/offsets.py``)."""
    return bool(await consumer._commit(offsets))


def after_streams_drained(app: Any, then: Callable[[], Awaitable[None]]) -> None:
    """Await ``then`` each time Faust has waited for its streams to finish their events:
    on a clean stop after it stopped fetching and before it closes the tables, and on
    every revocation before the partitions go. Faust offers no signal at that point
    (``on_before_shutdown`` comes after the tables are closed)."""
    wait_empty = app._consumer_wait_empty

    async def wait_empty_then(consumer: Any, logger: Any) -> None:
        await wait_empty(consumer, logger)
        await then()

    app._consumer_wait_empty = wait_empty_then


def keep_changelog_queue_on_resume(app: Any) -> None:
    """Stop ``app.flow_control.resume()`` from emptying Faust's changelog queue.

    The queue (``TableManager.changelog_queue``, read by the recovery loop) is a mode
    ``FlowControlQueue`` made with ``clear_on_resume``, and ``resume()`` empties it every
    time. Recovery calls ``resume()`` again once it completes
    (``Recovery.on_recovery_completed``), after the standby partitions were sought and
    started fetching: standby records already queued were dropped, the consumer's
    position had moved past them, and the standby offset moved past them with the next
    record applied. A standby copy then silently lacked a range of its changelog, and a
    worker taking its partition over restored from that copy: it published posts of
    users who had objected and could not retract posts missing from its ledger (the
    chaos run 20261203T055850Z: 166 of a worker's first 228 ledger records of a
    partition; faust-streaming/faust#212 and #596 report the same loss).

    The queue is still emptied by ``flow_control.clear()`` at a revocation, where it is
    safe: recovery then seeks every changelog partition to the last record it applied,
    so what was queued is fetched again. Every other queue the event manages is emptied
    on ``resume()`` as before."""
    flow = app.flow_control
    changelog_queue = app.tables.changelog_queue  # made now if not yet, managed by flow

    def resume() -> None:
        flow._suspend.clear()
        flow._resume.set()
        for queue in list(flow._queues):
            if queue is not changelog_queue:
                queue.clear()

    flow.resume = resume


def take_standbys(app: Any, add: Callable[[Any, TP], None]) -> None:
    """Name the app's standby partitions to ``add`` instead of keeping them with
    Faust's recovery loop (``runtime/standby.py`` says why). Faust's recovery calls
    ``add_standby(table, tp)`` for each standby partition its assignor gave the worker
    at every rebalance; replaced on the app's recovery, its ``standby_tps`` stays empty,
    so it never resumes, seeks or reads those partitions (the consumer pauses every
    assigned partition at a rebalance, and recovery resumes only what it reads)."""
    app.tables.recovery.add_standby = add


def restore_from_start(table: Any, topic: str, partition: int) -> None:
    """Make Faust's next recovery of a changelog partition whose local database was just
    emptied read the changelog from its start. Faust starts from the offset the
    database persisted, or, when there is none, from the offset it last read in this
    process (``Recovery._add`` keeps it for a partition that stays assigned through a
    rebalance), which would leave the emptied database without everything before it."""
    try:
        recovery = table.app.tables.recovery
    except AttributeError:  # a test's stand-in table (the self-check covers Faust's)
        return
    tp = TP(topic, partition)
    recovery.active_offsets.pop(tp, None)
    recovery.standby_offsets.pop(tp, None)


def open_partitions(table: Any) -> MutableMapping[int, Any]:
    """The table's open RocksDB partitions, partition -> database: the dict Faust fills
    when it opens (and restores) a partition and empties when it is revoked, never
    replaced. A partition that is not in it was never recovered here."""
    dbs: MutableMapping[int, Any] = table.data._dbs
    return dbs


def recovered(app: Any) -> bool:
    """True once the app has started, no rebalance is going on, and Faust has recovered
    its tables. False while any of these attributes is not there yet (the app not
    started, a stand-in app): the self-check has made sure Faust has them."""
    try:
        recovery = app.tables.recovery
        return bool(
            app.started
            and not app.rebalancing
            and not recovery.in_recovery
            and recovery.completed.is_set()
        )
    except AttributeError:
        return False


def recovered_to(table: Any, tp: TP) -> int:
    """The last changelog offset Faust's recovery read the partition to (-1: none, or
    not a Faust table)."""
    try:
        return int(table.app.tables.recovery.active_highwaters.get(tp, -1))
    except AttributeError:
        return -1
