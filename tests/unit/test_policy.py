"""The policy: rule order, validation of policy files."""

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.core.policy import Outcome, PolicyError, Reason, decide, load_policy
from tests.unit.strategies import policies, posts

RULES = [  # (reason, the post passes this rule)
    (Reason.NOT_PUBLIC, lambda pol, p, o: p["visibility"] in pol.visibilities),
    (Reason.MINOR, lambda pol, p, o: p["author_is_adult"] or not pol.adults_only),
    (Reason.COUNTRY_EXCLUDED, lambda pol, p, o: p["author_country"] in pol.countries),
    (Reason.PLATFORM_EXCLUDED, lambda pol, p, o: p["platform"] in pol.platforms),
    (Reason.OBJECTED, lambda pol, p, o: not o),
]


@given(policies(), posts(), st.booleans())
def test_reason_is_the_first_rule_the_post_fails(policy, post, objected):
    outcome, reason = decide(policy, post, objected)
    passed = [ok(policy, post, objected) for _, ok in RULES]
    if all(passed):
        assert (outcome, reason) == (Outcome.PUBLISHED, Reason.ELIGIBLE)
    else:
        first_failed = passed.index(False)
        assert reason == RULES[first_failed][0]
        assert outcome == Outcome.BLOCKED


@given(policies(), posts())
def test_an_objection_never_publishes(policy, post):
    assert decide(policy, post, True)[0] == Outcome.BLOCKED


def test_default_policy_loads():
    policy = load_policy()
    assert policy.version == "uk-legitimate-interests-2024-09"
    assert policy.countries == {"GB"} and policy.visibilities == {"PUBLIC"}
    assert policy.platforms == {"FACEBOOK", "INSTAGRAM"} and policy.adults_only


GOOD = """version = "v2"
countries = ["GB", "FR"]
visibilities = ["PUBLIC"]
platforms = ["INSTAGRAM"]
adults_only = false
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version = ", "not valid TOML"),
        (GOOD.replace('"FR"', '"UK"'), "the United Kingdom is GB"),
        (GOOD.replace('"FR"', '"gb"'), "unknown ISO 3166-1"),
        (GOOD.replace('["INSTAGRAM"]', '["TIKTOK"]'), "unknown platform"),
        (GOOD.replace('["PUBLIC"]', '["PUBLIC", "SECRET"]'), "unknown visibility"),
        (GOOD.replace("adults_only = false", "adults_only = 1"), "'adults_only' must be"),
        (GOOD.replace('version = "v2"', 'version = ""'), "'version' must be"),
        (GOOD.replace('version = "v2"\n', ""), "missing key(s): version"),
        (GOOD + "countrys = []\n", "unknown key(s): countrys"),
        (GOOD.replace('["GB", "FR"]', '"GB"'), "'countries' must be a list"),
    ],
)
def test_bad_policy_files_are_refused_with_one_line(tmp_path: Path, text, message):
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_or_binary_policy_file(tmp_path: Path):
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path / "absent.toml")
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_policy(tmp_path / "bin.toml")


def test_good_policy(tmp_path: Path):
    path = tmp_path / "p.toml"
    path.write_text(GOOD)
    policy = load_policy(path)
    assert policy.countries == {"GB", "FR"} and not policy.adults_only
