"""The gate's state: the consent table and the live-post ledger, on RocksDB.

Both are Faust tables (Faust creates their RocksDB partitions and restores them from
their changelog topics on assignment). The gate reads and writes the partition of
the event directly, and writes each change's changelog record through the output
producer, so that a batch needs no per-record Faust machinery.

The ledger holds which posts of a user are live in training-ingest, keyed
``len(user) (2 bytes) + user + post_id`` -> platform: one user's posts are a
contiguous key range, read by prefix without scanning anyone else's.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from typing import Any

import rocksdict
from faust.stores.rocksdb import RocksDBOptions
from faust.types import TP

from streams import faust_compat
from streams.kafka.outputs import OutputProducer

log = logging.getLogger("streams.enforcer")

# Present in a table partition's RocksDB while it may hold writes whose changelog records
# are not committed (an open transaction with fencing, or not yet flushed without). A key
# no table has: user ids are UTF-8 (never the byte 0xFF), a ledger key starts with a
# length of at most MAX_ID_BYTES. Written before the first such write and deleted with
# the persisted offset once they are committed, in the same database without a
# write-ahead log, whose state after a crash is a prefix of its writes: a database that
# holds any uncommitted write holds this key too, and is emptied when it is opened.
DIRTY_KEY = b"\xff\xffenforcer.uncommitted-writes"


def wipe(db: Any) -> None:
    """Delete every key of a table partition (its persisted offset too: Faust restores
    it from the changelog's start)."""
    db.delete_range(b"", b"\xff")
    for key in [key for key, _ in db.items(from_key=b"\xff")]:
        db.delete(key)


def wipe_if_dirty(db: Any, name: Any) -> bool:
    """Empty a table partition just opened if it may hold uncommitted writes (the worker
    stopped without committing them: SIGKILL, a fatal error); True if it did."""
    if db.get(DIRTY_KEY) is None:
        return False
    wipe(db)
    log.warning(
        "%s may hold writes that were never committed (the last stop was not clean): "
        "emptied, it is restored from its changelog",
        name,
    )
    return True


def user_prefix(user_id: str) -> bytes:
    """The key prefix shared by all of one user's ledger entries."""
    user = user_id.encode("utf-8")
    return len(user).to_bytes(2, "big") + user


def entry_key(user_id: str, post_id: str) -> bytes:
    """The ledger key of one post."""
    return user_prefix(user_id) + post_id.encode("utf-8")


class ChangelogBackedOptions(RocksDBOptions):
    """Faust's RocksDB options with the write-ahead log off, as Kafka Streams runs its
    stores: the changelog topic is what makes a table durable, not the WAL.

    Each write then costs no ``write()`` to the log (1.4 us of the 2.9-4.4 us a put
    took). A crash loses what was not yet flushed to SST files, and the offset of
    the changelog they reflect (``TableState.persist_offsets``) with it, since both
    are in the same memtable; recovery then reads the changelog from the earlier
    offset that survived, and comes to the same state. The changelog has every write
    by then: a write goes to RocksDB before its changelog record is produced, and an
    offset is persisted only once the producer is flushed."""

    def open(self, path: Any, *, read_only: bool = False) -> Any:
        """Open the database, its writes without the write-ahead log."""
        db = super().open(path, read_only=read_only)
        if self.use_rocksdict and not read_only:
            options = rocksdict.WriteOptions()
            # a property at run time (rocksdict's stub declares a method)
            options.disable_wal = True  # type: ignore[method-assign,assignment]
            db.set_write_options(options)
            wipe_if_dirty(db, path)  # before Faust reads its persisted offset
        return db


def without_wal(table: Any) -> None:
    """Open the table's RocksDB partitions without the write-ahead log from now on
    (``ChangelogBackedOptions``): call before it opens any."""
    store = table.data
    store.rocksdb_options = ChangelogBackedOptions(
        **store.options, use_rocksdict=store.use_rocksdict
    )


class StateNotReady(Exception):
    """A table partition that is not assigned and recovered here was asked for: the
    record must be read again later, not decided now."""


class TableState:
    """One Faust table's RocksDB partitions, written together with their changelog.

    A partition's RocksDB holds only what its committed changelog holds, or it carries
    ``DIRTY_KEY``: written (``touch``) before the first write after a commit, deleted
    once those writes are committed (``persist_offsets``). A transaction aborted on
    revocation empties the partitions it wrote (``discard_uncommitted``); a database
    still marked when it is opened (after a crash or a fatal error) is emptied there
    (``ChangelogBackedOptions``). Either way Faust restores it from its changelog, so a
    worker never reads a write the changelog does not have: an objection applied in an
    aborted transaction must not make its input, processed again, look repeated."""

    def __init__(self, table: Any, changelog_topic: str, outputs: OutputProducer) -> None:
        self.table = table
        self.changelog_topic = changelog_topic
        self.outputs = outputs
        outputs.track_changelog(changelog_topic)
        on_abort = getattr(outputs, "on_abort", None)  # None: a test's stand-in
        if on_abort is not None:
            on_abort.append(self.discard_uncommitted)
        # Faust's open partitions (a dict it fills and empties, never replaces): looked
        # up here first, without two calls into Faust per read or write
        self._open = faust_compat.open_partitions(table)
        # partition -> the database whose DIRTY_KEY is written (a partition reopened
        # by Faust is another database, marked anew)
        self._dirty: dict[int, Any] = {}

    def _db(self, partition: int) -> Any:
        """The partition's RocksDB, as Faust opened it on assignment. Never opened here:
        a partition Faust has not opened was never recovered, and reading it would see
        state that is not there (an objection missed)."""
        db = self._open.get(partition)
        if db is None:
            raise StateNotReady(f"{self.changelog_topic}[{partition}] is not open here")
        return db

    def get(self, partition: int, key: bytes) -> bytes | None:
        """The value of ``key`` in one partition."""
        return self._db(partition).get(key)

    def touch(self, partition: int) -> None:
        """Mark the partition as holding uncommitted writes, before the first write after
        a commit (the native fast path writes the ledger without ``put``: the gate
        touches a batch's partition before it runs). Nothing if it is not open here."""
        db = self._open.get(partition)
        if db is not None and self._dirty.get(partition) is not db:
            db.put(DIRTY_KEY, b"")
            self._dirty[partition] = db

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        """Write locally and to the changelog."""
        db = self._db(partition)
        if self._dirty.get(partition) is not db:
            self.touch(partition)
        db.put(key, value)
        self.outputs.produce(self.changelog_topic, key, value, partition)

    def delete(self, partition: int, key: bytes) -> None:
        """Delete locally and write a changelog tombstone."""
        db = self._db(partition)
        if self._dirty.get(partition) is not db:
            self.touch(partition)
        db.delete(key)
        self.outputs.produce(self.changelog_topic, key, None, partition)

    def discard_uncommitted(self, partitions: Collection[int]) -> None:
        """The open transactions of ``partitions`` are being aborted: empty the ones they
        wrote to, which Faust then restores from the changelog (the worker keeps a
        partition's database open when the partition comes back to it)."""
        for partition in partitions:
            db = self._dirty.pop(partition, None)
            if db is not None:
                wipe(db)
                faust_compat.restore_from_start(self.table, self.changelog_topic, partition)
                log.warning(
                    "%s[%d]: a transaction was aborted; the partition's local state is "
                    "emptied and restored from the changelog",
                    self.changelog_topic,
                    partition,
                )

    def _mark_committed(self) -> None:
        """Delete ``DIRTY_KEY`` of the partitions whose writes are all committed: every
        one without fencing (called after a flush, no write in between), else those
        with no open transaction and no commit in flight."""
        fenced = getattr(self.outputs, "transactional", False)
        parts = getattr(self.outputs, "partitions", {}) if fenced else {}
        for partition, db in list(self._dirty.items()):
            part = parts.get(partition)
            if part is not None and (part.open or part.committing):
                continue
            del self._dirty[partition]
            if self._open.get(partition) is db:
                db.delete(DIRTY_KEY)

    def scan(self, partition: int, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) whose key starts with ``prefix``."""
        for key, value in self._db(partition).items(from_key=prefix):
            if not key.startswith(prefix):
                break
            if value is not None:
                yield key, value

    def persist_offsets(self) -> None:
        """Tell Faust how far the changelog is reflected in RocksDB, so that recovery
        after a restart reads only what came after. Call after a flush of the outputs.

        Only this worker's own writes are reflected: a partition's offset moves only
        when the offsets it wrote since the last persisted one are contiguous from it.
        A record of another writer among them (a worker that owned the partition while
        this one was frozen, or a frozen one that resumed) means this partition's state
        lacks what that writer wrote, and the offset must stay before it (recovery then
        reads that record), so the worker stops (``ForeignChangelogWrite``) before it
        commits any input: the next owner restores from the changelog and processes the
        uncommitted inputs again with the whole state.

        Then the partitions whose writes are all committed lose their ``DIRTY_KEY``."""
        store = self.table.data
        open_partitions = faust_compat.open_partitions(self.table)
        runs = self.outputs.changelog_runs
        # with fencing no other worker can write a partition this one has initialised
        # its producer for, and transaction markers take offsets between its own writes
        fenced = getattr(self.outputs, "transactional", False)
        for key in [k for k in runs if k[0] == self.changelog_topic]:
            first, last, count = runs.pop(key)
            tp = TP(*key)
            if key[1] not in open_partitions:
                continue
            persisted = store.persisted_offset(tp)
            # or the end recovery last read to, if later: the changelog's last records
            # may be gone (compacted) and then none of them set the persisted offset
            base = max(-1 if persisted is None else persisted, self._recovered_to(tp))
            if first <= base:
                # written before recovery read them (a rebalance in between): recovery
                # has its own offset; nothing to tell from these
                continue
            if not fenced and (first != base + 1 or last - first + 1 != count):
                raise ForeignChangelogWrite(
                    f"{tp.topic}[{tp.partition}]: offsets {base + 1}..{last} have "
                    f"{last - base - count} records this worker did not write (its own: "
                    f"{count} from {first}); another worker wrote to this partition while "
                    "this one held it"
                )
            store.set_persisted_offset(tp, last)
        self._mark_committed()  # after the offsets: a crash in between leaves it marked

    def _recovered_to(self, tp: TP) -> int:
        """The last changelog offset Faust's recovery read the partition to (-1: none)."""
        return faust_compat.recovered_to(self.table, tp)

    def forget(self, partition: int) -> None:
        """A partition assigned anew or revoked: its own writes are counted afresh."""
        runs = getattr(self.outputs, "changelog_runs", None)  # None: a test's stand-in
        if runs is not None:
            runs.pop((self.changelog_topic, partition), None)


class ForeignChangelogWrite(Exception):
    """A changelog partition this worker holds has records of another writer since the
    offset its table reflects: its state is not the changelog's."""


class Ledger:
    """Live post ids per user.

    A removal is held, and read as done, until ``settle`` writes it to the table and
    its changelog; the gate settles only after the broker has acknowledged the
    tombstones that caused it (``Checkpoint.settle``, before each commit). A crash
    before then leaves the post in the table, so the re-processed input retracts it
    again. Written at once, the table could forget a post whose tombstone was lost: a
    leak. Holding removals costs no synchronous flush per retraction.
    """

    def __init__(self, state: TableState) -> None:
        self.state = state
        self._held: dict[tuple[int, bytes], None] = {}  # (partition, key) removed, unwritten

    def is_live(self, partition: int, user_id: str, post_id: str) -> bool:
        """True when the post is live."""
        key = entry_key(user_id, post_id)
        if self._held and (partition, key) in self._held:
            return False
        return self.state.get(partition, key) is not None

    def live_posts(self, partition: int, user_id: str) -> dict[str, str]:
        """Every live post of a user as post id -> platform."""
        prefix = user_prefix(user_id)
        held = self._held
        return {
            key[len(prefix) :].decode("utf-8"): value.decode("utf-8")
            for key, value in self.state.scan(partition, prefix)
            if not (held and (partition, key) in held)
        }

    def add(self, partition: int, user_id: str, post_id: str, platform: str) -> None:
        """Record a post as live (rewritten even if present: the changelog converges)."""
        key = entry_key(user_id, post_id)
        if self._held:
            self._held.pop((partition, key), None)
        self.state.put(partition, key, platform.encode("utf-8"))

    def remove(self, partition: int, user_id: str, post_id: str) -> None:
        """Record a post as no longer live (held until ``settle``)."""
        self._held[(partition, entry_key(user_id, post_id))] = None

    def settle(self) -> int:
        """Write every held removal; call only once every output produced before them
        is acknowledged. Returns how many were written."""
        done = list(self._held)
        # with fencing, each partition's removals go through its own producer
        use = getattr(getattr(self.state, "outputs", None), "use", None)
        for partition, key in done:
            if use is None or use(partition):
                self.state.delete(partition, key)
        self._held.clear()
        return len(done)

    def forget(self, partitions: Collection[int]) -> None:
        """Drop held removals of partitions that are no longer ours (their input is
        processed again by the next owner, which retracts again)."""
        for pk in [pk for pk in self._held if pk[0] in partitions]:
            del self._held[pk]
