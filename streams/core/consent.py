"""Per-(user, platform) consent state and how objection events change it. No Kafka.

A user's state holds, per platform and for "every platform" (``ALL``), the winning
event so far. The winner is the event with the greatest ``(occurred_at, action,
event_id)``: the latest ``occurred_at`` wins, and at equal times ``OBJECT`` beats
``WITHDRAW`` (fail closed), then the larger ``event_id`` (so the result never depends
on arrival order). A platform is objected when the greater of its own mark and the
``ALL`` mark is an ``OBJECT``. Applying the same event twice changes nothing, and an
``event_id`` already seen is ignored even if its content differs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

ALL = "*"
SEEN_LIMIT = 64  # event ids remembered per user for de-duplication


@dataclass(frozen=True, order=True)
class Mark:
    """The winning event for one slot; ordered by precedence. ``applied_at`` (when the
    gate applied it, epoch ms; None in state written before it was kept) is neither
    precedence nor identity: re-applying an event after a crash changes no decision."""

    occurred_at: int
    objected: bool
    event_id: str
    applied_at: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ConsentState:
    """One user's consent state: winning marks by slot, and recently seen event ids."""

    marks: Mapping[str, Mark] = field(default_factory=dict)
    seen: tuple[str, ...] = ()

    def deciding_slot(self, platform: str) -> str | None:
        """The slot whose mark decides ``platform``: its own (``platform``) when that is
        greater than the every-platform mark, else ``ALL``; None when neither exists."""
        own = self.marks.get(platform)
        every = self.marks.get(ALL)
        if own is None:
            return None if every is None else ALL
        return platform if every is None or own > every else ALL

    def objected(self, platform: str) -> bool:
        """True when the user objects to training on ``platform``."""
        slot = self.deciding_slot(platform)
        return slot is not None and self.marks[slot].objected

    def objected_platforms(self, platforms: Iterable[str]) -> frozenset[str]:
        """The subset of ``platforms`` the user objects on."""
        return frozenset(p for p in platforms if self.objected(p))


EMPTY = ConsentState()


def apply(
    state: ConsentState | None, event: Mapping[str, Any], applied_at: int | None = None
) -> ConsentState:
    """The state after an ``ObjectionEvent`` (a decoded record), applied at
    ``applied_at`` (epoch ms, kept with the mark it sets); pure."""
    state = state or EMPTY
    event_id = event["event_id"]
    if event_id in state.seen:
        return state
    slot = event.get("platform") or ALL
    mark = Mark(int(event["occurred_at"]), event["action"] == "OBJECT", event_id, applied_at)
    marks = dict(state.marks)
    current = marks.get(slot)
    if current is None or mark > current:
        marks[slot] = mark
    every = marks.get(ALL)
    if every is not None:  # platform marks older than the ALL mark no longer matter
        for key in [k for k, m in marks.items() if k != ALL and m < every]:
            del marks[key]
    seen = (*state.seen, event_id)[-SEEN_LIMIT:]
    return ConsentState(marks, seen)


# what an event did to the state (a ConsentReceipt's outcome; core/enforcement.py adds
# CLAMPED_FROM_FUTURE for an applied event dated too far ahead)
APPLIED = "APPLIED"
IGNORED_REPEATED_EVENT_ID = "IGNORED_REPEATED_EVENT_ID"
IGNORED_OLDER = "IGNORED_OLDER"


def receive(
    state: ConsentState | None, event: Mapping[str, Any], applied_at: int | None = None
) -> tuple[ConsentState, str]:
    """``apply``, and what the event did: ``IGNORED_REPEATED_EVENT_ID`` when its id was
    seen before (or is the id of a mark in force, seen longer ago than ``SEEN_LIMIT``
    events), ``APPLIED`` when it changed a winning mark, ``IGNORED_OLDER`` otherwise
    (older than the state in force on its slot, or than the every-platform mark)."""
    state = state or EMPTY
    new = apply(state, event, applied_at)
    event_id = event["event_id"]
    if event_id in state.seen or any(m.event_id == event_id for m in state.marks.values()):
        return new, IGNORED_REPEATED_EVENT_ID
    if new.marks == state.marks:
        return new, IGNORED_OLDER
    return new, APPLIED


def stored_objects(stored: bytes | None, platform: str) -> bool:
    """Whether a user objects on ``platform``, from their consent table entry (None:
    no state, so no objection); the state is decoded only when there is one."""
    return stored is not None and decode_state(stored).objected(platform)


def encode_state(state: ConsentState) -> bytes:
    """Compact bytes for the consent table: per slot ``[occurred_at, objected,
    event_id]``, then ``applied_at`` when known (a reader of the three-element form,
    an earlier version, ignores it)."""
    return json.dumps(
        {"m": {k: _mark_fields(m) for k, m in state.marks.items()}, "s": list(state.seen)},
        separators=(",", ":"),
    ).encode()


def _mark_fields(mark: Mark) -> list[Any]:
    fields = [mark.occurred_at, int(mark.objected), mark.event_id]
    return fields if mark.applied_at is None else [*fields, mark.applied_at]


def decode_state(data: bytes | None) -> ConsentState:
    """Inverse of ``encode_state``; ``None`` is the empty state."""
    if not data:
        return EMPTY
    raw = json.loads(data)
    marks = {
        k: Mark(int(v[0]), bool(v[1]), str(v[2]), int(v[3]) if len(v) > 3 else None)
        for k, v in raw["m"].items()
    }
    return ConsentState(marks, tuple(raw["s"]))
