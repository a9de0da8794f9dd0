"""Hypothesis strategies for the enforcer's records."""

from hypothesis import strategies as st

PLATFORMS = ["FACEBOOK", "INSTAGRAM"]
VISIBILITIES = ["PUBLIC", "FRIENDS", "PRIVATE"]
COUNTRIES = ["GB", "FR", "US", "DE", "IE"]

ids = st.text(alphabet="abcdefghij0123456789-", min_size=1, max_size=12)
users = st.sampled_from(["u1", "u2", "u3"])
millis = st.integers(min_value=0, max_value=2**41)


@st.composite
def posts(draw, user_id=users, post_id=ids):
    return {
        "post_id": draw(post_id),
        "user_id": draw(user_id),
        "platform": draw(st.sampled_from(PLATFORMS)),
        "visibility": draw(st.sampled_from(VISIBILITIES)),
        "author_country": draw(st.sampled_from(COUNTRIES)),
        "author_is_adult": draw(st.booleans()),
        "created_at": draw(millis),
        "text": draw(st.none() | st.text(max_size=50)),
        "media_urls": draw(st.lists(st.text(max_size=20), max_size=3)),
    }


@st.composite
def objections(draw, user_id=users, times=st.integers(min_value=0, max_value=20)):
    return {
        "event_id": draw(ids),
        "user_id": draw(user_id),
        "action": draw(st.sampled_from(["OBJECT", "WITHDRAW"])),
        "platform": draw(st.none() | st.sampled_from(PLATFORMS)),
        "occurred_at": draw(times),
        "channel": draw(st.sampled_from(["IN_APP", "WEB_FORM", "EMAIL", "SUPPORT"])),
    }


@st.composite
def policies(draw):
    from streams.core.policy import Policy

    return Policy(
        version=draw(st.text(alphabet="abc-0123", min_size=1, max_size=10)),
        countries=frozenset(draw(st.lists(st.sampled_from(COUNTRIES), max_size=4))),
        visibilities=frozenset(draw(st.lists(st.sampled_from(VISIBILITIES), max_size=3))),
        platforms=frozenset(draw(st.lists(st.sampled_from(PLATFORMS), max_size=2))),
        adults_only=draw(st.booleans()),
    )
