"""Replay requests (``enforcer replay``, ``cli/replay.py``): a past post re-decided under
the current consent state and policy; only differences are written (nothing at all in
a dry run), and every request is answered on ``<app-id>-replay-results``."""

from __future__ import annotations

from typing import Any

from streams.core.enforcement import Source, on_post
from streams.core.policy import Policy
from streams.core.records import REPLAY_DRY_RUN, REPLAY_ID
from streams.gate import clock
from streams.gate.emit import Emitter
from streams.gate.posts import consent_state
from streams.state.ledger import Ledger, TableState


class Replays:
    """Re-decides past posts and answers the replay command."""

    def __init__(
        self, policy: Policy, consent: TableState, ledger: Ledger, emitter: Emitter
    ) -> None:
        self.policy = policy
        self.consent = consent
        self.ledger = ledger
        self.emitter = emitter

    def answer(
        self, post: dict[str, Any], source: Source, headers: dict[str, bytes], message: Any
    ) -> None:
        """Re-decide a past post under the current state and policy; emit only changes
        (nothing at all in a dry run), and answer the replay command."""
        replay_id = headers.get(REPLAY_ID, b"").decode() or "unknown"
        dry_run = headers.get(REPLAY_DRY_RUN) == b"1"
        user_id, post_id, partition = post["user_id"], post["post_id"], message.partition
        state = consent_state(self.consent, partition, user_id)
        live = self.ledger.is_live(partition, user_id, post_id)
        fx = on_post(self.policy, post, state, live, clock.now_ms(), source, replay_id)
        if fx.publish:
            change, reason = "PUBLISHED", "ELIGIBLE"
        elif fx.tombstones:
            change, reason = "RETRACTED", fx.decisions[0]["reason"]
        else:
            change = "UNCHANGED"
            reason = self.policy.reason(post, state.objected(post["platform"])).value
        if not dry_run:
            self.emitter.emit(fx, user_id, partition, message)
        answer = {
            "replay_id": replay_id,
            "post_id": post_id,
            "user_id": user_id,
            "change": change,
            "reason": reason,
            "dry_run": dry_run,
            "policy_version": self.policy.version,
        }
        self.emitter.replay_answer(replay_id, answer)
