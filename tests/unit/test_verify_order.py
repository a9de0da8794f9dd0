"""``enforcer verify``'s "published while objected" check when a consent change and a
decision share a millisecond: the records do not say which came first, so a decision
is a violation only if the user objected in every state it may have seen.

The long chaos runs found the false alarm: a worker taking over a partition applies a
user's WITHDRAW and decides the user's next post in the same millisecond; verify took
the WITHDRAW as later than the decision and reported the post as published under the
objection the WITHDRAW had ended."""

from __future__ import annotations

from streams.settings import Settings
from streams.verify.checker import Checker, Topics

TOPICS = Topics.of(Settings())
USER = "u1"


class Given:
    """A decoder that returns the records the test gives instead of bytes."""

    def decode(self, value: dict, kind: str) -> dict:
        return dict(value)


def receipt(offset: int, event_id: str, action: str, applied_at: int) -> dict:
    return {
        "event_id": event_id,
        "user_id": USER,
        "action": action,
        "platform": None,
        "occurred_at": offset + 1,  # later events occurred later: the latest wins
        "applied_occurred_at": offset + 1,
        "applied_at": applied_at,
        "outcome": "APPLIED",
        "objected_platforms": ["FACEBOOK", "INSTAGRAM"] if action == "OBJECT" else [],
        "posts_retracted": 0,
        "source_topic": TOPICS.objections,
        "source_partition": 0,
        "source_offset": offset,
    }


def violations(receipts: list[tuple[str, str, int]], decided_at: int) -> list[str]:
    checker = Checker(TOPICS, [], Given(), grace_ms=0)
    for offset, (event_id, action, applied_at) in enumerate(receipts):
        checker.add(
            TOPICS.receipts,
            0,
            offset,
            applied_at,
            None,
            receipt(offset, event_id, action, applied_at),
            (),
        )
    training = {"post_id": "p1", "user_id": USER, "platform": "FACEBOOK", "decided_at": decided_at}
    checker.add(TOPICS.training, 0, 0, decided_at, b"p1", training, ())
    result = checker.evaluate(now_ms=10_000_000)
    return [v.check for v in result.violations if v.check == "published_while_objected"]


def test_a_post_decided_while_an_earlier_objection_holds_is_a_violation():
    assert violations([("e1", "OBJECT", 100)], 150) == ["published_while_objected"]
    assert violations([("e1", "OBJECT", 100), ("e2", "WITHDRAW", 200)], 250) == []


def test_a_withdraw_of_the_same_millisecond_may_have_come_first():
    assert violations([("e1", "OBJECT", 100), ("e2", "WITHDRAW", 200)], 200) == []


def test_an_objection_of_the_same_millisecond_may_have_come_after():
    assert violations([("e1", "WITHDRAW", 100), ("e2", "OBJECT", 200)], 200) == []


def test_objected_in_every_state_of_the_millisecond_is_a_violation():
    receipts = [("e1", "OBJECT", 100), ("e2", "WITHDRAW", 100), ("e3", "OBJECT", 100)]
    assert violations(receipts[:1], 100) == []  # before it, nothing objected
    assert violations([("e0", "OBJECT", 50), *receipts], 100) == []  # after e2: allowed
    objected_throughout = [("e0", "OBJECT", 50), ("e1", "OBJECT", 100)]
    assert violations(objected_throughout, 100) == ["published_while_objected"]
