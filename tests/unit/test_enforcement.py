"""The enforcement core, driven like the gate agent drives it, over random histories.

A model of the outputs (the compacted training-ingest, the ledger, the audit log) is
checked after every step: no post of an objected (user, platform) is ever live, the
ledger is exactly what is live, and every post gets exactly one live decision.
"""

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.consent import EMPTY, ConsentState
from streams.core.enforcement import Effects, Source, on_objection, on_post
from streams.core.policy import load_policy
from tests.unit.strategies import objections, posts

POLICY = load_policy()
SRC = Source("t", 0, 0)
steps = st.lists(
    st.one_of(
        posts(post_id=st.sampled_from([f"p{i}" for i in range(8)])).map(lambda p: ("post", p)),
        objections().map(lambda e: ("objection", e)),
    ),
    max_size=40,
)


class Model:
    def __init__(self) -> None:
        self.states: dict[str, ConsentState] = {}
        self.ledger: dict[str, dict[str, str]] = {}  # user -> post -> platform
        self.live: dict[str, dict] = {}  # compacted training-ingest
        self.decisions: list[dict] = []
        self.retractions: list[dict] = []

    def apply(self, fx: Effects, user: str) -> None:
        for record in fx.publish:
            self.live[record["post_id"]] = record
        for post_id in fx.tombstones:
            self.live.pop(post_id, None)
        self.retractions += fx.retractions
        self.decisions += fx.decisions
        entries = self.ledger.setdefault(user, {})
        entries.update(fx.ledger_add)
        for post_id in fx.ledger_remove:
            entries.pop(post_id, None)

    def step(self, kind: str, record: dict, replay: str | None = None) -> Effects:
        user = record["user_id"]
        state = self.states.get(user, EMPTY)
        if kind == "post":
            live = record["post_id"] in self.ledger.get(user, {})
            fx = on_post(POLICY, record, state, live, 1, SRC, replay)
        else:
            new, fx = on_objection(POLICY, state, record, dict(self.ledger.get(user, {})), 1, SRC)
            self.states[user] = new
        self.apply(fx, user)
        return fx

    def check(self) -> None:
        ledger_ids = {p for entries in self.ledger.values() for p in entries}
        for user, entries in self.ledger.items():
            state = self.states.get(user, EMPTY)
            for _post_id, platform in entries.items():
                assert not state.objected(platform), "a post of an objected user is live"
        # post ids are shared between users in this model, so compare per (user, post)
        live_pairs = {(r["user_id"], p) for p, r in self.live.items()}
        ledger_pairs = {(u, p) for u, entries in self.ledger.items() for p in entries}
        assert {p for _, p in live_pairs} <= ledger_ids
        assert live_pairs <= ledger_pairs


@settings(max_examples=300)
@given(steps)
def test_no_leak_and_ledger_matches_what_is_live(history):
    model = Model()
    for kind, record in history:
        # post ids are unique per user in reality: namespace them by user
        if kind == "post":
            record = dict(record, post_id=f"{record['user_id']}-{record['post_id']}")
        before = len(model.decisions)
        fx = model.step(kind, record)
        if kind == "post":
            assert len(model.decisions) == before + 1, "every live post gets one decision"
            assert len(fx.publish) <= 1
        else:
            assert len(fx.retractions) <= 1
            assert len(model.decisions) - before == len(fx.tombstones)
        model.check()


@settings(max_examples=200)
@given(
    steps,
    st.lists(
        posts(post_id=st.sampled_from([f"p{i}" for i in range(8)])),
        max_size=10,
        unique_by=lambda p: (p["user_id"], p["post_id"]),
    ),
)
def test_replay_emits_only_differences_and_is_idempotent(history, replayed):
    # a replay re-decides the latest version of each post once (the CLI de-duplicates)
    model = Model()
    for kind, record in history:
        if kind == "post":
            record = dict(record, post_id=f"{record['user_id']}-{record['post_id']}")
        model.step(kind, record)
    replayed = [dict(p, post_id=f"{p['user_id']}-{p['post_id']}") for p in replayed]
    for p in replayed:
        model.step("post", p, replay="r1")
        model.check()
    second = [model.step("post", p, replay="r2") for p in replayed]
    assert all(fx.empty for fx in second), "a second identical replay must emit nothing"


def test_objection_after_posts_retracts_them_with_one_retraction():
    model = Model()
    p1 = {
        "post_id": "p1",
        "user_id": "u",
        "platform": "FACEBOOK",
        "visibility": "PUBLIC",
        "author_country": "GB",
        "author_is_adult": True,
        "created_at": 1,
    }
    model.step("post", p1)
    model.step("post", dict(p1, post_id="p2", platform="INSTAGRAM"))
    fx = model.step(
        "objection",
        {
            "event_id": "e1",
            "user_id": "u",
            "action": "OBJECT",
            "platform": None,
            "occurred_at": 5,
            "channel": "EMAIL",
        },
    )
    assert sorted(fx.tombstones) == ["p1", "p2"]
    assert fx.retractions == [
        {
            "user_id": "u",
            "objection_event_id": "e1",
            "platform": None,
            "post_ids": ["p1", "p2"],
            "retracted_at": 1,
        }
    ]
    assert [(d["outcome"], d["reason"]) for d in fx.decisions] == [("RETRACTED", "OBJECTED")] * 2
    again = model.step(
        "objection",
        {
            "event_id": "e1",
            "user_id": "u",
            "action": "OBJECT",
            "platform": None,
            "occurred_at": 5,
            "channel": "EMAIL",
        },
    )
    # the repeat changes nothing; it leaves only its receipt
    assert again.receipt is not None and again.receipt["outcome"] == "IGNORED_REPEATED_EVENT_ID"
    again.receipt = None
    assert again.empty
    assert fx.receipt["outcome"] == "APPLIED" and fx.receipt["posts_retracted"] == 2
    assert {d["cause"] for d in fx.decisions} == {"e1"}


@settings(max_examples=300)
@given(steps)
def test_every_objection_event_has_one_receipt_that_says_what_it_did(history):
    """One receipt per objection event: the event as given, what it did (applied only
    when the state in force changed, repeated for a seen id, older otherwise), how many
    posts it retracted (the RETRACTED decisions, each naming the event as its cause),
    the platforms objected on after it, and where it was read."""
    model = Model()
    for kind, record in history:
        user = record["user_id"]
        before = model.states.get(user, EMPTY)
        fx = model.step(kind, record)
        if kind == "post":
            assert fx.receipt is None
            continue
        r = fx.receipt
        after = model.states[user]
        assert (r["event_id"], r["user_id"], r["action"], r["platform"], r["channel"]) == (
            record["event_id"],
            user,
            record["action"],
            record["platform"],
            record["channel"],
        )
        assert r["occurred_at"] == r["applied_occurred_at"] == record["occurred_at"]
        if record["event_id"] in before.seen:
            assert r["outcome"] == "IGNORED_REPEATED_EVENT_ID"
        elif after.marks != before.marks:
            assert r["outcome"] == "APPLIED"
        else:
            assert r["outcome"] == "IGNORED_OLDER"
        assert r["posts_retracted"] == len(fx.tombstones)
        assert all(d["cause"] == record["event_id"] for d in fx.decisions)
        objected = [p for p in ("FACEBOOK", "INSTAGRAM") if after.objected(p)]
        assert r["objected_platforms"] == objected
        assert (r["source_topic"], r["source_partition"], r["source_offset"]) == ("t", 0, 0)
    for d in model.decisions:
        assert (d["cause"] is None) == (d["outcome"] != "RETRACTED")


@given(objections(), st.integers(min_value=0, max_value=10**6), st.integers(0, 10**6))
def test_an_event_dated_too_far_ahead_is_clamped_and_its_receipt_says_so(event, now, skew):
    """Applied at the time read, with both dates on the receipt; an event within the
    skew is applied as given."""
    _, fx = on_objection(POLICY, EMPTY, event, {}, now, SRC, skew)
    r = fx.receipt
    assert r["occurred_at"] == event["occurred_at"]
    if event["occurred_at"] > now + skew:
        assert r["outcome"] == "CLAMPED_FROM_FUTURE" and r["applied_occurred_at"] == now
    else:
        assert r["outcome"] == "APPLIED" and r["applied_occurred_at"] == event["occurred_at"]
