"""Where the gate reads each partition of the internal topic: the next record it must
process (``gate/offsets.py``), and asking the shell to seek there (``reposition``, set
by ``runtime/app.py``) after a gap, an unknown start, or a record put back.

A record that cannot be processed now is put back: its table partition is not open
here (``StateNotReady``), or its schema could not be looked up (``RegistryUnavailable``;
the partition then counts as blocked and the worker is not ready). Nothing after it is
processed or committed meanwhile; it is read again after ``REPOSITION_RETRY`` seconds.
A partition blocked for longer than ``--registry-timeout`` stops the worker."""

from __future__ import annotations

import logging
import os
from typing import Any

from streams.gate import clock
from streams.gate.offsets import Admit, OffsetTracker
from streams.settings import Settings

log = logging.getLogger("streams.enforcer")
REPOSITION_RETRY = 5.0  # seconds before asking again to seek a partition


class Positions:
    """The gate's input positions and repositioning."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.offsets = OffsetTracker()
        self.reposition: Any = None  # callback(partition, expected offset or None)
        # partition -> when it was asked (read in place by the native fast path)
        self.repositioning: dict[int, float] = {}
        # partition -> since when its next record waits for the schema registry
        self.blocked: dict[int, float] = {}

    def not_ready(self, partition: int, offset: int, admit: Admit, exc: Exception) -> None:
        """The record's table partition is not open here (being revoked or not yet
        restored): read it again later, never decide it without state."""
        if admit is Admit.PROCESS:
            self.offsets.put_back(partition, offset)
            self.repositioning[partition] = clock.monotonic()
        log.warning("partition %d: offset %d not processed: %s", partition, offset, exc)

    def wait_for_registry(self, partition: int, offset: int, admit: Admit, exc: Exception) -> None:
        """The record's schema could not be looked up: read it again in
        ``REPOSITION_RETRY`` seconds, the partition blocked meanwhile (not ready)."""
        if admit is Admit.DUPLICATE:  # processed before: its effects are there
            log.warning(
                "partition %d: offset %d, processed before, not again: %s", partition, offset, exc
            )
            return
        now = clock.monotonic()
        self.offsets.put_back(partition, offset)
        since = self.blocked.setdefault(partition, now)
        self.repositioning[partition] = now  # the seek back: REPOSITION_RETRY on
        log.warning(
            "partition %d: offset %d waits for the schema registry (%s); read again "
            "in %.0f s, not ready meanwhile (waiting for %.0f s)",
            partition,
            offset,
            exc,
            REPOSITION_RETRY,
            now - since,
        )

    def skipped(self, partition: int, offset: int, admit: Admit) -> None:
        """A record not admitted: a gap (Faust skipped records) or an unknown start. Read
        from the right offset again; records until then are not processed and not
        committed."""
        if clock.monotonic() - self.repositioning.get(partition, 0.0) > REPOSITION_RETRY:
            log.info(
                "partition %d: %s at offset %d, repositioning to %s",
                partition,
                admit.value,
                offset,
                self.offsets.expected.get(partition),
            )
            self.ask(partition)

    def ask(self, partition: int) -> None:
        """Ask the shell to seek ``partition`` to its next expected record."""
        self.repositioning[partition] = clock.monotonic()
        if self.reposition is not None:
            self.reposition(partition, self.offsets.expected.get(partition))

    def retry(self) -> None:
        """Ask again for partitions still waiting for a record after a reposition (a seek
        can be undone by records fetched before it); called by a timer, so that a partition
        that receives nothing new is not left waiting. Stops the worker (exit 70, nothing
        committed past it) when a partition's next record has waited for the schema
        registry for longer than ``--registry-timeout``."""
        now = clock.monotonic()
        for partition, since in self.blocked.items():
            if now - since > self.settings.registry_timeout:
                log.critical(
                    "partition %d: offset %s has waited for the schema registry for %.0f s "
                    "(--registry-timeout); exiting",
                    partition,
                    self.offsets.expected.get(partition),
                    now - since,
                )
                logging.shutdown()
                os._exit(70)
        for partition, asked in list(self.repositioning.items()):
            if now - asked > REPOSITION_RETRY:
                log.info(
                    "partition %d: offset %s has not come yet, repositioning again",
                    partition,
                    self.offsets.expected.get(partition),
                )
                self.ask(partition)

    def forget(self, partition: int) -> None:
        """A partition assigned anew or revoked: where it starts is looked up again."""
        self.offsets.revoke(partition)
        self.repositioning.pop(partition, None)
        self.blocked.pop(partition, None)
