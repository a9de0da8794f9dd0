"""The native fast path (``streams/_native.c``) must write exactly what the Python gate
writes: the same records in the same order, the same DLQ records, metrics and
offsets, for any batch of posts, objections, garbage and odd ids. No Kafka: the gate
runs over in-memory tables and a recording producer (``test_splice``)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streams.agents as agents
from streams import native
from streams.codec import OBJECTION, POST
from streams.policy import load_policy
from streams.records import KIND_OBJECTION, KIND_POST
from tests.unit.strategies import objections, policies, posts
from tests.unit.test_splice import CODEC, POST_RECORD, _gate, _message

pytestmark = pytest.mark.skipif(native._native is None, reason="the C extension is not built here")
NOW = 1_764_000_000_000


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch):
    """Both paths decide at the same millisecond (the fast path: ``fixed_now``)."""
    monkeypatch.setattr(agents, "_now_ms", lambda: NOW)


def _gate_with(use_native: bool, policy: Any, prepare: Any = None) -> tuple[Any, Any]:
    """A gate (``test_splice._gate``) deciding posts with or without the fast path,
    partition 0 starting at offset 0; ``prepare(out)`` first changes its recording
    producer (the fast path takes its methods when it is made)."""
    processor, out = _gate(True, policy)
    if prepare is not None:
        prepare(out)
    if use_native:
        processor._fast = native.make_fast_gate(processor)
        processor._fast.fixed_now = NOW
    else:
        processor._fast = False
    processor.offsets.start(0, 0)
    return processor, out


def _messages(inputs: list) -> list:
    """Internal records at offsets 0, 1, ... of ``inputs`` (kind, record or bytes, packed)."""
    messages = []
    for offset, (kind, record, packed) in enumerate(inputs):
        if isinstance(record, bytes):
            value, user = record, "u?"
        else:
            value = CODEC.encode(POST if kind == KIND_POST else OBJECTION, record)
            user = record["user_id"]
        messages.append(_message(kind, value, offset, user, packed))
    return messages


def _run(inputs: list, policy: Any, use_native: bool, batches: int = 3) -> tuple:
    """Process ``inputs`` in a few batches, settling the ledger between them as before a
    commit; everything the gate wrote and counted."""
    processor, out = _gate_with(use_native, policy)
    messages = _messages(inputs)
    size = max(1, len(messages) // batches)
    for start in range(0, len(messages), size):
        processor.process(messages[start : start + size])
        processor.ledger.settle()
    m = processor.metrics
    return (
        out.records,
        dict(m.decisions),
        dict(m.dlq),
        m.latency_counts,
        m.latency_n,
        processor.offsets.expected,
    )


_odd_ids = st.sampled_from(["", " ", " x", "x ", "\t", "é", "ü1", "\x1f", "a" * 1001, "b" * 400])
_odd_countries = st.sampled_from(["gb", "GB\n", "G", "GBR", "ZZ", "É1", "FR"])
_odd_posts = st.one_of(
    posts(post_id=_odd_ids | st.sampled_from(["p1", "p2"])),
    posts(user_id=_odd_ids),
    st.tuples(posts(), _odd_countries).map(lambda pc: {**pc[0], "author_country": pc[1]}),
)
_valid = CODEC.encode(POST, POST_RECORD)
_damaged = st.tuples(st.integers(10, len(_valid) - 1), st.integers(0, 255)).map(
    lambda ib: _valid[: ib[0]] + bytes([ib[1]]) + _valid[ib[0] + 1 :]
)
_garbage = st.one_of(
    _damaged,
    st.binary(max_size=40).map(lambda b: _valid[:10] + b),
    st.just(_valid[:-1]),
    st.just(_valid + b"\x00"),
)
_inputs = st.lists(
    st.tuples(
        st.one_of(
            posts(post_id=st.sampled_from(["p1", "p2", "p3"])).map(lambda p: (KIND_POST, p)),
            _odd_posts.map(lambda p: (KIND_POST, p)),
            objections().map(lambda e: (KIND_OBJECTION, e)),
            _garbage.map(lambda b: (KIND_POST, b)),
        ),
        st.booleans() | st.just(True),
    ).map(lambda kr_packed: (*kr_packed[0], kr_packed[1])),
    max_size=40,
)


@settings(max_examples=400, deadline=None)
@given(inputs=_inputs, policy=policies())
def test_the_native_fast_path_writes_what_the_python_gate_writes(inputs, policy):
    assert _run(inputs, policy, True) == _run(inputs, policy, False)


def test_the_fast_path_decides_current_posts_and_leaves_the_rest():
    policy = load_policy()
    objection = {
        "event_id": "e1",
        "user_id": "u1",
        "action": "OBJECT",
        "platform": None,
        "occurred_at": 1,
        "channel": "WEB_FORM",
    }
    inputs = [
        (KIND_POST, POST_RECORD, True),  # first of partition 0: the tables open in Python
        (KIND_POST, {**POST_RECORD, "post_id": "p2"}, True),  # published here
        (KIND_POST, {**POST_RECORD, "post_id": "p3", "visibility": "PRIVATE"}, True),  # blocked
        (KIND_OBJECTION, objection, True),  # Python: retracts p1 and p2
        (KIND_POST, {**POST_RECORD, "post_id": "p4"}, True),  # objected: blocked here
        (KIND_POST, POST_RECORD, True),  # p1 again: no longer live, blocked here
    ]
    processor, _ = _gate(True, policy)
    calls = []
    fallback = processor.process_one
    processor.process_one = lambda m: (calls.append(m.offset), fallback(m))
    processor._fast = native.make_fast_gate(processor)
    processor.offsets.start(0, 0)
    processor.process(_messages(inputs))
    assert calls == [0, 3]
    reasons = [(k, n) for k, n in sorted(processor.metrics.decisions.items())]
    assert reasons == [
        (("BLOCKED", "NOT_PUBLIC"), 1),
        (("BLOCKED", "OBJECTED"), 2),
        (("PUBLISHED", "ELIGIBLE"), 2),
        (("RETRACTED", "OBJECTED"), 2),
    ]
    assert processor.offsets.expected == {0: 6}
    assert processor.metrics.latency_n == 5  # posts only


def _refused_once(use_native: bool) -> tuple:
    """Two posts; the broker client refuses the second one's Decision (once)."""
    armed = []

    def refuse_decisions(topic: str) -> None:
        if topic == "enforcer-decisions" and armed:
            armed.clear()
            raise ValueError("refused")

    def refusing(out: Any) -> None:
        raw, produce = out.raw_produce, out.produce
        out.raw_produce = lambda t, v, k, p=None: (refuse_decisions(t), raw(t, v, k, p))
        out.produce = lambda t, k, v, p=None, headers=None: (
            refuse_decisions(t) if headers is None else None,
            produce(t, k, v, p, headers),
        )

    processor, out = _gate_with(use_native, load_policy(), refusing)
    first = _message(KIND_POST, CODEC.encode(POST, {**POST_RECORD, "post_id": "p0"}), 0, "u1")
    second = _message(KIND_POST, CODEC.encode(POST, POST_RECORD), 1, "u1")
    processor.process([first])  # opens the tables (Python)
    armed.append(True)
    processor.process([second])
    return out.records, dict(processor.metrics.dlq), processor.offsets.expected


def test_a_post_whose_outputs_fail_goes_to_the_dlq_as_in_python():
    """The broker client refusing a record (e.g. too large): the post is not decided
    twice and its offset counts as processed, with or without the fast path."""
    fast, python = _refused_once(True), _refused_once(False)
    assert fast == python
    assert [r[0] for r in fast[0]][-2:] == ["training-ingest", "enforcer-dlq"]
    assert fast[2] == {0: 2}


@given(st.binary(max_size=12))
def test_utf8_validation_agrees_with_python(data):
    try:
        data.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    assert native._native.utf8_valid(data) is valid


@pytest.mark.parametrize(
    "data",
    [
        b"\xc0\x80",  # overlong
        b"\xe0\x80\x80",
        b"\xed\xa0\x80",  # a surrogate
        b"\xf4\x90\x80\x80",  # beyond U+10FFFF
        b"\xf0\x9f\x98",  # truncated
        "é€😀".encode(),
        b"abcdefgh\xff",
        b"abcdefghijklmnop",
    ],
)
def test_utf8_validation_edge_cases(data):
    try:
        data.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    assert native._native.utf8_valid(data) is valid


def test_disabled_by_the_environment(monkeypatch):
    monkeypatch.setenv("ENFORCER_NATIVE", "0")
    assert not native.available()
    processor, out = _gate(True, load_policy())
    processor.offsets.start(0, 0)
    processor.process([_message(KIND_POST, _valid, 0, "u1")])
    assert processor._fast is False
    assert [r[0] for r in out.records][:2] == ["training-ingest", "enforcer-decisions"]
