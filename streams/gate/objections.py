"""Objection events: applied to the user's consent state (``core/consent.py`` through
``core/enforcement.on_objection``), every live post the new state no longer allows
retracted (``gate/emit.py``), and the consent table written with its changelog record,
even when unchanged. The caller stops the worker when one cannot be applied: an
objection is never skipped (``Processor.gate``)."""

from __future__ import annotations

import logging
from typing import Any

from streams.core.consent import encode_state
from streams.core.enforcement import Source, on_objection
from streams.core.policy import Policy
from streams.gate import clock
from streams.gate.emit import Emitter
from streams.gate.posts import consent_state
from streams.settings import Settings
from streams.state.ledger import Ledger, TableState

log = logging.getLogger("streams.enforcer")


class Objections:
    """Applies objection events."""

    def __init__(
        self,
        settings: Settings,
        policy: Policy,
        consent: TableState,
        ledger: Ledger,
        emitter: Emitter,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.consent = consent
        self.ledger = ledger
        self.emitter = emitter

    def apply(self, event: dict[str, Any], source: Source, message: Any) -> None:
        """Apply one checked objection event and write what it changes."""
        user_id, partition = event["user_id"], message.partition
        metrics = self.emitter.metrics
        state = consent_state(self.consent, partition, user_id)
        live = self.ledger.live_posts(partition, user_id)
        new_state, fx = on_objection(
            self.policy, state, event, live, clock.now_ms(), source, self.settings.max_clock_skew_ms
        )
        if fx.clamped_from is not None:
            metrics.clamped_events += 1
            log.warning(
                "objection event %s of %s[%d]@%d is dated %d ms ahead; applied at the time read",
                event["event_id"][:100],
                source.topic,
                source.partition,
                source.offset,
                fx.clamped_from - clock.now_ms(),
            )
        self.emitter.emit(fx, user_id, partition, message)
        if fx.tombstones:  # the objection's record time: retracted
            self.emitter.retracted(message, clock.now_ms())
        # always written, even when unchanged, so that the changelog converges after a crash
        self.consent.put(partition, user_id.encode("utf-8"), encode_state(new_state))
        metrics.objections[event["action"]] += 1
