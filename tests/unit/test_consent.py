"""Consent state: latest occurred_at wins per (user, platform), duplicates change nothing."""

from hypothesis import given
from hypothesis import strategies as st

from streams.core.consent import EMPTY, apply, decode_state, encode_state, receive
from tests.unit.strategies import PLATFORMS, objections

events = st.lists(objections(user_id=st.just("u")), max_size=12, unique_by=lambda e: e["event_id"])


def fold(evts):
    state = EMPTY
    for e in evts:
        state = apply(state, e)
    return state


def expected_objected(evts, platform):
    """Per platform, the event with the greatest (occurred_at, OBJECT>WITHDRAW, event_id)
    among those for the platform or for every platform decides."""
    relevant = [e for e in evts if e["platform"] in (None, platform)]
    if not relevant:
        return False
    winner = max(relevant, key=lambda e: (e["occurred_at"], e["action"] == "OBJECT", e["event_id"]))
    return winner["action"] == "OBJECT"


@given(events)
def test_latest_event_per_platform_wins(evts):
    state = fold(evts)
    for platform in PLATFORMS:
        assert state.objected(platform) == expected_objected(evts, platform)


@given(events, st.randoms())
def test_arrival_order_does_not_matter(evts, rnd):
    shuffled = list(evts)
    rnd.shuffle(shuffled)
    a, b = fold(evts), fold(shuffled)
    assert all(a.objected(p) == b.objected(p) for p in PLATFORMS)


@given(events)
def test_repeating_events_changes_nothing(evts):
    once = fold(evts)
    twice = fold(evts + evts)
    assert all(once.objected(p) == twice.objected(p) for p in PLATFORMS)


@given(events, objections(user_id=st.just("u")))
def test_a_repeated_event_id_is_ignored_even_with_other_content(evts, later):
    if not evts:
        return
    state = fold(evts)
    replayed = dict(later, event_id=evts[0]["event_id"], occurred_at=10**12)
    after = apply(state, replayed)
    assert after == state


@given(events)
def test_state_round_trips_through_bytes(evts):
    state = fold(evts)
    again = decode_state(encode_state(state))
    assert again == state


def test_examples_from_the_contract():
    obj_all = {
        "event_id": "a",
        "user_id": "u",
        "action": "OBJECT",
        "platform": None,
        "occurred_at": 10,
        "channel": "IN_APP",
    }
    withdraw_fb = dict(
        obj_all, event_id="b", action="WITHDRAW", platform="FACEBOOK", occurred_at=12
    )
    older_object_fb = dict(obj_all, event_id="c", platform="FACEBOOK", occurred_at=11)
    state = fold([obj_all, withdraw_fb, older_object_fb])
    assert not state.objected("FACEBOOK")  # the withdrawal at 12 is the latest for FB
    assert state.objected("INSTAGRAM")
    cleared = apply(state, dict(obj_all, event_id="d", action="WITHDRAW", occurred_at=20))
    assert cleared.objected_platforms(PLATFORMS) == frozenset()
    assert decode_state(None) == EMPTY


@given(events, st.randoms())
def test_receive_says_what_each_event_did(evts, rnd):
    """``receive`` is ``apply`` plus an outcome: over any arrival order (with repeats),
    a repeated id is IGNORED_REPEATED_EVENT_ID, an event that changes no winning mark is
    IGNORED_OLDER, and the winner of each slot in the end was APPLIED when it came."""
    arrivals = evts + [rnd.choice(evts) for _ in range(len(evts) // 2)] if evts else []
    rnd.shuffle(arrivals)
    state, seen, applied = EMPTY, set(), set()
    for e in arrivals:
        new, outcome = receive(state, e)
        assert new == apply(state, e)
        if e["event_id"] in seen:
            assert outcome == "IGNORED_REPEATED_EVENT_ID"
        elif new.marks != state.marks:
            assert outcome == "APPLIED"
            applied.add(e["event_id"])
        else:
            assert outcome == "IGNORED_OLDER"
        seen.add(e["event_id"])
        state = new
    assert {m.event_id for m in state.marks.values()} <= applied
