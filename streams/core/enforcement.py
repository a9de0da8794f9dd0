"""The enforcement core: what to emit for a post, an objection event or a replay.

Pure functions over decoded records, the user's consent state and the user's live
posts (post id -> platform, as held by the ledger). They return ``Effects``: the
records to write and the ledger changes; the Faust agents only carry them out. No Kafka.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streams.core.consent import ALL, APPLIED, ConsentState, receive
from streams.core.policy import Outcome, Policy, Reason


@dataclass(slots=True)
class Source:
    """Where the record that caused a decision was read (the original input). Not
    frozen: one is made per input record, and a frozen one costs three times as much."""

    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class Effects:
    """Everything one input causes; applied in order: outputs first, then the ledger."""

    publish: list[dict[str, Any]] = field(default_factory=list)  # TrainingRecord, key post_id
    tombstones: list[str] = field(default_factory=list)  # post ids to retract
    retractions: list[dict[str, Any]] = field(default_factory=list)  # Retraction, key user_id
    decisions: list[dict[str, Any]] = field(default_factory=list)  # Decision, key post_id
    ledger_add: dict[str, str] = field(default_factory=dict)  # post id -> platform
    ledger_remove: list[str] = field(default_factory=list)
    # an objection event dated too far in the future: the occurred_at it gave (it was
    # applied at the time it was read instead)
    clamped_from: int | None = None
    # an objection event's ConsentReceipt (key user_id), written after its decisions
    receipt: dict[str, Any] | None = None

    @property
    def empty(self) -> bool:
        """True when nothing is to be written."""
        return not (
            self.receipt
            or self.publish
            or self.tombstones
            or self.retractions
            or self.decisions
            or self.ledger_add
            or self.ledger_remove
        )


# a Decision's fields after the post's ``post_id`` and ``user_id``, in schema order
DECISION_FIELDS = (
    "outcome",
    "reason",
    "policy_version",
    "decided_at",
    "source_topic",
    "source_partition",
    "source_offset",
    "replay_id",
    "cause",
)

# a ConsentReceipt's outcome for an applied event dated too far ahead (the others are
# consent.receive's)
CLAMPED_FROM_FUTURE = "CLAMPED_FROM_FUTURE"


def _record_fields(names: tuple[str, ...], values: tuple[Any, ...]) -> dict[str, Any]:
    """Field names and their values as a record's fields."""
    return dict(zip(names, values, strict=True))


def decision_values(
    outcome: Outcome,
    reason: Reason,
    policy: Policy,
    now: int,
    source: Source,
    replay_id: str | None,
    cause: str | None = None,
) -> tuple[Any, ...]:
    """The values of ``DECISION_FIELDS`` for a decision (``cause``: what caused a
    retraction, as its Retraction's ``objection_event_id``; None otherwise)."""
    return (
        outcome.value,
        reason.value,
        policy.version,
        now,
        source.topic,
        source.partition,
        source.offset,
        replay_id,
        cause,
    )


def _decision(
    post_id: str,
    user_id: str,
    outcome: Outcome,
    reason: Reason,
    policy: Policy,
    now: int,
    source: Source,
    replay_id: str | None,
    cause: str | None = None,
) -> dict[str, Any]:
    values = decision_values(outcome, reason, policy, now, source, replay_id, cause)
    return {"post_id": post_id, "user_id": user_id, **_record_fields(DECISION_FIELDS, values)}


# a TrainingRecord's fields after those copied from the post, in schema order
TRAINING_FIELDS = ("policy_version", "decided_at")


def training_values(policy: Policy, now: int) -> tuple[Any, ...]:
    """The values of ``TRAINING_FIELDS``."""
    return policy.version, now


def training_record(post: Mapping[str, Any], policy: Policy, now: int) -> dict[str, Any]:
    """The TrainingRecord published for an eligible post."""
    return {
        "post_id": post["post_id"],
        "user_id": post["user_id"],
        "platform": post["platform"],
        "created_at": post["created_at"],
        "text": post.get("text"),
        "media_urls": post.get("media_urls") or [],
        **_record_fields(TRAINING_FIELDS, training_values(policy, now)),
    }


Liveness = bool | Callable[[], bool]


def post_outcome(reason: Reason, live: Liveness, replay: bool) -> Outcome | None:
    """What a decision on a post does, given why (``policy.reason``) and whether the post
    is live (a callable is asked only when that matters): ``PUBLISHED`` for an eligible
    post, ``RETRACTED`` for an ineligible live one, ``BLOCKED`` otherwise. A replay
    changes only what differs from what is live, so it returns None for an eligible
    live post and an ineligible post that is not live."""
    if reason is Reason.ELIGIBLE:
        if replay and (live() if callable(live) else live):
            return None
        return Outcome.PUBLISHED
    if live() if callable(live) else live:
        return Outcome.RETRACTED
    return None if replay else Outcome.BLOCKED


def _retraction(
    user_id: str, cause: str, platforms: set[str], post_ids: list[str], now: int
) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "objection_event_id": cause,
        "platform": next(iter(platforms)) if len(platforms) == 1 else None,
        "post_ids": post_ids,
        "retracted_at": now,
    }


# post ids per Retraction record, in UTF-8 bytes: a user with tens of thousands of live
# posts who objects gets several Retraction records, each well under a record's limit
RETRACTION_IDS_BYTES = 256 * 1024


def retraction_chunks(post_ids: list[str], limit: int = RETRACTION_IDS_BYTES) -> list[list[str]]:
    """``post_ids`` in order, split into runs whose ids take at most ``limit`` bytes
    (a single longer id is a run of its own)."""
    chunks: list[list[str]] = []
    current: list[str] = []
    size = 0
    for post_id in post_ids:
        n = len(post_id.encode("utf-8")) + 4  # Avro's length prefix, at most
        if current and size + n > limit:
            chunks.append(current)
            current, size = [], 0
        current.append(post_id)
        size += n
    if current:
        chunks.append(current)
    return chunks


def as_applied(event: Mapping[str, Any], now: int, max_skew_ms: int) -> Mapping[str, Any]:
    """The event as it is applied: one dated more than ``max_skew_ms`` after ``now`` (the
    time it is read) is applied at ``now``, so that a wrong clock or a forged date
    cannot win over every later event."""
    if int(event["occurred_at"]) > now + max_skew_ms:
        return {**event, "occurred_at": now}
    return event


def _objection_cause(state: ConsentState, platform: str) -> str:
    """The event id of the objection in force on ``platform``."""
    marks = [m for m in (state.marks.get(platform), state.marks.get(ALL)) if m is not None]
    return max(marks).event_id if marks else "unknown"


def on_post(
    policy: Policy,
    post: Mapping[str, Any],
    state: ConsentState,
    live: Liveness,
    now: int,
    source: Source,
    replay_id: str | None = None,
) -> Effects:
    """Decide a post (``post_outcome``).

    Live traffic (``replay_id`` None) always yields one decision: published if
    eligible; blocked otherwise, or retracted when the post is live (a re-sent post
    that is no longer eligible). A replay yields only differences from what is live.
    """
    post_id, user_id, platform = post["post_id"], post["user_id"], post["platform"]
    reason = policy.reason(post, state.objected(platform))
    outcome = post_outcome(reason, live, replay_id is not None)
    fx = Effects()
    if outcome is Outcome.PUBLISHED:
        fx.publish.append(training_record(post, policy, now))
        fx.ledger_add[post_id] = platform
        fx.decisions.append(
            _decision(post_id, user_id, outcome, reason, policy, now, source, replay_id)
        )
    elif outcome is Outcome.RETRACTED:
        if reason is Reason.OBJECTED:
            cause = _objection_cause(state, platform)
        else:
            cause = f"replay:{replay_id}" if replay_id is not None else f"post:{post_id}"
        fx.tombstones.append(post_id)
        fx.ledger_remove.append(post_id)
        fx.retractions.append(_retraction(user_id, cause, {platform}, [post_id], now))
        fx.decisions.append(
            _decision(
                post_id, user_id, Outcome.RETRACTED, reason, policy, now, source, replay_id, cause
            )
        )
    elif outcome is Outcome.BLOCKED:
        fx.decisions.append(_decision(post_id, user_id, outcome, reason, policy, now, source, None))
    return fx


def on_objection(
    policy: Policy,
    state: ConsentState,
    event: Mapping[str, Any],
    live_posts: Mapping[str, str],
    now: int,
    source: Source,
    max_skew_ms: int | None = None,
) -> tuple[ConsentState, Effects]:
    """Apply an objection event (``as_applied`` at ``now`` when ``max_skew_ms`` is
    given); retract every live post on a platform now objected, in Retraction records
    of at most ``RETRACTION_IDS_BYTES`` of post ids each, with a RETRACTED decision per
    post whose ``cause`` is the event id; and write the event's ``ConsentReceipt``
    (``receipt``): what it did, how many posts it retracted, where it was read.

    The retraction is derived from the resulting state, not from the transition, so
    re-processing an event after a crash retracts whatever is still live.
    """
    fx = Effects()
    given = event
    if max_skew_ms is not None:
        applied = as_applied(event, now, max_skew_ms)
        if applied is not event:
            fx.clamped_from = int(event["occurred_at"])
            event = applied
    new_state, outcome = receive(state, event, now)
    if outcome == APPLIED and fx.clamped_from is not None:
        outcome = CLAMPED_FROM_FUTURE
    retract = sorted(pid for pid, plat in live_posts.items() if new_state.objected(plat))
    if retract:
        user_id = event["user_id"]
        platforms = {live_posts[pid] for pid in retract}
        if event.get("platform") is None:
            platforms = set()  # the event covered every platform
        fx.tombstones.extend(retract)
        fx.ledger_remove.extend(retract)
        fx.retractions.extend(
            _retraction(user_id, event["event_id"], platforms, chunk, now)
            for chunk in retraction_chunks(retract)
        )
        cause = event["event_id"]
        fx.decisions.extend(
            _decision(
                pid, user_id, Outcome.RETRACTED, Reason.OBJECTED, policy, now, source, None, cause
            )
            for pid in retract
        )
    fx.receipt = receipt(given, event, outcome, new_state, len(retract), now, source)
    return new_state, fx


RECEIPT_PLATFORMS = ("FACEBOOK", "INSTAGRAM")  # the Platform enum's symbols


def receipt(
    given: Mapping[str, Any],
    applied: Mapping[str, Any],
    outcome: str,
    state: ConsentState,
    retracted: int,
    now: int,
    source: Source,
) -> dict[str, Any]:
    """The ConsentReceipt of an objection event: as given and as applied, what it did
    (``outcome``), the platforms objected on after it, how many posts it retracted."""
    return {
        "event_id": given["event_id"],
        "user_id": given["user_id"],
        "action": given["action"],
        "platform": given.get("platform"),
        "channel": given["channel"],
        "occurred_at": int(given["occurred_at"]),
        "applied_occurred_at": int(applied["occurred_at"]),
        "outcome": outcome,
        "objected_platforms": [p for p in RECEIPT_PLATFORMS if state.objected(p)],
        "posts_retracted": retracted,
        "applied_at": now,
        "source_topic": source.topic,
        "source_partition": source.partition,
        "source_offset": source.offset,
    }
