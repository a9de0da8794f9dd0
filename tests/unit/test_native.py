"""The native fast path (``streams/gate/_native.c``) must write exactly what the Python gate
writes: the same records in the same order, the same DLQ records, table entries,
metrics, offsets and repositioning requests, for any batch of posts (adversarially
encoded ones too), objections, garbage and odd ids, over several partitions with gaps
and re-reads; the reference is the gate that decodes every post and encodes its
outputs. A failed write is handled as in Python. ``make sanitize`` runs these tests
against a build with AddressSanitizer and UndefinedBehaviorSanitizer. No Kafka: the
gate runs over in-memory tables and a recording producer (``test_splice``)."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.core import records
from streams.core.policy import load_policy
from streams.core.records import KIND_OBJECTION, KIND_POST, partition_for_user
from streams.gate import clock as gate_clock
from streams.gate import native
from streams.gate import posts as gate_posts
from streams.serde.codec import OBJECTION, POST
from tests.unit.strategies import objections, policies, posts
from tests.unit.test_avro_adversarial import DECIDABLE, post_encodings
from tests.unit.test_splice import CODEC, POST_RECORD, MemoryDB, _gate, _message, contents

pytestmark = pytest.mark.skipif(native._native is None, reason="the C extension is not built here")
NOW = 1_764_000_000_000


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch):
    """Both paths decide at the same millisecond (the fast path: ``fixed_now``)."""
    monkeypatch.setattr(gate_clock, "now_ms", lambda: NOW)


def _gate_with(use_native: bool, policy: Any, prepare: Any = None) -> tuple[Any, Any]:
    """A gate (``test_splice._gate``) deciding posts with or without the fast path,
    partition 0 starting at offset 0; ``prepare(out)`` first changes its recording
    producer (the fast path takes its methods when it is made)."""
    processor, out = _gate(True, policy)
    if prepare is not None:
        prepare(out)
    if use_native:
        processor.fast_path.gate = native.make_fast_gate(processor)
        processor.fast_path.gate.fixed_now = NOW
    else:
        processor.fast_path.gate = False
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


# -- against the decode path: partitions, gaps, repositioning, adversarial bytes -------

USERS = ("u1", "u2", "u3", "u4", "u5")


class Clock:
    """``time`` as gate/clock.py uses it, with a monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return NOW / 1000


@st.composite
def _values(draw) -> tuple[bytes, bytes, str]:
    """One internal record's kind, value and user: posts (plain, odd, adversarially
    encoded), objections, garbage."""
    choice = draw(st.sampled_from([0, 0, 0, 1, 2, 2, 3, 4, 4, 5]))
    if choice == 0:
        record = draw(posts(user_id=st.sampled_from(USERS), post_id=st.sampled_from(["p1", "p2"])))
    elif choice == 1:
        record = draw(_odd_posts)
    elif choice in (2, 3):  # decidable, or anything
        enc = draw(post_encodings(DECIDABLE if choice == 2 else None))
        user = enc.record.get("user_id")
        return KIND_POST, bytes(enc.out), user if isinstance(user, str) and user else "u?"
    elif choice == 4:
        event = draw(objections(user_id=st.sampled_from(USERS)))
        return KIND_OBJECTION, CODEC.encode(OBJECTION, event), event["user_id"]
    else:
        return KIND_POST, draw(_garbage), "u?"
    return KIND_POST, CODEC.encode(POST, record), record["user_id"]


@st.composite
def _deliveries(draw, n: int) -> list[int]:
    """The order in which a consumer delivers a partition's ``n`` records: mostly the
    next; sometimes one further on (a gap: the gate asks for a reposition, and the
    records come again from the one expected), or earlier ones again (a re-read)."""
    out: list[int] = []
    i = 0
    while i < n and len(out) < 3 * n:
        step = draw(st.integers(0, 19))
        if step < 16:
            out.append(i)
            i += 1
        elif step < 18:
            out.append(min(n - 1, i + draw(st.integers(1, 3))))
        else:
            i = max(0, i - draw(st.integers(1, 2)))
    return out


@st.composite
def _traffic(draw) -> tuple:
    """Several partitions' records as a consumer delivers them, in batches."""
    partitions = draw(st.integers(1, 4))
    values = draw(
        st.lists(st.tuples(_values(), st.booleans(), st.integers(0, 19)), min_size=5, max_size=50)
    )
    logs: dict[int, list] = {p: [] for p in range(partitions)}
    for (kind, value, user), packed, route in values:
        home = partition_for_user(user.encode(), partitions)
        partition = home if route < 18 else (home + route) % partitions  # rarely another's
        logs[partition].append((kind, value, user, packed))
    starts = {p: draw(st.sampled_from([0, 5, 2**40])) for p in logs}
    unknown = draw(st.sampled_from([None] * 20 + list(logs)))  # a start not looked up yet
    queues = {p: [(i, logs[p][i]) for i in draw(_deliveries(len(logs[p])))] for p in logs}
    delivered = []
    while any(queues.values()):
        p = draw(st.sampled_from([p for p, q in queues.items() if q]))
        i, (kind, value, user, packed) = queues[p].pop(0)
        message = _message(kind, value, starts[p] + i, user, packed)
        message.partition = p
        delivered.append(message)
    cuts = sorted(draw(st.sets(st.integers(0, len(delivered)), max_size=4)))
    batches = [delivered[a:b] for a, b in zip([0, *cuts], [*cuts, len(delivered)], strict=True)]
    pauses = draw(st.lists(st.sampled_from([0.0, 1.0, 6.0]), min_size=len(batches)))
    return partitions, starts, unknown, batches, pauses


def _decided(path: str, traffic: tuple, policy: Any, max_post_bytes: int) -> tuple:
    """Everything a gate wrote, counted and asked for over ``traffic``; ``path``: "native"
    (the fast path), "splice" (Python, splicing) or "decode" (Python, every post decoded
    and its outputs encoded: the reference)."""
    partitions, starts, unknown, batches, pauses = traffic
    clock = Clock()
    saved = gate_clock.time
    gate_clock.time = clock  # type: ignore[assignment]
    try:
        processor, out = _gate(path != "decode", policy)
        processor.settings = replace(processor.settings, partitions=partitions)
        processor.max_post_bytes = max_post_bytes
        asked: list = []
        processor.positions.reposition = lambda partition, offset: asked.append((partition, offset))
        processor.fast_path.gate = native.make_fast_gate(processor) if path == "native" else False
        if path == "native":
            processor.fast_path.gate.fixed_now = NOW
        for p, start in starts.items():
            if p != unknown:
                processor.offsets.start(p, start)
        for batch, pause in zip(batches, pauses, strict=False):
            processor.process(batch)
            processor.ledger.settle()  # as before a commit
            clock.now += pause
            processor.positions.retry()
    finally:
        gate_clock.time = saved
    m = processor.metrics
    return (
        out.records,
        dict(m.decisions),
        dict(m.dlq),
        m.latency_counts,
        m.latency_n,
        processor.offsets.expected,
        asked,
        processor.positions.repositioning,
        {p: contents(db) for p, db in processor.ledger.state._open.items() if contents(db)},
        {p: contents(db) for p, db in processor.consent._open.items() if contents(db)},
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    traffic=_traffic(),
    policy=policies(),
    max_post_bytes=st.sampled_from([1_000_000] * 3 + [60, 90]),
)
def test_the_native_fast_path_writes_what_decoding_every_post_writes(
    traffic, policy, max_post_bytes
):
    """The reference is the gate that decodes every post and encodes its outputs;
    the fast path and splicing must write the same records, DLQ records, table
    entries, metrics, offsets and repositioning requests."""
    reference = _decided("decode", traffic, policy, max_post_bytes)
    assert _decided("native", traffic, policy, max_post_bytes) == reference
    assert _decided("splice", traffic, policy, max_post_bytes) == reference


def test_the_fast_path_computes_the_partition_of_a_user_as_java_does():
    """Murmur2 of the user id's bytes, as records.partition_for_user: every post of a
    user of the partition it arrived on is decided in C, every other one in Python."""
    processor, _ = _gate(True, load_policy())
    processor.settings = replace(processor.settings, partitions=7)
    users = [f"user-{i}" + "x" * (i % 5) for i in range(150)] + ["aé", "xü1", "u😀", "a" * 999]
    calls = []
    fallback = processor.process_one
    processor.process_one = lambda m: (calls.append((m.partition, m.offset)), fallback(m))
    processor.fast_path.gate = native.make_fast_gate(processor)
    expected, messages = [], []
    for p in range(7):
        processor.offsets.start(p, 0)
    offsets = dict.fromkeys(range(7), 0)
    for user in users:
        home = partition_for_user(user.encode(), 7)
        for p in (home, (home + 3) % 7):
            value = CODEC.encode(POST, {**POST_RECORD, "user_id": user})
            message = _message(KIND_POST, value, offsets[p], user)
            message.partition = p
            offsets[p] += 1
            messages.append(message)
            if p != home:
                expected.append((p, message.offset))
    processor.process(messages)
    assert calls == expected
    assert processor.metrics.dlq == {"posts": len(users)}


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
        (KIND_POST, POST_RECORD, True),  # published here
        (KIND_POST, {**POST_RECORD, "post_id": "p2"}, True),  # published here
        (KIND_POST, {**POST_RECORD, "post_id": "p3", "visibility": "PRIVATE"}, True),  # blocked
        (KIND_OBJECTION, objection, True),  # Python: retracts p1 and p2
        (KIND_POST, {**POST_RECORD, "post_id": "p4"}, True),  # objected: blocked here
        (KIND_POST, POST_RECORD, True),  # p1 again: no longer live, blocked here
        (KIND_POST, {**POST_RECORD, "visibility": "PRIVATE"}, True),  # live: Python retracts
    ]
    processor, _ = _gate(True, policy)
    calls = []
    fallback = processor.process_one
    processor.process_one = lambda m: (calls.append(m.offset), fallback(m))
    processor.fast_path.gate = native.make_fast_gate(processor)
    processor.offsets.start(0, 0)
    processor.process(_messages(inputs[:6]))
    assert calls == [3]
    reasons = [(k, n) for k, n in sorted(processor.metrics.decisions.items())]
    assert reasons == [
        (("BLOCKED", "NOT_PUBLIC"), 1),
        (("BLOCKED", "OBJECTED"), 2),
        (("PUBLISHED", "ELIGIBLE"), 2),
        (("RETRACTED", "OBJECTED"), 2),
    ]
    assert processor.offsets.expected == {0: 6}
    assert processor.metrics.latency_n == 5  # posts only


def test_the_fast_path_leaves_other_partitions_users_and_posts_too_large_to_python():
    """Before any side effect: the Python gate dead-letters both."""
    processor, out = _gate(True, load_policy())
    processor.settings = replace(processor.settings, partitions=8)
    processor.max_post_bytes = 200
    calls = []
    fallback = processor.process_one
    processor.process_one = lambda m: (calls.append((m.partition, m.offset)), fallback(m))
    processor.fast_path.gate = native.make_fast_gate(processor)
    home = partition_for_user(b"u1", 8)
    processor.offsets.start(home, 0)
    processor.offsets.start((home + 1) % 8, 0)
    post = CODEC.encode(POST, POST_RECORD)
    big = CODEC.encode(POST, {**POST_RECORD, "text": "x" * 200})
    messages = [
        _at(_message(KIND_POST, post, 0, "u1"), home),  # decided here
        _at(_message(KIND_POST, post, 0, "u1"), (home + 1) % 8),  # another partition's user
        _at(_message(KIND_POST, big, 1, "u1"), home),  # too large
        _at(_message(KIND_POST, post, 2, "u1"), home),  # decided here
    ]
    processor.process(messages)
    assert calls == [((home + 1) % 8, 0), (home, 1)]
    dlq = [dict(r[4])["error"] for r in out.records if r[0] == "enforcer-dlq"]
    assert [e.split(b":")[0] for e in dlq] == [
        b"record of a user of partition %d arrived on partition %d" % (home, (home + 1) % 8),
        b"record too large",
    ]


def _at(message: Any, partition: int) -> Any:
    message.partition = partition
    return message


class OutputFailed(SystemExit):
    """What ``output_failed`` raises in these tests instead of exiting the process."""


class FailingDB(MemoryDB):
    """A RocksDB partition whose writes fail while ``armed``."""

    armed = False

    def put(self, key: bytes, value: bytes) -> None:
        if self.armed:
            raise OSError("disk full")
        super().put(key, value)


def _failing(path: str, at: str, exits: bool) -> tuple:
    """Three posts (the second published, or blocked if ``at`` ends in "blocked"), the
    second meeting a failure ``at`` one point of its writes: the ledger's RocksDB, the
    ledger's changelog, training-ingest or the decisions topic. ``path``: "native",
    "splice" or "decode". ``exits``: output_failed raises, as the exit it is."""
    failed: list = []

    def fail(topic: str) -> None:
        if armed and topic == at.split()[0]:
            raise ValueError("refused")

    def refusing(out: Any) -> None:
        raw, produce = out.raw_produce, out.produce
        out.raw_produce = lambda t, v, k, p=None: (fail(t), raw(t, v, k, p))
        out.produce = lambda t, k, v, p=None, headers=None: (
            fail(t) if headers is None else None,
            produce(t, k, v, p, headers),
        )

    processor, out = _gate(path != "decode", load_policy())
    refusing(out)
    db = processor.ledger.state._open[0] = FailingDB()

    def output_failed(message: Any, exc: BaseException) -> None:
        failed.append((message.offset, type(exc).__name__))
        if exits:
            raise OutputFailed(70)

    processor.emitter.output_failed = output_failed
    processor.fast_path.gate = native.make_fast_gate(processor) if path == "native" else False
    if path == "native":
        processor.fast_path.gate.fixed_now = NOW
    processor.offsets.start(0, 0)
    second = {**POST_RECORD, "visibility": "PRIVATE"} if at.endswith("blocked") else POST_RECORD
    posts = [{**POST_RECORD, "post_id": "p0"}, second, {**POST_RECORD, "post_id": "p2"}]
    messages = [_message(KIND_POST, CODEC.encode(POST, p), i, "u1") for i, p in enumerate(posts)]
    armed = False
    processor.process(messages[:1])
    armed = True
    db.armed = at == "rocksdb"
    with contextlib.suppress(OutputFailed):
        processor.process(messages[1:2])
    armed = db.armed = False
    if not (exits and failed):
        processor.process(messages[2:])
    m = processor.metrics
    return (
        out.records,
        dict(m.decisions),
        dict(m.dlq),
        m.latency_n,
        processor.offsets.expected,
        failed,
        contents(db),
    )


_POST = ["ledger-changelog", "training-ingest", "enforcer-decisions"]  # a published one's
# where the second post's writes fail: (topics written for the three posts, with
# output_failed raising and returning; ledger entries, the same)
_FAILURES = {
    "rocksdb": ([*_POST, "enforcer-dlq", *_POST],) * 2 + ((2, 2),),
    "ledger-changelog": ([*_POST, "enforcer-dlq", *_POST],) * 2 + ((3, 3),),
    "training-ingest": (
        [*_POST, "ledger-changelog"],
        [*_POST, "ledger-changelog", *_POST],
        (2, 3),
    ),
    "enforcer-decisions": (
        [*_POST, "ledger-changelog", "training-ingest"],
        [*_POST, "ledger-changelog", "training-ingest", *_POST],
        (2, 3),
    ),
    "enforcer-decisions blocked": (_POST, [*_POST, *_POST], (1, 2)),
}


@pytest.mark.parametrize("exits", [True, False])
@pytest.mark.parametrize("at", sorted(_FAILURES))
def test_a_post_whose_writes_fail_is_handled_as_in_python(at, exits):
    """A failure before the post's first output record (its ledger write): the DLQ, as
    nothing was published. After it: ``output_failed`` (the worker exits 70), never a
    DLQ record. The same with the fast path, with splicing and with decoding."""
    native_run = _failing("native", at, exits)
    assert native_run == _failing("splice", at, exits)
    assert native_run == _failing("decode", at, exits)
    records, _, dlq, _, offsets, failed, ledger = native_run
    exited, returned, entries = _FAILURES[at]
    before = at in ("rocksdb", "ledger-changelog")
    assert [r[0] for r in records] == (exited if exits else returned)
    assert len(ledger) == entries[0 if exits else 1]
    assert failed == ([] if before else [(1, "ValueError")])
    assert dlq == ({"posts": 1} if before else {})
    assert offsets == {0: 2 if exits and not before else 3}


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
    assert processor.fast_path.gate is False
    assert [r[0] for r in out.records] == _POST


# -- the Post layout, and the C side's own check of the kinds it indexes by ---------------


def test_one_post_layout_feeds_both_paths():
    assert gate_posts.POST_FIELDS is records.POST_FIELDS
    assert native.PICKED_KINDS is records.POST_FIELD_KINDS
    assert len(records.POST_FIELDS) == len(records.POST_FIELD_KINDS) == 6


def _fast_gate_parts(monkeypatch) -> tuple:
    """The arguments ``make_fast_gate`` gives ``_native.FastGate`` for a working gate."""
    real, given = native._native, []

    class Capturing:
        @staticmethod
        def FastGate(*parts):
            given.append(parts)
            return real.FastGate(*parts)

    monkeypatch.setattr(native, "_native", Capturing)
    native.make_fast_gate(_gate(True, load_policy())[0])
    monkeypatch.setattr(native, "_native", real)
    return given[0]


# roles: post id, user id, platform, visibility, country, adult (records.POST_LAYOUT)
PLATFORM, VISIBILITY, ADULT = 2, 3, 5


@pytest.mark.parametrize(
    ("role", "kind", "why"),
    [
        (PLATFORM, 99, "out of range"),
        (VISIBILITY, -1, "out of range"),
        (ADULT, 1 << 20, "out of range"),
        (PLATFORM, native._KINDS["int"], "not the one it is read as"),
        (ADULT, native._KINDS["enum"], "not the one it is read as"),
    ],
)
def test_the_c_side_refuses_a_kind_it_would_index_by(role, kind, why, monkeypatch):
    parts = _fast_gate_parts(monkeypatch)
    native._native.FastGate(*parts)  # as given: accepted
    schema = list(parts[0])
    kinds = list(schema[3])
    kinds[role] = kind
    schema[3] = tuple(kinds)
    with pytest.raises(ValueError, match=why):
        native._native.FastGate(tuple(schema), *parts[1:])


@pytest.mark.parametrize("kind", [99, -1, native._KINDS["int"]])
def test_the_c_side_refuses_a_picked_field_of_another_kind(kind, monkeypatch):
    parts = _fast_gate_parts(monkeypatch)
    schema = list(parts[0])
    program = list(schema[1])
    program[schema[2][PLATFORM]] = (kind, 0, 0, 0)  # the platform field, in the schema
    schema[1] = tuple(program)
    with pytest.raises(ValueError, match="kind"):
        native._native.FastGate(tuple(schema), *parts[1:])


def test_a_set_up_the_c_side_refuses_leaves_posts_to_python(monkeypatch):
    monkeypatch.setitem(native._KINDS, "enum", 99)  # the program's enums out of range
    processor, out = _gate(True, load_policy())
    with pytest.raises(native.Unsupported, match="refused its set-up"):
        native.make_fast_gate(processor)
    processor.offsets.start(0, 0)
    processor.process([_message(KIND_POST, _valid, 0, "u1")])
    assert processor.fast_path.gate is False
    assert [r[0] for r in out.records] == _POST
