"""The compiled Avro readers and writers agree with fastavro byte for byte, and never
accept bytes that fastavro would read differently."""

import io

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.serde.avro_compiled import compile_reader, compile_writer, encode_long
from streams.serde.codec import Codec

CODEC = Codec()

# every kind the compiler handles, in one synthetic schema
EVERY_KIND = fastavro.parse_schema(
    {
        "type": "record",
        "name": "EveryKind",
        "fields": [
            {"name": "nothing", "type": "null"},
            {"name": "flag", "type": "boolean"},
            {"name": "small", "type": "int"},
            {"name": "big", "type": "long"},
            {"name": "single", "type": "float"},
            {"name": "double", "type": "double"},
            {"name": "text", "type": "string"},
            {"name": "raw", "type": "bytes"},
            {"name": "colour", "type": {"type": "enum", "name": "Colour", "symbols": ["R", "G"]}},
            {"name": "longs", "type": {"type": "array", "items": "long"}},
            {"name": "colours", "type": {"type": "array", "items": "Colour"}},
            {"name": "maybe_text", "type": ["string", "null"]},
            {"name": "maybe_long", "type": ["null", "long"], "default": None},
        ],
    }
)
SCHEMAS = {**{name: v.parsed for name, v in CODEC.current.items()}, "EveryKind": EVERY_KIND}


def values(node, named):
    """A Hypothesis strategy for values of a (flat) Avro type."""
    if isinstance(node, list):
        return st.one_of(*(values(branch, named) for branch in node))
    if isinstance(node, str) and node in named:
        node = named[node]
    if isinstance(node, dict):
        if node["type"] == "enum":
            named[node["name"]] = node
            return st.sampled_from(node["symbols"])
        if node["type"] == "array":
            return st.lists(values(node["items"], named), max_size=70)
        node = node["type"]
    return {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**63), 2**63 - 1),
        "float": st.floats(width=32, allow_nan=False),
        "double": st.floats(allow_nan=False),
        "string": st.text(max_size=100),
        "bytes": st.binary(max_size=100),
    }[node]


def records(schema):
    named: dict = {}
    return st.fixed_dictionaries({f["name"]: values(f["type"], named) for f in schema["fields"]})


def fastavro_bytes(schema, record) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


def fastavro_read(schema, data: bytes):
    buf = io.BytesIO(data)
    return fastavro.schemaless_reader(buf, schema, None), buf.tell()


def test_every_current_schema_and_the_synthetic_one_compile():
    for name, schema in SCHEMAS.items():
        assert compile_reader(schema) is not None, name
        assert compile_writer(schema) is not None, name


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@settings(max_examples=150)
@given(data=st.data())
def test_writer_and_reader_agree_with_fastavro(name, data):
    schema = SCHEMAS[name]
    record = data.draw(records(schema))
    expected = fastavro_bytes(schema, record)
    assert compile_writer(schema)(record) == expected
    prefix = data.draw(st.binary(max_size=10))
    read, end = compile_reader(schema)(prefix + expected, len(prefix))
    assert (read, end) == (fastavro_read(schema, expected)[0], len(prefix) + len(expected))


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@settings(max_examples=150)
@given(data=st.data())
def test_damaged_bytes_are_refused_or_read_as_fastavro_reads_them(name, data):
    schema = SCHEMAS[name]
    good = fastavro_bytes(schema, data.draw(records(schema)))
    damaged = bytearray(good[: data.draw(st.integers(0, len(good)))])
    for _ in range(data.draw(st.integers(0, 3))):
        if damaged:
            damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    try:
        read, end = compile_reader(schema)(bytes(damaged), 0)
    except Exception:
        return  # refused: the codec reports a DecodeError, the record goes to the DLQ
    assert (read, end) == fastavro_read(schema, bytes(damaged))


def test_arrays_written_in_several_blocks_with_sizes_are_read():
    schema = fastavro.parse_schema({"type": "record", "name": "A", "fields": [
        {"name": "xs", "type": {"type": "array", "items": "long"}}]})  # fmt: skip
    items = [encode_long(v) for v in (1, -2, 300)]
    # a block of 2 with a negative count (followed by its size in bytes), then a block of 1
    data = (
        encode_long(-2)
        + encode_long(len(items[0] + items[1]))
        + items[0]
        + items[1]
        + encode_long(1)
        + items[2]
        + encode_long(0)
    )
    assert compile_reader(schema)(data, 0) == ({"xs": [1, -2, 300]}, len(data))
    assert fastavro_read(schema, data) == ({"xs": [1, -2, 300]}, len(data))


@pytest.mark.parametrize(
    "data",
    [
        b"\x80" * 11,  # a varint longer than 10 bytes
        b"\x03",  # a negative string length
        b"\x0a" + b"abc",  # a length beyond the end
        b"\x04\xff\xfe",  # invalid UTF-8
    ],
)
def test_bad_strings_are_refused(data):
    schema = fastavro.parse_schema(
        {"type": "record", "name": "S", "fields": [{"name": "s", "type": "string"}]}
    )
    with pytest.raises((ValueError, EOFError)):
        compile_reader(schema)(data, 0)


def test_nested_records_and_maps_are_left_to_fastavro():
    nested = fastavro.parse_schema({"type": "record", "name": "Outer", "fields": [
        {"name": "inner", "type": {"type": "record", "name": "Inner", "fields": []}}]})  # fmt: skip
    mapped = fastavro.parse_schema({"type": "record", "name": "M", "fields": [
        {"name": "m", "type": {"type": "map", "values": "string"}}]})  # fmt: skip
    for schema in (nested, mapped):
        assert compile_reader(schema) is None and compile_writer(schema) is None


def test_writer_refuses_values_of_the_wrong_type():
    writer = compile_writer(EVERY_KIND)
    good = {
        "nothing": None,
        "flag": True,
        "small": 1,
        "big": 2,
        "single": 1.5,
        "double": 2.5,
        "text": "t",
        "raw": b"r",
        "colour": "R",
        "longs": [],
        "colours": [],
        "maybe_text": None,
    }
    assert writer(good) == fastavro_bytes(EVERY_KIND, good)
    for field, bad in (("small", 2**31), ("big", "2"), ("colour", "BLUE"), ("text", 3)):
        with pytest.raises((TypeError, ValueError, KeyError, AttributeError)):
            writer({**good, field: bad})


def _reference_varint(n: int) -> bytes:
    z, out = (n << 1) ^ (n >> 63), bytearray()
    while True:
        if z < 0x80:
            return bytes(out + bytes([z]))
        out.append((z & 0x7F) | 0x80)
        z >>= 7


@given(st.integers(-(2**63), 2**63 - 1) | st.sampled_from([0, -1, 8191, 8192, -8193, 2**27, 2**41]))
def test_encode_long_is_the_zigzag_varint_of_the_specification(n):
    assert encode_long(n) == _reference_varint(n)
