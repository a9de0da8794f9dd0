"""``enforcer verify``: retractions at every objection put in force (not only in the final
state), the receipts' ``posts_retracted`` counts, the latency counted once per retracted
post and event, and the DLQ record of a replay request that is not a second record of its
post's input.

Records are given as dicts (``Given``); times are small numbers of milliseconds."""

from __future__ import annotations

from streams.verify.checker import Checker, Result
from tests.unit.test_verify_order import TOPICS, Given

USER = "u1"
BOTH = ["FACEBOOK", "INSTAGRAM"]


class Run:
    """The records of one user, fed to a ``Checker`` in the order verify reads them."""

    def __init__(self) -> None:
        self.checker = Checker(TOPICS, [], Given(), grace_ms=0)
        self.offsets: dict[str, int] = {}

    def _next(self, topic: str) -> int:
        self.offsets[topic] = self.offsets.get(topic, -1) + 1
        return self.offsets[topic]

    def objection(
        self,
        event_id: str,
        action: str,
        platform: str | None,
        read_at: int,
        applied_at: int,
        objected: list[str],
        retracted: int = 0,
        repeat_of: int | None = None,
    ) -> int:
        """The event on ``objections`` (read at ``read_at``) and its receipt; with
        ``repeat_of`` (an offset), only a receipt of that input processed again."""
        if repeat_of is None:
            offset = self._next(TOPICS.objections)
            event = {"event_id": event_id, "user_id": USER, "action": action}
            self.checker.add(TOPICS.objections, 0, offset, read_at, None, event, ())
        else:
            offset = repeat_of
        receipt = {
            "event_id": event_id,
            "user_id": USER,
            "action": action,
            "platform": platform,
            "occurred_at": read_at,
            "applied_occurred_at": read_at,
            "applied_at": applied_at,
            "outcome": "APPLIED" if repeat_of is None else "IGNORED_REPEATED_EVENT_ID",
            "objected_platforms": objected,
            "posts_retracted": retracted,
            "source_topic": TOPICS.objections,
            "source_partition": 0,
            "source_offset": offset,
        }
        self.checker.add(
            TOPICS.receipts, 0, self._next(TOPICS.receipts), applied_at, None, receipt, ()
        )
        return offset

    def decision(
        self, post_id: str, outcome: str, decided_at: int, broker_ts: int, **extra
    ) -> None:
        d = {
            "post_id": post_id,
            "user_id": USER,
            "outcome": outcome,
            "reason": "OBJECTED" if outcome == "RETRACTED" else "ELIGIBLE",
            "policy_version": "v",
            "decided_at": decided_at,
            "source_topic": TOPICS.posts,
            "source_partition": 0,
            "source_offset": 0,
            "replay_id": None,
            "cause": None,
            **extra,
        }
        self.checker.add(TOPICS.decisions, 0, self._next(TOPICS.decisions), broker_ts, None, d, ())

    def publish(self, post_id: str, decided_at: int, platform: str = "FACEBOOK", **extra) -> None:
        self.decision(post_id, "PUBLISHED", decided_at, decided_at + 1, **extra)
        record = {
            "post_id": post_id,
            "user_id": USER,
            "platform": platform,
            "decided_at": decided_at,
        }
        self.checker.add(TOPICS.training, 0, 0, decided_at + 1, post_id.encode(), record, ())

    def tombstone(self, post_id: str, ts: int) -> None:
        self.checker.add(TOPICS.training, 0, 0, ts, post_id.encode(), None, ())

    def retract(self, post_id: str, event_id: str, at: int, broker_ts: int) -> None:
        """What the worker writes for a post an objection retracts."""
        self.tombstone(post_id, at + 1)
        self.decision(post_id, "RETRACTED", at, broker_ts, cause=event_id)

    def result(self) -> Result:
        return self.checker.evaluate(now_ms=10_000_000)


def checks(result: Result) -> list[str]:
    return [v.check for v in result.violations]


# -- (a) a post live when an objection was applied must be retracted before a withdrawal


def test_a_post_not_retracted_at_an_objection_later_withdrawn_is_a_violation():
    run = Run()
    run.publish("p1", 100)
    run.publish("p2", 110, platform="INSTAGRAM")  # not in the objection's scope
    run.objection("e1", "OBJECT", "FACEBOOK", 150, 200, ["FACEBOOK"])  # nothing retracted
    run.objection("e2", "WITHDRAW", "FACEBOOK", 250, 300, [])
    result = run.result()
    assert checks(result) == ["not_retracted"]
    text = str(result.violations[0])
    assert "post p1 of user u1 (FACEBOOK)" in text and "objection e1" in text
    assert "was not retracted before event e2 allowed it again" in text
    assert result.counts["objection_retractions_required"] == 1
    assert result.counts["objection_retractions_missing"] == 1


def test_an_objection_to_every_platform_covers_every_platform():
    run = Run()
    run.publish("p1", 100)
    run.publish("p2", 110, platform="INSTAGRAM")
    run.objection("e1", "OBJECT", None, 150, 200, BOTH, retracted=1)
    run.retract("p1", "e1", 200, 205)  # p2 forgotten
    run.objection("e2", "WITHDRAW", None, 250, 300, [])
    result = run.result()
    assert checks(result) == ["not_retracted"]  # its receipt counts the one it retracted
    assert "post p2 of user u1 (INSTAGRAM)" in str(result.violations[0])
    assert result.counts["objection_retractions_required"] == 2


def test_a_retracted_post_republished_after_the_withdrawal_is_fine():
    run = Run()
    run.publish("p1", 100)
    run.objection("e1", "OBJECT", "FACEBOOK", 150, 200, ["FACEBOOK"], retracted=1)
    run.retract("p1", "e1", 200, 205)
    run.decision("p1", "RETRACTED", 200, 900, cause="e1")  # a repeat after a crash
    run.objection("e2", "WITHDRAW", "FACEBOOK", 250, 300, [])
    run.publish("p1", 400, replay_id="r1")  # a replay re-publishes it
    run.publish("p3", 500)  # published after the objection: not the objection's to retract
    result = run.result()
    assert checks(result) == []
    assert result.counts["objection_retractions_required"] == 1
    # one latency per retracted post and event, from the objection record to the first
    # RETRACTED decision's broker time (the repeat is not another retraction)
    assert result.latencies == [("e1", "p1", 150, 205, 0.055)]


def test_a_retraction_after_the_withdrawal_is_a_violation():
    run = Run()
    run.publish("p1", 100)
    run.objection("e1", "OBJECT", "FACEBOOK", 150, 200, ["FACEBOOK"])
    run.objection("e2", "WITHDRAW", "FACEBOOK", 250, 300, [])
    run.objection("e3", "OBJECT", "FACEBOOK", 350, 400, ["FACEBOOK"], retracted=1)
    run.retract("p1", "e3", 400, 405)
    result = run.result()
    assert checks(result) == ["not_retracted"]
    assert "objection e1 was applied" in str(result.violations[0])
    assert "was retracted only at" in str(result.violations[0])


def test_republished_after_the_withdrawal_without_a_tombstone_is_a_violation():
    run = Run()
    run.publish("p1", 100)
    run.objection("e1", "OBJECT", "FACEBOOK", 150, 200, ["FACEBOOK"])
    run.objection("e2", "WITHDRAW", "FACEBOOK", 250, 300, [])
    run.publish("p1", 400, replay_id="r1")
    run.objection("e3", "OBJECT", "FACEBOOK", 450, 500, ["FACEBOOK"], retracted=1)
    run.retract("p1", "e3", 500, 505)
    result = run.result()
    assert checks(result) == ["not_retracted"]
    assert "objection e1" in str(result.violations[0])
    assert "was not retracted" in str(result.violations[0])


def test_a_tombstone_of_the_objections_millisecond_from_an_earlier_retraction():
    """A worker catching up applies many records in one millisecond: p1 retracted (made
    private, re-sent) just before the objection, its tombstone dated as the receipt."""
    run = Run()
    run.publish("p1", 100)
    run.decision("p1", "RETRACTED", 199, 199, cause="post:p1")
    run.tombstone("p1", 200)
    run.objection("e1", "OBJECT", "FACEBOOK", 150, 200, ["FACEBOOK"])
    run.objection("e2", "WITHDRAW", "FACEBOOK", 250, 300, [])
    run.publish("p1", 400, replay_id="r1")
    run.objection("e3", "OBJECT", "FACEBOOK", 450, 500, ["FACEBOOK"], retracted=1)
    run.retract("p1", "e3", 500, 505)
    assert checks(run.result()) == []


def test_a_post_decided_in_the_millisecond_of_the_objection_and_its_withdrawal():
    run = Run()
    run.objection("e1", "OBJECT", "FACEBOOK", 150, 200, ["FACEBOOK"])
    run.objection("e2", "WITHDRAW", "FACEBOOK", 250, 200, [])
    run.publish("p1", 200)  # may have been decided after both
    assert checks(run.result()) == []


# -- posts_retracted against the RETRACTED decisions naming the event


def test_a_receipt_count_without_its_decisions_is_a_violation():
    run = Run()
    run.publish("p1", 100)
    run.objection("e1", "OBJECT", "FACEBOOK", 150, 200, ["FACEBOOK"], retracted=1)
    run.tombstone("p1", 201)  # its RETRACTED decision missing
    result = run.result()
    assert checks(result) == ["receipt_count"]
    assert "receipt(s) of event e1 (user u1) say 1 post(s) retracted; 0 post(s)" in str(
        result.violations[0]
    )
    assert result.counts["retraction_without_decision"] == 1


def test_a_count_left_ambiguous_by_a_repeat_is_a_note():
    run = Run()
    run.publish("p1", 100)
    offset = run.objection("e1", "OBJECT", "FACEBOOK", 150, 200, ["FACEBOOK"], retracted=1)
    run.retract("p1", "e1", 200, 205)
    # processed again after a crash, before the ledger kept the removal: counted twice
    run.objection("e1", "OBJECT", "FACEBOOK", 150, 210, ["FACEBOOK"], 1, repeat_of=offset)
    run.retract("p1", "e1", 210, 215)
    result = run.result()
    assert checks(result) == []
    assert result.counts["receipt_count_ambiguous"] == 1
    assert len(result.notes) == 1 and "event e1" in result.notes[0]
    assert len(result.latencies) == 1


# -- (c) a replay request that went to the DLQ


def dlq(run: Run, key: bytes | None, value: dict | None, own: list | None = None) -> None:
    headers = [
        *(own or []),
        ("error", b"record of a user of partition 1 arrived on partition 0"),
        ("source.topic", TOPICS.posts.encode()),
        ("source.partition", b"0"),
        ("source.offset", b"0"),
    ]
    if value is None:
        headers.append(("dlq.reference.bytes", b"2000000"))
    run.checker.add(TOPICS.dlq, 0, run._next(TOPICS.dlq), 1000, key, value, headers)


POST = {"post_id": "p1", "user_id": USER, "platform": "FACEBOOK"}


def decided_input() -> Run:
    run = Run()
    run.checker.add(TOPICS.posts, 0, 0, 50, USER.encode(), dict(POST), ())
    run.decision("p1", "BLOCKED", 100, 101)
    return run


def test_a_replay_request_in_the_dlq_is_not_a_second_record_of_its_input():
    for key, value in ((USER.encode(), dict(POST)), (None, None)):
        run = decided_input()
        dlq(run, key, value)
        result = run.result()
        assert checks(result) == []
        assert result.counts["input_decision"] == 1
        assert result.counts["replay_request_dlq"] == 1
        assert result.counts["input_repeated"] == 0


def test_an_input_in_the_dlq_and_decided_is_still_reported():
    run = decided_input()
    dlq(run, USER.encode(), dict(POST), own=[("trace", b"t-1")])  # the input's own header
    assert checks(run.result()) == ["unaccounted"]


def test_an_input_only_in_the_dlq_is_accounted_by_it():
    run = Run()
    run.checker.add(TOPICS.posts, 0, 0, 50, USER.encode(), dict(POST), ())
    dlq(run, USER.encode(), dict(POST))
    result = run.result()
    assert checks(result) == []
    assert result.counts["input_dlq"] == 1 and result.counts["replay_request_dlq"] == 0


def test_a_repeated_retracted_decision_makes_the_count_ambiguous_too():
    run = Run()
    run.publish("p1", 100)
    run.publish("p2", 110)
    # the first pass's receipt lost, its decisions kept; the second pass retracted what
    # was still live and counted that only
    run.objection("e1", "OBJECT", "FACEBOOK", 150, 210, ["FACEBOOK"], retracted=1)
    run.retract("p1", "e1", 200, 205)
    run.retract("p1", "e1", 210, 215)
    run.retract("p2", "e1", 200, 205)
    result = run.result()
    assert checks(result) == []
    assert result.counts["receipt_count_ambiguous"] == 1
