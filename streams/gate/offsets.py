"""Which input offsets the gate has processed, and what it may commit. No Kafka.

Faust acknowledges -- and so commits past -- records that its streams skip while the
flow is suspended (during recovery or a rebalance), relying on a later seek to read
them again; a kill at the wrong moment loses them (seen in the crash test: a
contiguous range of one partition was never decided). The gate therefore commits
its own offsets: per partition it processes records strictly in offset order from
the committed position, treats a record past the next expected offset as a gap
(the skipped records must be read again: the shell seeks back), and commits only
the next offset after a contiguous run of processed records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Admit(Enum):
    """What to do with one record."""

    PROCESS = "process"  # the next expected record
    DUPLICATE = "duplicate"  # already processed (a re-read): process again, idempotently
    GAP = "gap"  # records before it were skipped: do not process, seek back
    UNKNOWN = "unknown"  # where the partition starts is not known yet: look it up, seek


@dataclass
class OffsetTracker:
    """Next expected offset per partition of the gate's input topic."""

    expected: dict[int, int] = field(default_factory=dict)
    committed: dict[int, int] = field(default_factory=dict)

    def start(self, partition: int, offset: int) -> None:
        """Where a partition starts: the group's committed offset (or the earliest)."""
        self.expected[partition] = offset
        self.committed[partition] = offset

    def revoke(self, partition: int) -> None:
        """A partition no longer ours: forget it (nothing of it may be committed)."""
        self.expected.pop(partition, None)
        self.committed.pop(partition, None)

    def admit(self, partition: int, offset: int) -> Admit:
        """Whether to process a record; advances the position when it is processed."""
        expected = self.expected.get(partition)
        if expected is None:
            return Admit.UNKNOWN
        if offset == expected:
            self.expected[partition] = offset + 1
            return Admit.PROCESS
        if offset < expected:
            return Admit.DUPLICATE
        return Admit.GAP

    def put_back(self, partition: int, offset: int) -> None:
        """A record just admitted (``PROCESS``) could not be processed after all (its
        schema could not be looked up): it is the next expected again, so nothing from
        it on is committed, and records after it are gaps until it is read again."""
        if self.expected.get(partition) == offset + 1:
            self.expected[partition] = offset  # in place: the native fast path reads it

    def to_commit(self) -> dict[int, int]:
        """Offsets to commit now (the next expected), for partitions that moved."""
        due = {p: o for p, o in self.expected.items() if self.committed.get(p) != o}
        return due

    def committed_ok(self, offsets: dict[int, int]) -> None:
        """Record a successful commit."""
        for partition, offset in offsets.items():
            if partition in self.expected:
                self.committed[partition] = offset
