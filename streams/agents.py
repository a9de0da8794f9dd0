"""What the gate agent does with each record of the internal user-events topic:
decode, call the pure core, write.

Posts are decided, objection events update the consent table and retract live
posts, replay requests re-decide a past post and answer the replay command. For
any input that retracts, the outputs are acknowledged by the broker *before* the
local state changes, so a crash between the two re-processes the input and retracts
again instead of forgetting to. (The re-keying stage is ``rekey.py``.)

Nothing here logs post text or media URLs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable
from typing import Any

from .codec import DECISION, OBJECTION, POST, RETRACTION, TRAINING_RECORD, Codec, DecodeError
from .consent import decode_state, encode_state
from .enforcement import Effects, Source, on_objection, on_post
from .ledger import Ledger
from .metrics import Metrics
from .policy import Policy
from .records import (
    KIND,
    KIND_OBJECTION,
    KIND_POST,
    KIND_REPLAY,
    REPLAY_DRY_RUN,
    REPLAY_ID,
    SRC_OFFSET,
    SRC_PARTITION,
    SRC_TOPIC,
    check_objection,
    check_post,
)
from .settings import Settings

log = logging.getLogger("streams.enforcer")


def _headers(message: Any) -> dict[str, bytes]:
    return {k: v for k, v in (message.headers or ())}


class Processor:
    """Per-record logic of both agents, sharing the app's producer and tables."""

    def __init__(self, app: Any, settings: Settings, policy: Policy, codec: Codec,
                 consent: Any, ledger: Any, metrics: Metrics) -> None:
        self.app = app
        self.settings = settings
        self.policy = policy
        self.codec = codec
        self.consent = consent
        self.ledger = Ledger(ledger)
        self.metrics = metrics
        self.rekeyer: Any = None

    # -- readiness -----------------------------------------------------------------
    def ready(self) -> bool:
        """True once partitions are assigned, recovered and being consumed."""
        app = self.app
        try:
            recovery = app.tables.recovery
            rekeying = self.rekeyer is None or (self.rekeyer.is_alive()
                                                and self.rekeyer.assigned.is_set())
            return bool(
                rekeying
                and app.started
                and not app.rebalancing
                and not recovery.in_recovery
                and recovery.completed.is_set()
            )
        except AttributeError:
            return False

    # -- sending -------------------------------------------------------------------
    def _send(self, topic: str, key: bytes | None, value: bytes | None,
              headers: list[tuple[str, bytes]] | None = None, partition: int | None = None,
              timestamp: float | None = None) -> Awaitable[Any]:
        return self.app.producer.send(topic, key, value, partition, timestamp, headers)

    @staticmethod
    def _watch(fut: asyncio.Future) -> None:
        fut.add_done_callback(_delivery_done)

    async def _dlq(self, message: Any, reason: str) -> None:
        headers = list(message.headers or ()) + [
            ("error", reason.encode("utf-8", "replace")),
            (SRC_TOPIC, message.topic.encode()),
            (SRC_PARTITION, str(message.partition).encode()),
            (SRC_OFFSET, str(message.offset).encode()),
        ]
        self.metrics.dlq[message.topic] += 1
        log.warning("DLQ %s[%d]@%d: %s", message.topic, message.partition, message.offset, reason)
        self._watch(await self._send(self.settings.dlq_topic, message.key, message.value, headers))

    # -- gate agent ----------------------------------------------------------------
    async def gate(self, message: Any) -> None:
        """Decide a post or apply an objection event for the user of this partition."""
        headers = _headers(message)
        kind = headers.get(KIND)
        try:
            source = Source(headers[SRC_TOPIC].decode(), int(headers[SRC_PARTITION]),
                            int(headers[SRC_OFFSET]))
        except (KeyError, ValueError):
            source = Source(message.topic, message.partition, message.offset)
        try:
            if kind in (KIND_POST, KIND_REPLAY):
                _, post = self.codec.decode(message.value, POST)
                check_post(post)
            elif kind == KIND_OBJECTION:
                _, event = self.codec.decode(message.value, OBJECTION)
                check_objection(event)
            else:
                raise DecodeError(f"unknown internal record kind {kind!r}")
        except DecodeError as exc:
            await self._dlq(message, str(exc))
            return
        if kind in (KIND_POST, KIND_REPLAY):
            try:
                if kind == KIND_POST:
                    await self._on_post(post, source, message)
                else:
                    await self._on_replay(post, source, headers)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a post that cannot be decided is not published
                log.exception("cannot decide post at %s", source)
                await self._dlq(message, f"internal error: {type(exc).__name__}")
        else:
            try:
                await self._on_objection(event, source, message)
            except asyncio.CancelledError:
                raise
            except Exception:
                # An objection must never be skipped: stop without acknowledging it, so
                # that it is processed again after restart (fail closed).
                log.critical("cannot apply objection event at %s; exiting", source,
                             exc_info=True)
                logging.shutdown()
                os._exit(70)

    async def _on_post(self, post: dict[str, Any], source: Source, message: Any) -> None:
        user_id, post_id = post["user_id"], post["post_id"]
        state = decode_state(self.consent.get(user_id.encode("utf-8")))
        now = _now_ms()
        fx = on_post(self.policy, post, state, self.ledger.is_live(user_id, post_id), now, source)
        await self._emit(fx, user_id)
        if message.timestamp:
            self.metrics.observe_latency(max(0.0, now / 1000.0 - message.timestamp))

    async def _on_replay(self, post: dict[str, Any], source: Source,
                         headers: dict[str, bytes]) -> None:
        """Re-decide a past post under the current state and policy; emit only changes
        (nothing at all in a dry run), and answer the replay command."""
        replay_id = headers.get(REPLAY_ID, b"").decode() or "unknown"
        dry_run = headers.get(REPLAY_DRY_RUN) == b"1"
        user_id, post_id = post["user_id"], post["post_id"]
        state = decode_state(self.consent.get(user_id.encode("utf-8")))
        fx = on_post(self.policy, post, state, self.ledger.is_live(user_id, post_id), _now_ms(),
                     source, replay_id)
        if fx.publish:
            change, reason = "PUBLISHED", "ELIGIBLE"
        elif fx.tombstones:
            change, reason = "RETRACTED", fx.decisions[0]["reason"]
        else:
            change, reason = "UNCHANGED", self.policy.reason(post, state.objected(
                post["platform"])).value
        if not dry_run:
            await self._emit(fx, user_id)
        answer = json.dumps({"replay_id": replay_id, "post_id": post_id, "user_id": user_id,
                             "change": change, "reason": reason, "dry_run": dry_run,
                             "policy_version": self.policy.version}).encode()
        self._watch(await self._send(self.settings.replay_results_topic, replay_id.encode(),
                                     answer))

    async def _on_objection(self, event: dict[str, Any], source: Source, message: Any) -> None:
        user_id = event["user_id"]
        key = user_id.encode("utf-8")
        state = decode_state(self.consent.get(key))
        live = self.ledger.live_posts(user_id, message.partition)
        new_state, fx = on_objection(self.policy, state, event, live, _now_ms(), source)
        await self._emit(fx, user_id)
        # always written, even when unchanged, so that the changelog converges after a crash
        self.consent[key] = encode_state(new_state)
        self.metrics.objections[event["action"]] += 1

    async def _emit(self, fx: Effects, user_id: str) -> None:
        """Write the effects' records; when they retract, wait for the broker's
        acknowledgement before the ledger forgets the posts."""
        if fx.empty:
            return
        s, enc = self.settings, self.codec.encode
        futures = []
        for record in fx.publish:
            futures.append(await self._send(s.training_topic, record["post_id"].encode(),
                                            enc(TRAINING_RECORD, record, s.training_topic)))
        for post_id in fx.tombstones:
            futures.append(await self._send(s.training_topic, post_id.encode(), None))
        for record in fx.retractions:
            futures.append(await self._send(s.retractions_topic, record["user_id"].encode(),
                                            enc(RETRACTION, record, s.retractions_topic)))
        for record in fx.decisions:
            futures.append(await self._send(s.decisions_topic, record["post_id"].encode(),
                                            enc(DECISION, record, s.decisions_topic)))
            self.metrics.decisions[(record["outcome"], record["reason"])] += 1
        if fx.retractions:
            self.metrics.retractions += len(fx.retractions)
            self.metrics.retracted_posts += len(fx.tombstones)
        if fx.tombstones:
            await asyncio.gather(*futures)  # raises if the broker refused: nothing forgotten
        else:
            for fut in futures:
                self._watch(fut)
        for post_id, platform in fx.ledger_add.items():
            self.ledger.add(user_id, post_id, platform)
        for post_id in fx.ledger_remove:
            self.ledger.remove(user_id, post_id)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _delivery_done(fut: asyncio.Future) -> None:
    """A send the broker refused after every retry: stop before the offset is committed,
    so that the input is processed again after restart (at-least-once)."""
    if fut.cancelled():
        return
    exc = fut.exception()
    if exc is not None:
        log.critical("could not deliver an output record (%s: %s); exiting so that the input "
                     "is processed again", type(exc).__name__, exc)
        logging.shutdown()
        os._exit(70)
