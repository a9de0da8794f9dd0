"""The consent lookup's pure parts (streams/runtime/lookup.py): user id parsing, the bearer
token, the answer built from consent state, routing; and the answering worker's
checks, with stand-ins for Faust (the two-worker test on the broker is
tests/test_consent_lookup_kafka.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.cli.main import build_parser
from streams.core.consent import (
    EMPTY,
    ConsentState,
    Mark,
    apply,
    decode_state,
    encode_state,
    receive,
)
from streams.core.records import MAX_ID_BYTES, partition_for_user
from streams.runtime import lookup
from streams.runtime.lookup import (
    ANSWERED_BY,
    FORWARDED,
    BadUserId,
    ConsentLookup,
    authorized,
    consent_view,
    endpoint_value,
    owner_of,
    parse_endpoint,
    parse_user_id,
    read_token,
    route,
)
from streams.settings import Settings, SettingsError, from_args
from streams.state.ledger import StateNotReady
from tests.unit.strategies import PLATFORMS, objections

TOKEN = b"s3cret-token-0123456789"


# -- user ids --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "user_id"),
    [
        ("/consent/u-1", "u-1"),
        ("/consent/a%2Fb", "a/b"),
        ("/consent/%C3%A9t%C3%A9", "été"),
        ("/consent/a%20b?x=1", "a b"),
        ("/consent/" + "x" * MAX_ID_BYTES, "x" * MAX_ID_BYTES),
        ("/consent/%25FF", "%FF"),
    ],
)
def test_a_user_id_the_contract_allows_is_read_from_the_raw_path(raw, user_id):
    assert parse_user_id(raw) == user_id


@pytest.mark.parametrize(
    "raw",
    [
        "/consent/",  # empty
        "/consent/%20%09",  # blank
        "/consent/" + "x" * (MAX_ID_BYTES + 1),  # too long
        "/consent/" + "%C3%A9" * (MAX_ID_BYTES // 2 + 1),  # too many UTF-8 bytes
        "/consent/%FF%FE",  # not UTF-8
        "/consent/%ED%A0%80",  # an encoded surrogate
        "/consent/%E",  # a broken escape
        "/consent/%zz",
        "/consent/a/b",  # an unescaped slash
        "/other/u-1",
    ],
)
def test_garbage_is_not_a_user_id(raw):
    with pytest.raises(BadUserId):
        parse_user_id(raw)


# -- the token -------------------------------------------------------------------------
def test_the_token_file_is_read_without_surrounding_whitespace(tmp_path: Path):
    path = tmp_path / "token"
    path.write_bytes(b"  " + TOKEN + b"\n")
    assert read_token(path) == TOKEN


@pytest.mark.parametrize(
    "content", [b"", b"short-token", b"has a space in it 0123", b"\xc3\xa9" * 20, b"a\nb" * 10]
)
def test_an_unusable_token_is_refused_without_showing_it(tmp_path: Path, content: bytes):
    path = tmp_path / "token"
    path.write_bytes(content)
    with pytest.raises(SettingsError) as err:
        read_token(path)
    assert str(path) in str(err.value)
    if content.strip():
        assert content.decode(errors="replace").strip() not in str(err.value)


def test_a_missing_token_file_is_a_settings_error(tmp_path: Path):
    with pytest.raises(SettingsError, match="cannot read"):
        read_token(tmp_path / "absent")


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (f"Bearer {TOKEN.decode()}", True),
        (f"bearer {TOKEN.decode()}", True),
        (f"  Bearer {TOKEN.decode()}  ", True),
        (None, False),
        ("", False),
        ("Bearer", False),
        ("Bearer ", False),
        (f"Basic {TOKEN.decode()}", False),
        (f"Bearer {TOKEN.decode()[:-1]}", False),
        (f"Bearer {TOKEN.decode()}x", False),
        (f"Bearer {TOKEN.decode().upper()}", False),
        (f"Bearer {TOKEN.decode()}\u00e9", False),
    ],
)
def test_only_the_bearer_token_is_authorized(header, ok):
    assert authorized(header, TOKEN) is ok


def test_the_comparison_does_not_depend_on_the_presented_length(monkeypatch):
    compared: list[tuple[int, int]] = []
    real = lookup.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(lookup.hmac, "compare_digest", spy)
    for presented in ("x", TOKEN.decode(), "y" * 5000):
        authorized(f"Bearer {presented}", TOKEN)
    assert compared == [(32, 32)] * 3


# -- the answer ------------------------------------------------------------------------
def event(event_id, action="OBJECT", platform=None, occurred_at=1000):
    return {
        "event_id": event_id,
        "user_id": "u",
        "action": action,
        "platform": platform,
        "occurred_at": occurred_at,
        "channel": "IN_APP",
    }


def test_no_state_is_no_objection_on_every_platform():
    view = consent_view("nobody", 3, EMPTY)
    assert view == {
        "user_id": "nobody",
        "partition": 3,
        "objected_platforms": [],
        "platforms": {p: {"objected": False, "set_by": None} for p in PLATFORMS},
    }


def test_each_platform_names_the_event_in_force_and_when_it_was_applied():
    state = apply(EMPTY, event("e1"), applied_at=5000)
    state = apply(state, event("e2", "WITHDRAW", "INSTAGRAM", occurred_at=2000), applied_at=6000)
    state = decode_state(encode_state(state))  # as stored
    view = consent_view("u", 0, state)
    assert view["objected_platforms"] == ["FACEBOOK"]
    assert view["platforms"]["FACEBOOK"] == {
        "objected": True,
        "set_by": {
            "event_id": "e1",
            "action": "OBJECT",
            "platform": None,
            "occurred_at": 1000,
            "applied_at": 5000,
        },
    }
    assert view["platforms"]["INSTAGRAM"]["set_by"] == {
        "event_id": "e2",
        "action": "WITHDRAW",
        "platform": "INSTAGRAM",
        "occurred_at": 2000,
        "applied_at": 6000,
    }


def test_state_written_before_applied_at_was_kept_answers_null():
    stored = b'{"m":{"FACEBOOK":[1000,1,"e1"]},"s":["e1"]}'
    view = consent_view("u", 0, decode_state(stored))
    assert view["platforms"]["FACEBOOK"]["set_by"]["applied_at"] is None
    assert view["platforms"]["FACEBOOK"]["objected"] is True


@given(st.lists(objections(user_id=st.just("u")), max_size=12, unique_by=lambda e: e["event_id"]))
def test_the_answer_is_what_the_gate_decides_with_the_winning_event(evts):
    state: ConsentState = EMPTY
    for i, e in enumerate(evts):
        state = apply(state, e, applied_at=10_000 + i)
    view = json.loads(json.dumps(consent_view("u", 1, decode_state(encode_state(state)))))
    for platform in PLATFORMS:
        entry = view["platforms"][platform]
        assert entry["objected"] == state.objected(platform)
        relevant = [e for e in evts if e["platform"] in (None, platform)]
        if not relevant:
            assert entry["set_by"] is None
            continue
        won = max(
            relevant, key=lambda e: (e["occurred_at"], e["action"] == "OBJECT", e["event_id"])
        )
        assert entry["set_by"] == {
            "event_id": won["event_id"],
            "action": won["action"],
            "platform": won["platform"],
            "occurred_at": won["occurred_at"],
            "applied_at": 10_000 + evts.index(won),
        }
    assert view["objected_platforms"] == [p for p in PLATFORMS if state.objected(p)]


def test_applied_at_is_kept_but_decides_nothing():
    a, outcome = receive(EMPTY, event("e1"), applied_at=1)
    b, _ = receive(EMPTY, event("e1"), applied_at=2)
    assert outcome == "APPLIED" and a == b and a.marks["*"].applied_at == 1
    assert decode_state(encode_state(a)).marks["*"] == Mark(1000, True, "e1")
    assert decode_state(encode_state(a)).marks["*"].applied_at == 1
    assert json.loads(encode_state(apply(EMPTY, event("e1"))))["m"]["*"] == [1000, 1, "e1"]


# -- routing ---------------------------------------------------------------------------
ME, OTHER = "http://me.invalid", "http://other.invalid"
TOPIC = "app-user-events-repartition"
DIST = {ME: {TOPIC: [0, 2], "x": [1]}, OTHER: {TOPIC: [1, 3]}}


def test_the_owner_is_the_member_with_the_active_partition():
    assert owner_of(DIST, TOPIC, 0) == ME and owner_of(DIST, TOPIC, 1) == OTHER
    assert owner_of(DIST, TOPIC, 4) is None
    assert owner_of({ME: {TOPIC: [1]}, OTHER: {TOPIC: [1]}}, TOPIC, 1) is None  # no guess


@pytest.mark.parametrize(
    ("partition", "rebalancing", "forwarded", "how"),
    [
        (0, False, False, "local"),
        (0, False, True, "local"),
        (1, False, False, "forward"),
        (1, False, True, "unavailable"),  # forwarded once, never again
        (4, False, False, "unavailable"),  # nobody owns it
        (0, True, False, "unavailable"),
        (1, True, False, "unavailable"),
    ],
)
def test_route(partition, rebalancing, forwarded, how):
    assert route(DIST, TOPIC, partition, ME, rebalancing, forwarded).how == how


@pytest.mark.parametrize(
    ("value", "url"),
    [
        (endpoint_value("http://w1:6066"), "http://w1:6066"),
        (endpoint_value("https://10.0.0.7:8443/"), "https://10.0.0.7:8443"),
        (endpoint_value("http://[::1]:6066"), "http://[::1]:6066"),
        (None, None),
        (b"", None),
        (b"not json", None),
        (b'{"url": 5}', None),
        (b"[1]", None),
        (endpoint_value("http://w1:6066/steal"), None),
        (endpoint_value("http://user:pw@w1:6066"), None),
        (endpoint_value("file:///etc/passwd"), None),
        (endpoint_value("http://w1:6066" + "a" * 5000), None),
    ],
)
def test_only_a_plain_http_address_is_an_endpoint(value, url):
    assert parse_endpoint(value) == url


# -- the answering worker, with stand-ins ----------------------------------------------
class FakeAssignor:
    def __init__(self, distribution: dict, active: set, standby: set) -> None:
        self.distribution, self.active, self.standby = distribution, active, standby

    def external_topics_metadata(self) -> dict:
        return self.distribution

    def is_active(self, tp: Any) -> bool:
        return tp in self.active

    def is_standby(self, tp: Any) -> bool:
        return tp in self.standby


class FakeConsent:
    def __init__(self, rows: dict[tuple[int, bytes], bytes], open_partitions: set[int]) -> None:
        self.rows, self.open = rows, open_partitions

    def get(self, partition: int, key: bytes) -> bytes | None:
        if partition not in self.open:
            raise StateNotReady(f"consent[{partition}] is not open here")
        return self.rows.get((partition, key))


class FakeDirectory:
    def __init__(self, endpoints: dict[str, str]) -> None:
        self.endpoints = endpoints

    def get(self, member: str) -> str | None:
        return self.endpoints.get(member)


SETTINGS = Settings(app_id="app", partitions=4, data_dir=Path("/tmp/lookup-unit"))
USER = "u-7"
PART = partition_for_user(USER.encode(), 4)


def make_lookup(
    active: bool = True, standby: bool = False, ready: bool = True, open_: bool = True, **kw: Any
) -> ConsentLookup:
    from faust.types import TP

    tps = {TP(SETTINGS.user_events_topic, PART), TP(SETTINGS.changelog_topic("consent"), PART)}
    owner = kw.get("owner", ME)
    assignor = FakeAssignor(
        {owner: {SETTINGS.user_events_topic: [PART]}},
        tps if active else set(),
        tps if standby else set(),
    )
    app = SimpleNamespace(
        conf=SimpleNamespace(canonical_url=ME),
        assignor=assignor,
        rebalancing=kw.get("rebalancing", False),
        started=True,
    )
    stored = encode_state(apply(EMPTY, event("e1"), applied_at=42))
    processor = SimpleNamespace(
        ready=lambda: ready,
        consent=FakeConsent({(PART, USER.encode()): stored}, {PART} if open_ else set()),
    )
    return ConsentLookup(app, SETTINGS, processor, TOKEN, FakeDirectory(kw.get("endpoints", {})))


def ask(lk: ConsentLookup, user: str = USER, token: bytes | None = TOKEN, **headers: str):
    if token is not None:
        headers["Authorization"] = f"Bearer {token.decode()}"
    return asyncio.run(lk.answer(f"/consent/{user}", headers))


def test_the_owner_answers_from_its_consent_table():
    reply = ask(make_lookup())
    assert reply.status == 200
    assert reply.headers[ANSWERED_BY] == SETTINGS.instance_id
    body = json.loads(reply.body)
    assert body["objected_platforms"] == PLATFORMS
    assert body["platforms"]["FACEBOOK"]["set_by"]["applied_at"] == 42


@pytest.mark.parametrize(
    "kw",
    [
        {"active": False, "standby": True},  # a standby copy is never an answer
        {"active": False},
        {"ready": False},  # recovering
        {"open_": False},  # the table partition is not open here
        {"rebalancing": True},
        {"owner": OTHER, "endpoints": {}},  # the owner's address is not known
    ],
)
def test_no_answer_but_503_when_the_state_here_is_not_the_owners(kw):
    reply = ask(make_lookup(**kw))
    assert reply.status == 503 and int(reply.headers["Retry-After"]) > 0
    assert b"objected" not in reply.body


def test_a_forwarded_lookup_for_another_owner_is_not_forwarded_again():
    lk = make_lookup(owner=OTHER, endpoints={OTHER: "http://127.0.0.1:9"})
    reply = ask(lk, **{FORWARDED: "1"})
    assert reply.status == 503


def test_an_owner_that_does_not_answer_is_503():
    lk = make_lookup(owner=OTHER, endpoints={OTHER: "http://127.0.0.1:9"})
    reply = ask(lk)
    assert reply.status == 503 and "Retry-After" in reply.headers


def test_401_comes_before_anything_about_the_user():
    for token in (None, b"wrong-token-0123456789"):
        for user in (USER, "%FF", "%20"):
            reply = ask(make_lookup(), user, token)
            assert reply.status == 401 and reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert ask(make_lookup(), "%FF").status == 400


# -- settings --------------------------------------------------------------------------
def settings_of(argv: list[str], monkeypatch, **env: str) -> Settings:
    for name in ("ENFORCER_CONSENT_LOOKUP_TOKEN_FILE", "ENFORCER_ADVERTISED_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return from_args(build_parser().parse_args(["worker", *argv]))


def test_the_lookup_is_off_by_default_and_configured_by_flag_or_environment(monkeypatch):
    s = settings_of([], monkeypatch)
    assert s.consent_lookup_token_file is None and s.advertised_url is None
    s = settings_of([], monkeypatch, ENFORCER_CONSENT_LOOKUP_TOKEN_FILE="/run/t")
    assert s.consent_lookup_token_file == Path("/run/t")
    s = settings_of(
        ["--consent-lookup-token-file", "/f", "--advertised-url", "http://w-0.svc:6066/"],
        monkeypatch,
        ENFORCER_ADVERTISED_URL="http://ignored:1",
    )
    assert s.consent_lookup_token_file == Path("/f") and s.lookup_url == "http://w-0.svc:6066"


def test_the_default_address_is_the_web_host_and_port(monkeypatch):
    import socket

    s = settings_of(["--web-port", "7001"], monkeypatch)
    assert s.lookup_url == "http://127.0.0.1:7001"
    s = settings_of(["--web-port", "7001", "--web-host", "0.0.0.0"], monkeypatch)
    assert s.lookup_url == f"http://{socket.gethostname()}:7001"
    assert settings_of(["--web-host", "::1"], monkeypatch).lookup_url == "http://[::1]:6066"


@pytest.mark.parametrize(
    "url", ["w1:6066", "ftp://w1", "http://w1:6066/x", "http://a b", "http://u@w1", "http://"]
)
def test_an_advertised_url_must_be_scheme_host_and_port(monkeypatch, url):
    with pytest.raises(SettingsError, match="--advertised-url"):
        settings_of(["--advertised-url", url], monkeypatch)


def test_there_is_no_flag_or_variable_for_the_token_itself():
    help_text = build_parser()._subparsers._group_actions[0].choices["worker"].format_help()
    assert "--consent-lookup-token-file" in help_text
    assert "--consent-lookup-token " not in help_text and "TOKEN]" not in help_text
