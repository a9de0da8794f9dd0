"""The re-keying stage's header on forwarded inputs, as the gate reads it back; what
counts as an enforceable post beyond its schema."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from streams.core import records
from streams.core.records import (
    KIND,
    KIND_OBJECTION,
    KIND_POST,
    REPLAY_ID,
    SOURCE,
    SRC_KEY,
    SRC_OFFSET,
    SRC_PARTITION,
    SRC_TOPIC,
    check_post_fields,
    forwarded,
    pack_source,
    source_prefix,
)
from streams.serde import codec
from streams.serde.codec import DecodeError

_own = st.lists(st.tuples(st.text(max_size=10), st.binary(max_size=10)), max_size=3)


@given(
    own=_own,
    kind=st.sampled_from([KIND_POST, KIND_OBJECTION]),
    topic=st.text(min_size=1, max_size=249),
    partition=st.integers(0, 2**31 - 1),
    offset=st.integers(0, 2**63 - 1),
    key=st.none() | st.binary(max_size=100),
)
def test_a_packed_source_reads_back_as_written(own, kind, topic, partition, offset, key):
    header = (SOURCE, pack_source(source_prefix(kind, topic, partition), offset, key))
    assert forwarded([*own, header]) == (own, kind, topic, partition, offset, key)


def test_the_five_headers_of_earlier_versions_still_read():
    headers = [
        ("trace", b"x"),
        (KIND, KIND_POST),
        (SRC_TOPIC, b"posts"),
        (SRC_PARTITION, b"2"),
        (SRC_OFFSET, b"41"),
        (SRC_KEY, b"u1"),
    ]
    assert forwarded(headers) == ([("trace", b"x")], KIND_POST, "posts", 2, 41, b"u1")


@given(value=st.binary(max_size=40))
def test_a_damaged_source_header_is_not_an_input(value):
    """Bytes that do not read as a SOURCE header make the record no input of the stage
    (the gate then sends it to the DLQ as a record of unknown kind), never an error."""
    result = forwarded([(SOURCE, value)])
    if result is not None:  # only what pack_source could have written reads
        _, kind, topic, partition, offset, key = result
        assert value == pack_source(source_prefix(kind, topic, partition), offset, key)


def test_other_internal_records_are_not_inputs():
    replay = [(KIND, b"replay"), (REPLAY_ID, b"r1"), (SRC_TOPIC, b"posts")]
    assert forwarded(replay) is None
    assert forwarded(None) is None
    assert forwarded([]) is None


@pytest.mark.parametrize("country", ["GB\n", "gb", "G", "GBR", "", "É1"])
def test_a_country_that_is_not_two_capital_letters_is_refused(country):
    with pytest.raises(DecodeError, match="alpha-2"):
        check_post_fields("p1", "u1", country)
    check_post_fields("p1", "u1", "GB")


@given(st.binary(max_size=70))
def test_murmur2_is_kafkas(data: bytes) -> None:
    # the core's own copy (it imports no Kafka client), as aiokafka and Java compute it
    assert records.murmur2(data) == aiokafka_murmur2(data)
    # Kafka's own test vector (UtilsTest): murmur2("21") == -973932308 as a Java int
    assert records.murmur2(b"21") == -973932308 & 0xFFFFFFFF


def test_the_codec_raises_the_cores_decode_error() -> None:
    assert codec.DecodeError is records.DecodeError
