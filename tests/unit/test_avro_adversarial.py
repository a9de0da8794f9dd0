"""Adversarial Avro encodings: what the enforcer's readers accept, and what it copies.

Avro has more than one encoding of a value (a varint may be longer than it needs to
be, an array may come in several blocks), and fastavro reads more than the
specification allows (varints of any length, ints beyond 32 bits). Java's reader, which
consumes ``training-ingest``, refuses an int of more than 5 bytes or 32 bits and a
long of more than 10 bytes or 64 bits. So: the compiled readers accept exactly the
encodings the specification and Java's reader allow (an int is at most 5 bytes and 32
bits, a long 10 bytes and 64 bits; enum and union indexes and string and bytes lengths
are ints, array block counts and sizes longs; indexes in range, lengths neither
negative nor past the end); whatever they accept reads as fastavro reads it; and the
scanning reader, whose bytes are spliced into outputs, accepts only the canonical
encoding (fastavro's encoding of the decoded record), as does the C fast path's
scanner. Everything else is decoded and encoded anew, or refused (a ``DecodeError``:
the DLQ). No Kafka."""

from __future__ import annotations

import io
import math
import re
import struct
from dataclasses import dataclass, field
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.core.enforcement import Source, _decision, training_record
from streams.core.policy import Outcome, Reason, load_policy
from streams.gate import native
from streams.serde.avro_compiled import (
    NonCanonical,
    _kind,
    _named_enums,
    compile_reader,
    compile_writer,
    definition,
)
from streams.serde.codec import (
    DECISION,
    POST,
    SINGLE_OBJECT_MAGIC,
    TRAINING_RECORD,
    Codec,
    DecodeError,
)
from tests.unit.test_avro_compiled import EVERY_KIND

CODEC = Codec()
INT, LONG = 32, 64
MAX_BYTES = {INT: 5, LONG: 10}

# -- an encoder that may write any encoding, valid or not ----------------------------


class Broken(Exception):
    """The encoding ends here, invalid (a length goes past its end)."""


@dataclass
class Encoding:
    """Bytes being written, whether they are valid Avro (the specification's and Java's
    limits) and whether they are the canonical encoding of ``record``."""

    draw: Any
    out: bytearray = field(default_factory=bytearray)
    valid: bool = True
    canonical: bool = True
    record: dict = field(default_factory=dict)
    strings: dict = field(default_factory=dict)  # field name -> strategy of its strings
    noise: tuple[int, int, int] = (32, 37, 40)  # roll(): below [0] plain, [1] odd, else bad
    current: str = ""  # the field being written

    def roll(self) -> str:
        """Most often "plain"; sometimes "odd" (valid, not canonical) or "bad"."""
        plain, odd, top = self.noise
        n = self.draw(st.integers(0, top - 1))
        return "plain" if n < plain else "odd" if n < odd else "bad"

    def bad(self, data: bytes = b"") -> None:
        """Write invalid bytes (a reader refuses them, whatever follows: the rest of the
        record is written as if they were not, for readers that would read on)."""
        self.out += data
        self.valid = False

    def varint(self, z: int, bits: int, form: str | None = None) -> None:
        """A zigzagged value ``z`` of an int or a long (``bits``); ``form``: "plain"
        (minimal), "odd" (longer than needed, within the limit), "bad" (longer than
        the limit, or a value beyond ``bits``)."""
        form = form or self.roll()
        limit = MAX_BYTES[bits]
        if form == "bad":
            if self.draw(st.booleans()):  # too many bytes, for the value meant
                self.bad(_varint(z, self.draw(st.integers(max(limit + 1, _size(z)), 13))))
            else:  # a value beyond the type's bits, in no more bytes than allowed
                self.bad(_varint(self.draw(st.integers(1 << bits, (1 << (7 * limit)) - 1)), limit))
            return
        assert not z >> bits, z
        size = _size(z)
        if form == "odd" and size < limit:
            self.canonical = False
            self.out += _varint(z, self.draw(st.integers(size + 1, limit)))
        else:
            self.out += _varint(z, size)

    def int_(self, n: int, bits: int = INT, form: str | None = None) -> None:
        self.varint((n << 1) ^ (n >> (bits - 1)), bits, form)


def _size(z: int) -> int:
    return max(1, (z.bit_length() + 6) // 7)


def _varint(z: int, length: int) -> bytes:
    """``z`` in ``length`` 7-bit groups (at least as many as it needs), low first."""
    groups = [(z >> (7 * i)) & 0x7F for i in range(length)]
    assert z >> (7 * length) == 0
    return bytes(g | 0x80 for g in groups[:-1]) + bytes(groups[-1:])


_INTS = st.sampled_from([0, -1, 1, 63, -64, 64, 2**31 - 1, -(2**31)]) | st.integers(
    -(2**31), 2**31 - 1
)
_LONGS = st.sampled_from([0, -1, 2**31, -(2**31) - 1, 2**63 - 1, -(2**63), 2**62]) | st.integers(
    -(2**63), 2**63 - 1
)
_TEXT = st.text(max_size=12) | st.sampled_from(["é", "😀", "a" * 70])


def _write_simple(enc: Encoding, kind: str, node: Any, named: dict) -> Any:
    """Write one value of a non-union, non-array kind; return the value it holds."""
    draw = enc.draw
    if kind == "null":
        return None
    if kind == "boolean":
        if enc.roll() == "bad":
            enc.bad(bytes([draw(st.integers(2, 255))]))
            return None
        value = draw(st.booleans())
        enc.out.append(int(value))
        return value
    if kind in ("int", "long"):
        bits = INT if kind == "int" else LONG
        value = draw(_INTS if kind == "int" else _LONGS)
        enc.int_(value, bits)
        return value
    if kind in ("float", "double"):
        fmt = "<f" if kind == "float" else "<d"
        if enc.roll() == "odd":  # a NaN, with any payload: fastavro may not keep its bits
            enc.canonical = False
            if kind == "float":
                raw = struct.pack("<I", 0x7F800000 | draw(st.integers(1, 0x7FFFFF)))
            else:
                raw = struct.pack("<Q", 0x7FF0000000000000 | draw(st.integers(1, 2**52 - 1)))
            enc.out += raw
            return math.nan
        value = draw(st.floats(width=32 if kind == "float" else 64, allow_nan=False))
        enc.out += struct.pack(fmt, value)
        return value
    if kind in ("string", "bytes"):
        if kind == "string":
            value = draw(enc.strings.get(enc.current, _TEXT))
            data = value.encode()
        else:
            value = data = draw(st.binary(max_size=12))
        form = enc.roll()
        if form == "bad":
            how = draw(st.sampled_from(["varint", "negative", "past the end", "utf-8"]))
            if how == "negative":
                enc.int_(-draw(st.integers(1, 2**31)), INT)
                enc.bad()
                return None
            if how == "past the end":  # nothing follows: the length goes beyond the end
                enc.int_(len(data) + draw(st.integers(1, 2**31 - 1 - len(data))), INT)
                enc.bad(data)
                raise Broken
            if how == "utf-8" and kind == "string":
                enc.int_(len(data) + 1, INT)
                enc.bad(data + b"\xff")
                return None
        enc.int_(len(data), INT, form)  # "bad": the length's varint
        enc.out += data
        return value
    if kind == "enum":
        symbols = definition(node, named)["symbols"]
        form = enc.roll()
        if form == "bad" and draw(st.booleans()):  # an index out of range
            enc.int_(draw(st.sampled_from([len(symbols), -1, 2**31 - 1, -(2**31)])), INT)
            enc.bad()
            return None
        index = draw(st.integers(0, len(symbols) - 1))
        enc.int_(index, INT, form)
        return symbols[index]
    raise AssertionError(kind)


def _write_field(enc: Encoding, node: Any, named: dict) -> Any:
    draw = enc.draw
    kind = _kind(node, named)
    if kind == "union":
        null = node.index("null")
        form = enc.roll()
        if form == "bad" and draw(st.booleans()):
            enc.int_(draw(st.sampled_from([2, -1, 2**31 - 1])), INT)
            enc.bad()
            return None
        branch = draw(st.integers(0, 1))
        enc.int_(branch, INT, form)
        if branch == null:
            return None
        other = node[1 - null]
        return _write_simple(enc, _kind(other, named), other, named)
    if kind == "array":
        items_node = definition(node, named)["items"]
        items_kind = _kind(items_node, named)
        n = draw(st.integers(0, 4))
        blocks = []  # each: (encoded items, their values)
        values: list = []
        for _ in range(n):
            before = len(enc.out)
            try:
                values.append(_write_simple(enc, items_kind, items_node, named))
            except Broken:  # the array's count, the items before, the broken one
                enc.out[before:before] = _varint(2 * n, _size(2 * n)) + b"".join(blocks)
                raise
            blocks.append(bytes(enc.out[before:]))
            del enc.out[before:]
        noisy = enc.noise[0] < enc.noise[2]
        split = noisy and n > 1 and draw(st.integers(0, 3)) == 0  # several blocks
        sizes = noisy and n > 0 and draw(st.integers(0, 7)) == 0  # negative counts
        cuts = sorted(draw(st.sets(st.integers(1, n - 1), min_size=1))) if split else []
        start = 0
        for end in [*cuts, n] if n else []:
            chunk = b"".join(blocks[start:end])
            if sizes:
                enc.int_(-(end - start), LONG)
                enc.int_(len(chunk), LONG)
            else:
                enc.int_(end - start, LONG)
            enc.out += chunk
            start = end
        if cuts or sizes:
            enc.canonical = False
        enc.int_(0, LONG)
        return values
    return _write_simple(enc, kind, node, named)


@st.composite
def encodings(draw, schema: dict, strings: dict | None = None) -> Encoding:
    """Some encoding of a record of a flat ``schema``: valid or not, canonical or not;
    ``strings``: the strategy of a string field's values, by name."""
    named = _named_enums(schema["fields"], {})
    # often one odd or bad thing at most, so that each one is met alone
    noise = draw(st.sampled_from([(32, 37, 40), (96, 98, 100), (1, 1, 1)]))
    enc = Encoding(draw, strings=strings or {}, noise=noise)
    try:
        for f in schema["fields"]:
            enc.current = f["name"]
            enc.record[f["name"]] = _write_field(enc, f["type"], named)
        if enc.out and draw(st.integers(0, 29)) == 0:  # cut short
            del enc.out[draw(st.integers(0, len(enc.out) - 1)) :]
            enc.valid = False
    except Broken:
        pass
    if not enc.valid:
        enc.canonical = False
    return enc


def _same(a: Any, b: Any) -> bool:
    """Equal, a NaN equal to a NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


def _fastavro_bytes(schema: dict, record: dict) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


def _fastavro_read(schema: dict, data: bytes) -> tuple[dict, int]:
    buf = io.BytesIO(data)
    return fastavro.schemaless_reader(buf, schema, None), buf.tell()


# -- the compiled readers, for every kind they handle --------------------------------

SCHEMAS = {**{name: v.parsed for name, v in CODEC.current.items()}, "EveryKind": EVERY_KIND}
READERS = {name: (compile_reader(s), compile_reader(s, scan=True)) for name, s in SCHEMAS.items()}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_readers_accept_exactly_the_valid_encodings_and_scan_only_canonical_ones(name, data):
    schema = SCHEMAS[name]
    enc = data.draw(encodings(schema))
    raw = bytes(enc.out)
    read, scan = READERS[name]
    if enc.valid:
        record, end = read(raw, 0)
        assert end == len(raw)
        assert _same(record, enc.record)
        assert _same(_fastavro_read(schema, raw), (record, end))  # as fastavro reads it
    else:
        with pytest.raises((ValueError, EOFError)):
            read(raw, 0)
    try:
        (values, starts), end = scan(raw, 0)
    except NonCanonical:
        assert not enc.canonical
        return
    except (ValueError, EOFError):
        assert not enc.valid
        return
    assert enc.valid and enc.canonical and end == len(raw)
    assert _same(values, tuple(enc.record.values()))
    # canonical: the bytes are fastavro's encoding of what they hold, field by field
    assert raw == _fastavro_bytes(schema, enc.record)
    assert starts[0] == 0 and starts[-1] == end
    for i, f in enumerate(schema["fields"]):
        one = compile_writer({"type": "record", "name": "One", "fields": [_standalone(f, schema)]})
        assert raw[starts[i] : starts[i + 1]] == one({f["name"]: values[i]})


def _standalone(f: dict, schema: dict) -> dict:
    """A field whose type names an enum defined elsewhere in ``schema``, made whole."""
    named = _named_enums(schema["fields"], {})

    def whole(node: Any) -> Any:
        if isinstance(node, str) and node in named:
            return named[node]
        if isinstance(node, list):
            return [whole(n) for n in node]
        if isinstance(node, dict) and node.get("type") == "array":
            return {**node, "items": whole(node["items"])}
        return node

    return {**f, "type": whole(f["type"])}


@pytest.mark.parametrize(
    ("kind", "data", "accepted"),
    [
        ("int", bytes.fromhex("feffffff0f"), True),  # 2**31 - 1, in 5 bytes
        ("int", bytes.fromhex("ffffffff0f"), True),  # -(2**31)
        ("int", bytes.fromhex("8080808010"), False),  # 2**32 / 2: beyond 32 bits
        ("int", bytes.fromhex("808080808000"), False),  # 0 in 6 bytes
        ("int", bytes.fromhex("8000"), True),  # 0 in 2 bytes: valid, not canonical
        ("long", bytes.fromhex("feffffffffffffffff01"), True),  # 2**63 - 1
        ("long", bytes.fromhex("ffffffffffffffffff01"), True),  # -(2**63)
        ("long", bytes.fromhex("80808080808080808002"), False),  # 2**64: beyond 64 bits
        ("long", bytes.fromhex("ffffffffffffffffff7f"), False),  # up to 2**70
        ("long", bytes.fromhex("8080808080808080808000"), False),  # 0 in 11 bytes
        ("long", bytes.fromhex("80808080808080808000"), True),  # 0 in 10 bytes
        ("enum", bytes.fromhex("828080808000"), False),  # index 1 in 6 bytes
        ("enum", bytes.fromhex("8280808000"), True),  # index 1 in 5 bytes
        ("enum", bytes.fromhex("04"), False),  # index 2 of 2 symbols
        ("string", bytes.fromhex("8680808080006162"), False),  # length 3 in 6 bytes
        ("string", bytes.fromhex("01"), False),  # length -1
        ("string", bytes.fromhex("0661"), False),  # length 3, 1 byte left
    ],
)
def test_the_limits_of_ints_and_longs(kind, data, accepted):
    types = {"enum": {"type": "enum", "name": "E", "symbols": ["A", "B"]}}
    schema = fastavro.parse_schema(
        {"type": "record", "name": "R", "fields": [{"name": "v", "type": types.get(kind, kind)}]}
    )
    read, scan = compile_reader(schema), compile_reader(schema, scan=True)
    if not accepted:
        with pytest.raises((ValueError, EOFError)):
            read(data, 0)
        with pytest.raises((ValueError, EOFError)):
            scan(data, 0)
        return
    record, end = read(data, 0)
    assert (record, end) == _fastavro_read(schema, data)
    if data == _fastavro_bytes(schema, record):
        assert scan(data, 0) == (((record["v"],), (0, len(data))), len(data))
    else:
        with pytest.raises(NonCanonical):
            scan(data, 0)


# -- posts: the codec, the splice, the C fast path's scanner, fastavro --------------

POST_SCHEMA = CODEC.schema(POST)
HEADER = CODEC.scan_prefix(POST)
NOW = 1_764_000_000_000


def _native_gate() -> Any:
    if not native.available():
        return None
    from tests.unit.test_splice import _gate

    processor, _ = _gate(True, load_policy())
    return native.make_fast_gate(processor)


FAST = _native_gate()


# ids and countries of posts the gate can decide
DECIDABLE = {
    "post_id": st.sampled_from(["p1", "p2", "p3"]),
    "user_id": st.sampled_from(["u1", "u2", "u3", "u4", "u5"]),
    "author_country": st.sampled_from(["GB", "FR", "US", "DE", "IE"]),
}


@st.composite
def post_encodings(draw, strings: dict | None = None) -> Encoding:
    """A Post in the current schema's single-object encoding, adversarially written;
    sometimes with trailing bytes. ``strings``: as ``encodings``."""
    enc = draw(encodings(POST_SCHEMA, strings))
    enc.out[:0] = HEADER
    if enc.valid and draw(st.integers(0, 19)) == 0:
        enc.out += draw(st.binary(min_size=1, max_size=3))
        enc.valid = enc.canonical = False
    return enc


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(enc=post_encodings())
def test_posts_are_spliced_only_from_canonical_bytes_and_read_alike_everywhere(enc):
    data = bytes(enc.out)
    policy = load_policy()
    try:
        _, decoded = CODEC.decode(data, POST)
    except DecodeError:
        decoded = None
    assert (decoded is not None) == enc.valid
    if decoded is not None:
        assert _same(decoded, enc.record)
        assert _same(_fastavro_read(POST_SCHEMA, data[len(HEADER) :])[0], decoded)
    try:
        scanned = CODEC.scan(data, POST)
    except DecodeError as exc:
        assert decoded is None
        with pytest.raises(DecodeError, match=re.escape(str(exc))):
            CODEC.decode(data, POST)
        scanned = None
    if FAST is not None:  # the C scanner accepts what the Python scanner accepts
        assert FAST.scan(data) == (None if scanned is None else scanned[1])
    if scanned is None:
        assert not (enc.valid and enc.canonical)
        return
    values, starts = scanned
    assert enc.valid and enc.canonical
    assert values == tuple(decoded[n] for n in CODEC.field_names(POST))
    assert data == HEADER + _fastavro_bytes(POST_SCHEMA, decoded)
    # what is spliced is fastavro's encoding of the records made from the decoded post
    training = CODEC.splicer(POST, TRAINING_RECORD, "t")
    expected = CODEC.wire_prefix(TRAINING_RECORD) + _fastavro_bytes(
        CODEC.schema(TRAINING_RECORD), training_record(decoded, policy, NOW)
    )
    assert training(data, starts, policy_version=policy.version, decided_at=NOW) == expected
    source = Source("posts", 3, 2**40)
    record = _decision(
        decoded["post_id"],
        decoded["user_id"],
        Outcome.PUBLISHED,
        Reason.ELIGIBLE,
        policy,
        NOW,
        source,
        None,
    )
    given_fields = {k: v for k, v in record.items() if k not in ("post_id", "user_id")}
    expected = CODEC.wire_prefix(DECISION) + _fastavro_bytes(CODEC.schema(DECISION), record)
    assert CODEC.splicer(POST, DECISION, "d")(data, starts, **given_fields) == expected


def _post_with(**fields: bytes) -> bytes:
    """The single-object encoding of a post, some fields' encodings replaced."""
    post = {
        "post_id": "p1",
        "user_id": "u1",
        "platform": "INSTAGRAM",
        "visibility": "PUBLIC",
        "author_country": "GB",
        "author_is_adult": True,
        "created_at": 1,
        "text": "hi",
        "media_urls": ["a", "b"],
    }
    parts = []
    for f in POST_SCHEMA["fields"]:
        one = {"type": "record", "name": "One", "fields": [_standalone(f, POST_SCHEMA)]}
        parts.append(fields.get(f["name"], compile_writer(one)({f["name"]: post[f["name"]]})))
    return HEADER + b"".join(parts)


@pytest.mark.parametrize(
    "fields",
    [
        {"post_id": bytes.fromhex("8400") + b"p1"},  # a length longer than needed
        {"platform": bytes.fromhex("8200")},  # an enum index
        {"created_at": bytes.fromhex("828080808080808080 00".replace(" ", ""))},  # 10 bytes
        {"text": bytes.fromhex("8200") + b"\x04hi"},  # a union index
        {"media_urls": b"\x02\x02a\x02\x02b\x00"},  # two blocks
        {"media_urls": b"\x03\x08\x02a\x02b\x00"},  # a negative count and a size
        {"media_urls": b"\x84\x00\x02a\x02b\x00"},  # a count longer than needed
        {"media_urls": b"\x04\x02a\x02b\x80\x00"},  # the end, longer than needed
    ],
)
def test_valid_posts_not_in_canonical_form_are_decoded_not_spliced(fields):
    data = _post_with(**fields)
    _, decoded = CODEC.decode(data, POST)
    assert data != HEADER + _fastavro_bytes(POST_SCHEMA, decoded)
    assert CODEC.scan(data, POST) is None  # the gate decodes it and encodes its outputs
    if FAST is not None:
        assert FAST.scan(data) is None
        assert FAST.scan(HEADER + _fastavro_bytes(POST_SCHEMA, decoded)) is not None


OLDER = [v for v in CODEC.versions if CODEC.current[v.name].fingerprint != v.fingerprint]


@pytest.mark.skipif(not OLDER, reason="no older schema version")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_older_versions_read_through_fastavro_have_the_same_limits(data):
    version = data.draw(st.sampled_from(OLDER))
    enc = data.draw(encodings(version.parsed))
    raw = SINGLE_OBJECT_MAGIC + version.fingerprint + bytes(enc.out)
    if enc.valid:
        _, record = CODEC.decode(raw, version.name)
        assert all(_same(record[k], v) for k, v in enc.record.items() if k in record)
    else:
        with pytest.raises(DecodeError):
            CODEC.decode(raw, version.name)
