"""Posts of the current schema are decided from their bytes (``Codec.scan``, outputs
spliced by ``Codec.splicer``): the gate must write exactly what decoding the post and
encoding its outputs writes, for any post, consent state, ledger and garbage. No Kafka:
the gate runs over in-memory tables and a recording producer."""

from __future__ import annotations

import bisect
from types import SimpleNamespace
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.enforcement import Source, _decision, training_record
from streams.core.policy import Outcome, Reason, load_policy
from streams.core.records import (
    KIND,
    KIND_OBJECTION,
    KIND_POST,
    SOURCE,
    SRC_KEY,
    SRC_OFFSET,
    SRC_PARTITION,
    SRC_TOPIC,
    pack_source,
    source_prefix,
)
from streams.gate import clock as gate_clock
from streams.gate.metrics import Metrics
from streams.gate.processor import Processor
from streams.serde.avro_compiled import compile_reader, compile_splice, compile_writer
from streams.serde.codec import DECISION, OBJECTION, POST, TRAINING_RECORD, Codec
from streams.settings import Settings
from streams.state.ledger import DIRTY_KEY, TableState
from tests.unit.strategies import objections, policies, posts

CODEC = Codec()
SCHEMA = {name: CODEC.schema(name) for name in (POST, TRAINING_RECORD, DECISION)}


@given(post=posts(), policy=policies(), now=st.integers(0, 2**42), offset=st.integers(0, 2**40))
def test_spliced_outputs_are_the_encoded_outputs(post, policy, now, offset):
    data = CODEC.encode(POST, post)
    values, starts = CODEC.scan(data, POST)
    assert values == tuple(CODEC.decode(data, POST)[1][n] for n in CODEC.field_names(POST))
    source = Source("posts", 3, offset)
    training = CODEC.splicer(POST, TRAINING_RECORD, "t")
    expected = CODEC.encode(TRAINING_RECORD, training_record(post, policy, now))
    assert training(data, starts, policy_version=policy.version, decided_at=now) == expected
    decision = CODEC.splicer(POST, DECISION, "d")
    record = _decision(
        post["post_id"], post["user_id"], Outcome.BLOCKED, Reason.MINOR, policy, now, source, None
    )
    fields = {k: v for k, v in record.items() if k not in ("post_id", "user_id")}
    assert decision(data, starts, **fields) == CODEC.encode(DECISION, record)


POST_RECORD = {
    "post_id": "p1",
    "user_id": "u1",
    "platform": "INSTAGRAM",
    "visibility": "PUBLIC",
    "author_country": "GB",
    "author_is_adult": True,
    "created_at": 1_764_000_000_000,
    "text": "hello",
    "media_urls": ["m"],
}


def test_scan_leaves_older_versions_to_decode_and_refuses_what_decode_refuses():
    post = POST_RECORD
    old = [v for v in CODEC.versions if v.name == POST and v.source != "Post.avsc"]
    if old:
        assert CODEC.scan(CODEC.encode_with(old[0], post), POST) is None
    data = CODEC.encode(POST, post)
    for damaged in (data[:-1], data + b"\x00", data[:10] + b"\x7f"):
        with pytest.raises(ValueError) as decoded:
            CODEC.decode(damaged, POST)
        with pytest.raises(ValueError) as scanned:
            CODEC.scan(damaged, POST)
        assert str(scanned.value) == str(decoded.value)


def test_splice_needs_target_fields_that_begin_as_copies_of_source_fields():
    post = SCHEMA[POST]
    renamed = {**post, "fields": [{**post["fields"][0], "name": "id"}, *post["fields"][1:]]}
    assert compile_splice(post, renamed) is None  # the first field is not copied
    retyped = {
        **SCHEMA[DECISION],
        "fields": [{"name": "post_id", "type": "bytes"}, *SCHEMA[DECISION]["fields"][1:]],
    }
    assert compile_splice(post, retyped) is None  # same name, another encoding
    keyword = {
        **SCHEMA[DECISION],
        "fields": [*SCHEMA[DECISION]["fields"], {"name": "from", "type": "int"}],
    }
    assert compile_splice(post, keyword) is None  # a field name that cannot be a parameter
    assert compile_splice(post, SCHEMA[TRAINING_RECORD]) is not None


def test_splice_of_a_synthetic_pair_agrees_with_the_writer():
    source = fastavro.parse_schema(
        {
            "type": "record",
            "name": "In",
            "fields": [
                {"name": "a", "type": "long"},
                {"name": "b", "type": ["null", "string"]},
                {"name": "skip", "type": "boolean"},
                {"name": "c", "type": {"type": "array", "items": "int"}},
            ],
        }
    )
    target = fastavro.parse_schema(
        {
            "type": "record",
            "name": "Out",
            "fields": [
                {"name": "a", "type": "long"},
                {"name": "b", "type": ["null", "string"]},
                {"name": "c", "type": {"type": "array", "items": "int"}},
                {"name": "extra", "type": "double"},
                {"name": "more", "type": ["null", "long"]},
            ],
        }
    )
    scan, splice, write = (
        compile_reader(source, scan=True),
        compile_splice(source, target),
        compile_writer(target),
    )
    record = {"a": -5, "b": "é", "skip": True, "c": [1, -2, 3]}
    data = compile_writer(source)(record)
    (values, starts), end = scan(data, 0)
    assert values == (-5, "é", True, [1, -2, 3]) and starts[-1] == end == len(data)
    out = splice(b"P", data, starts, extra=1.5, more=None)
    assert out == b"P" + write({"a": -5, "b": "é", "c": [1, -2, 3], "extra": 1.5, "more": None})


# -- the gate, with and without splicing ---------------------------------------------------


class MemoryDB(dict):
    """What ``TableState`` uses of a RocksDB partition."""

    def put(self, key: bytes, value: bytes) -> None:
        self[key] = value

    def delete(self, key: bytes) -> None:
        self.pop(key, None)

    def items(self, from_key: bytes = b""):  # type: ignore[override]
        keys = sorted(self)
        return [(k, self[k]) for k in keys[bisect.bisect_left(keys, from_key) :]]

    def delete_range(self, begin: bytes, end: bytes) -> None:
        for key in [k for k in self if begin <= k < end]:
            del self[key]


def contents(db: MemoryDB) -> dict[bytes, bytes]:
    """A table partition's entries, without the gate's mark of uncommitted writes."""
    return {key: value for key, value in db.items() if key != DIRTY_KEY}


class MemoryFaustTable:
    """A Faust table whose ``partitions`` are open (assigned and recovered)."""

    def __init__(self, partitions: int = 8) -> None:
        self.dbs: dict[int, MemoryDB] = {p: MemoryDB() for p in range(partitions)}
        self.data = SimpleNamespace(_dbs=self.dbs)


class Recorder:
    """An output producer that records what it is given."""

    changelog_offsets: dict = {}

    def __init__(self) -> None:
        self.records: list[tuple] = []

    def track_changelog(self, topic: str) -> None:
        pass

    def produce(self, topic, key, value, partition=None, headers=None) -> None:
        self.records.append((topic, key, value, partition, headers))

    def raw_produce(self, topic, value, key, partition=None) -> None:
        self.records.append((topic, key, value, partition, None))

    produce_when_room = produce

    def poll(self) -> None:
        pass


def _gate(splicing: bool, policy) -> tuple[Processor, Recorder]:
    out = Recorder()
    consent = TableState(MemoryFaustTable(), "consent-changelog", out)
    ledger = TableState(MemoryFaustTable(), "ledger-changelog", out)
    # one partition: every user belongs to it (the partition check has tests of its own)
    processor = Processor(
        None, Settings(partitions=1), policy, CODEC, consent, ledger, out, Metrics()
    )
    if not splicing:
        processor.posts.splices = False
    return processor, out


def _message(kind: bytes, value: bytes, offset: int, user: str, packed: bool = True) -> Any:
    """An internal record as the re-keying stage forwards it (``packed``), or as
    earlier versions did, in five headers."""
    topic = "posts" if kind == KIND_POST else "objections"
    if packed:
        ours = [(SOURCE, pack_source(source_prefix(kind, topic, 2), offset, user.encode()))]
    else:
        ours = [
            (KIND, kind),
            (SRC_TOPIC, topic.encode()),
            (SRC_PARTITION, b"2"),
            (SRC_OFFSET, str(offset).encode()),
            (SRC_KEY, user.encode()),
        ]
    return SimpleNamespace(
        topic="user-events",
        partition=0,
        offset=offset,
        key=user.encode(),
        value=value,
        headers=[("trace", b"x"), *ours],
        timestamp=1_000,
    )


_garbage = st.one_of(
    st.binary(max_size=40).map(lambda b: CODEC.encode(POST, POST_RECORD)[:10] + b),
    st.binary(max_size=30),
)
_inputs = st.lists(
    st.one_of(
        posts(post_id=st.sampled_from(["p1", "p2", "p3"])).map(lambda p: (KIND_POST, p)),
        objections().map(lambda e: (KIND_OBJECTION, e)),
        _garbage.map(lambda b: (KIND_POST, b)),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(inputs=_inputs, policy=policies())
def test_the_gate_writes_the_same_bytes_with_and_without_splicing(inputs, policy):
    """Every output record, changelog record and DLQ record, in the same order."""
    runs = []
    for splicing in (True, False):
        processor, out = _gate(splicing, policy)
        for offset, (kind, record) in enumerate(inputs):
            if isinstance(record, bytes):
                value, user = record, "u?"
            else:
                value = CODEC.encode(POST if kind == KIND_POST else OBJECTION, record)
                user = record["user_id"]
            processor.gate(_message(kind, value, offset, user))
            processor.ledger.settle()  # as before a commit
        runs.append((out.records, processor.metrics.decisions, processor.metrics.dlq))
    assert runs[0] == runs[1]


def test_inputs_forwarded_in_five_headers_by_earlier_versions_give_the_same_records():
    """Records an earlier version left on the internal topic (an upgrade mid-stream):
    decisions, outputs and DLQ records as for the packed header."""
    runs = []
    for packed in (True, False):
        processor, out = _gate(True, load_policy())
        post = CODEC.encode(POST, POST_RECORD)
        processor.gate(_message(KIND_POST, post, 0, "u1", packed))
        processor.gate(_message(KIND_POST, post[:12], 1, "u1", packed))  # to the DLQ
        runs.append(out.records)
    assert [r[0] for r in runs[0]] == [
        "ledger-changelog",  # in the ledger before it is published
        Settings().training_topic,
        Settings().decisions_topic,
        Settings().dlq_topic,
    ]
    assert runs[0] == runs[1]


def test_splicing_is_used_for_current_posts():
    processor, out = _gate(True, load_policy())
    processor.gate(_message(KIND_POST, CODEC.encode(POST, POST_RECORD), 0, "u1"))
    assert processor.posts.splices not in (None, False)
    ledger, (topic, key, value, _, _), decision = out.records[:3]
    assert ledger[0] == "ledger-changelog"
    assert (topic, key) == ("training-ingest", b"p1")
    assert CODEC.decode(value, TRAINING_RECORD)[1]["text"] == "hello"
    assert CODEC.decode(decision[2], DECISION)[1]["outcome"] == "PUBLISHED"


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch):
    """Both runs of a comparison decide at the same millisecond."""
    monkeypatch.setattr(gate_clock, "now_ms", lambda: 1_764_000_000_000)
