"""Avro single-object and Confluent wire formats; every bad input is a DecodeError."""

import json

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from hypothesis import given
from hypothesis import strategies as st

from streams.serde.codec import SINGLE_OBJECT_MAGIC, Codec, DecodeError, crc64_avro
from tests.unit.strategies import objections, posts

CODEC = Codec()
EVENT = {
    "event_id": "e",
    "user_id": "u",
    "action": "OBJECT",
    "platform": None,
    "occurred_at": 1,
    "channel": "EMAIL",
}


def test_crc64_avro_matches_the_specification_example():
    # the fingerprint of the schema "null" given by the Avro specification
    assert crc64_avro(b'"null"') == 0x63DD24E7CC258F8A


def test_every_schema_version_is_known_and_headers_are_spec_compliant():
    names = {v.name for v in CODEC.versions}
    assert {"Post", "ObjectionEvent", "TrainingRecord", "Retraction", "Decision"} <= names
    data = CODEC.encode(
        "Post",
        {
            "post_id": "p",
            "user_id": "u",
            "platform": "FACEBOOK",
            "visibility": "PUBLIC",
            "author_country": "GB",
            "author_is_adult": True,
            "created_at": 1,
        },
    )
    assert data[:2] == SINGLE_OBJECT_MAGIC
    assert data[2:10] == CODEC.current["Post"].fingerprint


@given(posts())
def test_posts_round_trip(post):
    assert CODEC.decode(CODEC.encode("Post", post), "Post") == ("Post", post)


@given(objections())
def test_objections_round_trip_through_a_schema_registry(event):
    codec = Codec(SchemaRegistryClient.new_client({"url": "mock://codec-test"}))
    data = codec.encode("ObjectionEvent", event, "objections")
    assert data[0] == 0
    assert codec.decode(data) == ("ObjectionEvent", event)
    # readers accept both forms whatever is configured
    assert codec.decode(CODEC.encode("ObjectionEvent", event)) == ("ObjectionEvent", event)


def test_confluent_form_without_registry_is_a_decode_error():
    with pytest.raises(DecodeError, match="no schema registry"):
        CODEC.decode(b"\x00\x00\x00\x00\x07" + b"\x02")


def test_old_decision_version_is_read_into_the_current_schema():
    v1 = next(v for v in CODEC.versions if v.source == "Decision.v1.avsc")
    old = CODEC.encode_with(
        v1,
        {
            "post_id": "p",
            "user_id": "u",
            "outcome": "BLOCKED",
            "reason": "MINOR",
            "policy_version": "x",
            "decided_at": 1,
            "source_topic": "posts",
            "source_partition": 0,
            "source_offset": 3,
        },
    )
    name, datum = CODEC.decode(old)
    assert name == "Decision" and datum["replay_id"] is None and datum["reason"] == "MINOR"


def test_decision_version_2_is_read_into_the_current_schema():
    v2 = next(v for v in CODEC.versions if v.source == "Decision.v2.avsc")
    old = CODEC.encode_with(
        v2,
        {
            "post_id": "p",
            "user_id": "u",
            "outcome": "RETRACTED",
            "reason": "OBJECTED",
            "policy_version": "x",
            "decided_at": 1,
            "source_topic": "objections",
            "source_partition": 2,
            "source_offset": 9,
            "replay_id": "r-1",
        },
    )
    name, datum = CODEC.decode(old)
    assert name == "Decision" and datum["cause"] is None
    assert datum["replay_id"] == "r-1" and datum["outcome"] == "RETRACTED"


@given(posts(), st.data())
def test_corrupt_bytes_never_raise_anything_but_decode_error(post, data):
    good = CODEC.encode("Post", post)
    cut = data.draw(st.integers(0, len(good) - 1))
    flips = data.draw(
        st.lists(st.tuples(st.integers(0, len(good) - 1), st.integers(0, 255)), max_size=3)
    )
    mutated = bytearray(good)
    for i, b in flips:
        mutated[i] = b
    for candidate in (good[:cut], bytes(mutated), good + b"\x00", bytes(data.draw(st.binary()))):
        try:
            CODEC.decode(candidate, "Post")
        except DecodeError as exc:
            assert str(exc)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty value"),
        (b"{}", "unknown magic byte 0x7b"),
        (SINGLE_OBJECT_MAGIC + b"\x01" * 8 + b"\x00", "unknown schema fingerprint"),
        (SINGLE_OBJECT_MAGIC + b"\x01", "truncated single-object header"),
    ],
)
def test_reasons(data, reason):
    with pytest.raises(DecodeError, match=reason):
        CODEC.decode(data)


def test_wrong_record_kind_is_refused():
    with pytest.raises(DecodeError, match="expected a Post record, got ObjectionEvent"):
        CODEC.decode(CODEC.encode("ObjectionEvent", EVENT), "Post")


def test_schemas_have_docs_on_every_field():
    for version in CODEC.current.values():
        raw = json.loads(version.text)
        assert raw.get("doc"), version.name
        assert all(f.get("doc") for f in raw["fields"]), version.name


@given(posts(), objections())
def test_user_id_is_read_from_the_record_prefix(post, event):
    assert CODEC.user_id_of(CODEC.encode("Post", post), "Post") == post["user_id"]
    assert (
        CODEC.user_id_of(CODEC.encode("ObjectionEvent", event), "ObjectionEvent")
        == (event["user_id"])
    )
    registry = Codec(SchemaRegistryClient.new_client({"url": "mock://codec-user-id"}))
    framed = registry.encode("Post", post, "posts")
    assert registry.user_id_of(framed, "Post") == post["user_id"]


def test_user_id_of_refuses_what_precedes_the_user_and_leaves_the_rest_to_decode():
    good = CODEC.encode("ObjectionEvent", EVENT)
    with pytest.raises(DecodeError, match="unknown schema fingerprint"):
        CODEC.user_id_of(SINGLE_OBJECT_MAGIC + b"\x01" * 8 + good[10:], "ObjectionEvent")
    with pytest.raises(DecodeError, match="expected a Post record"):
        CODEC.user_id_of(good, "Post")
    with pytest.raises(DecodeError, match="truncated ObjectionEvent datum"):
        CODEC.user_id_of(good[:13], "ObjectionEvent")
    # damage after the user id: re-keying routes it, the gate's full decode refuses it
    assert CODEC.user_id_of(good[:-2], "ObjectionEvent") == "u"
    with pytest.raises(DecodeError, match="truncated"):
        CODEC.decode(good[:-2], "ObjectionEvent")
