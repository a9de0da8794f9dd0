"""Avro binary readers and writers compiled to Python source for one schema.

fastavro's generic, schema-driven loop costs about 10 microseconds a record here, and
the gate reads or writes three records per post. A function generated once for one
record schema (straight-line code, one branch per field, small lengths from a table)
does the same work in a fraction of that. Only flat records are compiled: fields of
primitive types, enums, arrays of primitives, and unions of ``null`` with one of
those; ``compile_reader`` and ``compile_writer`` return None for anything else, and
the codec then keeps fastavro. Both agree byte for byte with fastavro (a Hypothesis
test checks it). Readers reject what fastavro rejects (truncation, bad enum or union
indexes, invalid UTF-8) and what the Avro specification and Java's reader refuse but
fastavro reads anyway: a varint of more than 5 bytes or 32 bits where Java reads an
int (int fields, enum and union indexes, string and bytes lengths), or of more than 10
bytes or 64 bits where it reads a long (long fields, array block counts and sizes);
and booleans other than 0 and 1. They accept, as Java does, a varint longer than it
needs to be (``80 00`` for 0) and arrays in several blocks; a scanning reader, whose
bytes are copied into other records (``compile_splice``), raises ``NonCanonical`` for
those instead, so that only bytes equal to fastavro's encoding of the decoded record
are ever copied. No Kafka here.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from keyword import iskeyword
from typing import Any

Reader = Callable[[bytes, int], tuple[dict[str, Any], int]]
Writer = Callable[[Mapping[str, Any]], bytes]

_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "string", "bytes"}
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1


def _varint(z: int) -> bytes:
    """Varint of a non-negative (already zigzagged) value."""
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


# 14 bits at a time: the last group (as it ends a varint) and a middle group (both
# bytes with the continuation bit); a timestamp in milliseconds takes three lookups
_LAST14 = tuple(_varint(z) for z in range(0x4000))
_MIDDLE14 = tuple(bytes(((z & 0x7F) | 0x80, ((z >> 7) & 0x7F) | 0x80)) for z in range(0x4000))


def encode_long(n: int) -> bytes:
    """Zigzag varint of an Avro ``int`` or ``long``."""
    z = (n << 1) ^ (n >> 63)
    if z < 0x4000:
        return _LAST14[z]
    if z < 0x10000000:
        return _MIDDLE14[z & 0x3FFF] + _LAST14[z >> 14]
    if z < 0x40000000000:
        return _MIDDLE14[z & 0x3FFF] + _MIDDLE14[(z >> 14) & 0x3FFF] + _LAST14[z >> 28]
    return _varint(z)


# zigzag varints of 0..63: string and array lengths are nearly always one of these
SMALL = tuple(encode_long(n) for n in range(64))


class NonCanonical(Exception):
    """Valid Avro that is not the encoding fastavro (or Java) writes for its values: a
    varint longer than it needs to be, an array in several blocks or with a negative
    count, a NaN (whose bits a float may not keep). Raised by scanning readers only;
    such a record is decoded and encoded again, never copied."""


def _varint_rest(bits: int, canonical: bool) -> Callable[[bytes, int, int], tuple[int, int]]:
    """A function reading the rest of a varint whose first byte ``first`` had its high
    bit set (zigzag not yet undone), returning (value, position after it): at most as
    many bytes as ``bits`` (32: an int, 5 bytes; 64: a long, 10 bytes) take, its
    value in that many bits; with ``canonical``, no byte more than the value needs."""
    last_shift = 7 * ((bits + 6) // 7 - 1)  # of the last byte allowed
    what = "int" if bits == 32 else "long"
    too_long = f"{what} varint longer than {(bits + 6) // 7} bytes"
    too_big = f"{what} varint beyond {bits} bits"

    def rest(data: bytes, pos: int, first: int) -> tuple[int, int]:
        value = first & 0x7F
        shift = 7
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            if shift == last_shift:
                raise ValueError(too_long)
            shift += 7
        if value >> bits:
            raise ValueError(too_big)
        if canonical and not byte:
            raise NonCanonical(f"{what} varint longer than its value needs")
        return value, pos

    return rest


# (int, long) rest readers: of decoding readers, of scanning readers
_REST = {False: (_varint_rest(32, False), _varint_rest(64, False))}
_REST[True] = (_varint_rest(32, True), _varint_rest(64, True))


def _named_enums(node: Any, found: dict[str, Any]) -> dict[str, Any]:
    """Every enum defined in a parsed schema, by the name references to it use."""
    if isinstance(node, dict):
        if node.get("type") == "enum":
            found[node["name"]] = node
        for value in node.values():
            _named_enums(value, found)
    elif isinstance(node, list):
        for value in node:
            _named_enums(value, found)
    return found


def _kind(node: Any, named: Mapping[str, Any]) -> str | None:
    """The compilable kind of a field type, or None."""
    if isinstance(node, str):
        if node in named:
            return "enum"
        return node if node in _PRIMITIVES else None
    if isinstance(node, dict):
        t = node.get("type")
        if t == "enum":
            return "enum"
        if t == "array" and _kind(node["items"], named) in _PRIMITIVES | {"enum"}:
            return "array"
        if t in _PRIMITIVES and len(node) == 1:
            return str(t)
        return None
    if isinstance(node, list):
        kinds = [_kind(branch, named) for branch in node]
        simple = None not in kinds and "array" not in kinds
        if len(node) == 2 and simple and kinds.count("null") == 1:
            return "union"
    return None


# -- readers -----------------------------------------------------------------------------


class _Source:
    """Generated source lines with indentation."""

    def __init__(self, named: Mapping[str, Any]) -> None:
        self.named = named
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {}
        self._n = 0

    def line(self, indent: int, text: str) -> None:
        self.lines.append("    " * indent + text)

    def constant(self, value: Any) -> str:
        self._n += 1
        name = f"_C{self._n}"
        self.constants[name] = value
        return name

    def tmp(self) -> str:
        self._n += 1
        return f"v{self._n}"


def _read_long(src: _Source, ind: int, target: str, rest: str = "_rest") -> None:
    """Source reading a zigzag varint into ``target``: a long (``_rest``), or an int
    (``rest="_rest_int"``)."""
    src.line(ind, "x = data[pos]; pos += 1")
    src.line(ind, f"if x & 0x80: x, pos = {rest}(data, pos, x)")
    src.line(ind, f"{target} = (x >> 1) ^ -(x & 1)")


def _read_int(src: _Source, ind: int, target: str) -> None:
    _read_long(src, ind, target, "_rest_int")


def definition(node: Any, named: Mapping[str, Any]) -> Any:
    """A type's definition: the enum it names (``named``: ``_named_enums``), or itself."""
    return named.get(node, node) if isinstance(node, str) else node


def _resolved(src: _Source, node: Any) -> tuple[str | None, Any]:
    """A field type's kind, and its definition when it names an enum."""
    return _kind(node, src.named), definition(node, src.named)


def _read_value(src: _Source, ind: int, node: Any, target: str, scan: bool = False) -> None:
    """Source reading one value of a compilable, non-union type into ``target``; with
    ``scan``, raising ``NonCanonical`` where the bytes are not the canonical encoding."""
    kind, node = _resolved(src, node)
    if kind == "null":
        src.line(ind, f"{target} = None")
    elif kind == "boolean":
        src.line(ind, "x = data[pos]; pos += 1")
        src.line(ind, "if x > 1: raise ValueError('invalid boolean')")
        src.line(ind, f"{target} = x == 1")
    elif kind == "int":
        _read_int(src, ind, target)  # 32 bits: _rest_int checks
    elif kind == "long":
        _read_long(src, ind, target)
    elif kind in ("string", "bytes"):
        _read_int(src, ind, "n")
        src.line(ind, "if n < 0 or pos + n > end: raise _length(n)")
        if kind == "string":
            src.line(ind, f"{target} = data[pos:pos + n].decode(); pos += n")
        else:
            src.line(ind, f"{target} = bytes(data[pos:pos + n]); pos += n")
    elif kind in ("float", "double"):
        fmt = struct.Struct("<f" if kind == "float" else "<d")
        size = fmt.size
        unpack = src.constant(fmt.unpack_from)
        src.line(ind, f"if pos + {size} > end: raise EOFError")
        src.line(ind, f"{target} = {unpack}(data, pos)[0]; pos += {size}")
        if scan:
            src.line(ind, f"if {target} != {target}: raise _NonCanonical('NaN')")
    elif kind == "enum":
        symbols = src.constant(tuple(node["symbols"]))
        _read_int(src, ind, "i")
        count = len(node["symbols"])
        src.line(ind, f"if not 0 <= i < {count}: raise ValueError('enum index ' + str(i))")
        src.line(ind, f"{target} = {symbols}[i]")
    elif kind == "array":
        _read_array(src, ind, node["items"], target, scan)
    else:  # pragma: no cover - _kind guards every call
        raise AssertionError(kind)


def _read_array(src: _Source, ind: int, items_node: Any, target: str, scan: bool) -> None:
    """Source reading an array: blocks of a count (a long; negative: followed by the
    block's size in bytes, a long), items, until a count of 0. Scanning, only the
    canonical form: one block with a positive count, or none."""
    items, item = src.tmp(), src.tmp()
    # items that take a byte at least: a count beyond the remaining bytes is truncated
    nonempty = _kind(items_node, src.named) != "null"
    src.line(ind, f"{items} = []")
    if scan:
        _read_long(src, ind, "c")
        src.line(ind, "if c:")
        src.line(ind + 1, "if c < 0: raise _NonCanonical('array count')")
        if nonempty:
            src.line(ind + 1, "if c > end - pos: raise EOFError")
        src.line(ind + 1, "for _ in range(c):")
        _read_value(src, ind + 2, items_node, item, scan)
        src.line(ind + 2, f"{items}.append({item})")
        _read_long(src, ind + 1, "c")
        src.line(ind + 1, "if c: raise _NonCanonical('array in several blocks')")
    else:
        src.line(ind, "while True:")
        _read_long(src, ind + 1, "c")
        src.line(ind + 1, "if c == 0: break")
        src.line(ind + 1, "if c < 0:")
        src.line(ind + 2, "c = -c")
        _read_long(src, ind + 2, "_size")
        if nonempty:
            src.line(ind + 1, "if c > end - pos: raise EOFError")
        src.line(ind + 1, "for _ in range(c):")
        _read_value(src, ind + 2, items_node, item, scan)
        src.line(ind + 2, f"{items}.append({item})")
    src.line(ind, f"{target} = {items}")


def compile_reader(
    schema: Mapping[str, Any], last_field: str | None = None, scan: bool = False
) -> Reader | None:
    """A function ``(data, pos) -> (record, end position)`` for a parsed record schema
    (logical types removed), or None when the schema is not a flat record.

    With ``last_field``, the function reads the fields up to that one only (a record
    prefix: what routing needs, without paying for the rest); None when there is no
    such field. With ``scan``, it returns ``((values, starts), end)`` instead: the
    field values as a tuple in schema order, and where each field's encoding starts
    (``starts[i]``; the last entry is the end), so that fields can be copied as bytes
    (``compile_splice``) without building a record; it raises ``NonCanonical`` for
    valid bytes that are not the canonical encoding of what they hold."""
    if schema.get("type") != "record":
        return None
    fields = schema["fields"]
    named = _named_enums(fields, {})
    if last_field is not None:
        names = [f["name"] for f in fields]
        if last_field not in names:
            return None
        fields = fields[: names.index(last_field) + 1]
    if any(_kind(f["type"], named) is None for f in fields):
        return None
    src = _Source(named)
    src.line(0, "def read(data, pos):")
    src.line(1, "end = len(data)")
    src.line(1, "try:")
    names = []
    for index, f in enumerate(fields):
        target = f"f{index}"
        names.append((f["name"], target))
        if scan:
            src.line(2, f"s{index} = pos")
        node = f["type"]
        if _kind(node, named) == "union":
            non_null = 1 if node[0] == "null" else 0
            _read_int(src, 2, "u")
            src.line(2, f"if u == {1 - non_null}: {target} = None")
            src.line(2, f"elif u == {non_null}:")
            _read_value(src, 3, node[non_null], target, scan)
            src.line(2, "else: raise ValueError('union index ' + str(u))")
        else:
            _read_value(src, 2, node, target, scan)
    src.line(1, "except IndexError: raise EOFError from None")
    if scan:
        values = "".join(f"{target}, " for _, target in names)
        starts = "".join(f"s{index}, " for index in range(len(names)))
        src.line(1, f"return (({values}), ({starts}pos)), pos")
    else:
        record = ", ".join(f"{name!r}: {target}" for name, target in names)
        src.line(1, f"return {{{record}}}, pos")
    rest_int, rest_long = _REST[scan]
    namespace: dict[str, Any] = {
        "_rest": rest_long,
        "_rest_int": rest_int,
        "_length": _bad_length,
        "_NonCanonical": NonCanonical,
    }
    namespace.update(src.constants)
    exec(compile("\n".join(src.lines), f"<avro reader {schema.get('name')}>", "exec"), namespace)
    read: Reader = namespace["read"]
    return read


def _bad_length(n: int) -> Exception:
    return ValueError(f"negative length {n}") if n < 0 else EOFError()


# -- writers -----------------------------------------------------------------------------


def _write_value(src: _Source, ind: int, node: Any, value: str) -> None:
    """Source appending the encoding of ``value`` (of a non-union type) to ``parts``."""
    kind, node = _resolved(src, node)
    if kind == "null":
        src.line(ind, f"if {value} is not None: raise ValueError('null expected')")
    elif kind == "boolean":
        src.line(ind, f"a(b'\\x01' if {value} else b'\\x00')")
    elif kind == "int" or kind == "long":
        lo, hi = (_INT_MIN, _INT_MAX) if kind == "int" else (_LONG_MIN, _LONG_MAX)
        src.line(ind, f"x = {value}")
        check = f"if x.__class__ is not int or not {lo} <= x <= {hi}"
        src.line(ind, f"{check}: x = _int(x, {lo}, {hi})")
        src.line(ind, "a(_SMALL[x] if 0 <= x < 64 else _long(x))")
    elif kind in ("string", "bytes"):
        if kind == "string":
            src.line(ind, f"s = {value}.encode()")
        else:
            src.line(ind, f"s = bytes({value})")
        src.line(ind, "n = len(s)")
        src.line(ind, "a(_SMALL[n] if n < 64 else _long(n)); a(s)")
    elif kind in ("float", "double"):
        pack = src.constant(struct.Struct("<f" if kind == "float" else "<d").pack)
        src.line(ind, f"a({pack}({value}))")
    elif kind == "enum":
        table = src.constant({s: encode_long(i) for i, s in enumerate(node["symbols"])})
        src.line(ind, f"a({table}[{value}])")
    elif kind == "array":
        items = src.tmp()
        src.line(ind, f"{items} = {value}")
        src.line(ind, f"if {items}:")
        src.line(ind + 1, f"n = len({items}); a(_SMALL[n] if n < 64 else _long(n))")
        item = src.tmp()
        src.line(ind + 1, f"for {item} in {items}:")
        _write_value(src, ind + 2, node["items"], item)
        src.line(ind, "a(b'\\x00')")
    else:  # pragma: no cover - _kind guards every call
        raise AssertionError(kind)


def _check_int(x: Any, lo: int, hi: int) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(f"{x!r} is not an int")
    if not lo <= x <= hi:
        raise ValueError(f"{x} out of range")
    return x


_MISSING = object()


def compile_writer(schema: Mapping[str, Any]) -> Writer | None:
    """A function ``record -> bytes`` (the datum only) for a parsed record schema
    (logical types removed), or None when the schema is not a flat record."""
    if schema.get("type") != "record":
        return None
    fields = schema["fields"]
    named = _named_enums(fields, {})
    if any(_kind(f["type"], named) is None for f in fields):
        return None
    src = _Source(named)
    src.line(0, "def write(record):")
    src.line(1, "parts = []; a = parts.append")
    for index, f in enumerate(fields):
        value = f"f{index}"
        if "default" in f:
            default = src.constant(f["default"])
            src.line(1, f"{value} = record.get({f['name']!r}, {default})")
        else:
            src.line(1, f"{value} = record[{f['name']!r}]")
        _write_field(src, f["type"], value)
    src.line(1, "return b''.join(parts)")
    write: Callable[[Mapping[str, Any]], bytes] = _compiled(
        src, f"<avro writer {schema.get('name')}>", "write"
    )
    return write


def _write_field(src: _Source, node: Any, value: str) -> None:
    """Source appending one field's encoding (any compilable type) to ``parts``."""
    if _kind(node, src.named) == "union":
        non_null = 1 if node[0] == "null" else 0
        src.line(1, f"if {value} is None: a({encode_long(1 - non_null)!r})")
        src.line(1, "else:")
        src.line(2, f"a({encode_long(non_null)!r})")
        _write_value(src, 2, node[non_null], value)
    else:
        _write_value(src, 1, node, value)


def _compiled(src: _Source, filename: str, function: str) -> Any:
    namespace: dict[str, Any] = {"_SMALL": SMALL, "_long": encode_long, "_int": _check_int}
    namespace.update(src.constants)
    exec(compile("\n".join(src.lines), filename, "exec"), namespace)
    return namespace[function]


# -- splicing ----------------------------------------------------------------------------


def _encoding(node: Any, named: Mapping[str, Any]) -> Any:
    """What determines a compilable type's binary encoding (names and docs do not)."""
    kind, node = _kind(node, named), definition(node, named)
    if kind == "enum":
        return ("enum", tuple(node["symbols"]))
    if kind == "array":
        return ("array", _encoding(node["items"], named))
    if kind == "union":
        return ("union", tuple(_encoding(branch, named) for branch in node))
    return kind


def splice_plan(source: Mapping[str, Any], target: Mapping[str, Any]) -> Any:
    """How a ``target`` record is written from a ``source`` record's bytes, or None when
    ``target`` is not a run of ``source`` fields (same names, same encodings) followed
    by fields given by the caller: ``(spans, given)``, the runs of consecutive source
    fields copied (``[first, last + 1]`` field indexes) and the given fields' schemas.
    Both schemas parsed, logical types removed; every field compilable."""
    if source.get("type") != "record" or target.get("type") != "record":
        return None
    src_fields, dst_fields = source["fields"], target["fields"]
    src_named = _named_enums(src_fields, {})
    dst_named = _named_enums(dst_fields, {})
    if any(_kind(f["type"], src_named) is None for f in src_fields):
        return None
    if any(_kind(f["type"], dst_named) is None for f in dst_fields):
        return None
    index = {f["name"]: i for i, f in enumerate(src_fields)}
    copied: list[int] = []
    for f in dst_fields:
        i = index.get(f["name"])
        if i is None or _encoding(src_fields[i]["type"], src_named) != _encoding(
            f["type"], dst_named
        ):
            break
        copied.append(i)
    if not copied:
        return None
    spans: list[tuple[int, int]] = []
    for i in copied:
        if spans and spans[-1][1] == i:
            spans[-1] = (spans[-1][0], i + 1)
        else:
            spans.append((i, i + 1))
    return tuple(spans), dst_fields[len(copied) :]


def compile_splice(source: Mapping[str, Any], target: Mapping[str, Any]) -> Any:
    """A function writing a ``target`` record from a ``source`` record's bytes, or None
    when there is no ``splice_plan`` (or a given field's name cannot be a parameter).

    The function is ``splice(prefix, data, starts, **given) -> bytes``: ``prefix`` (the
    wire header), then the copied fields as the bytes they have in ``data`` (``starts``
    as a scanning reader of ``source`` returns them, ``compile_reader(scan=True)``),
    then the given fields, encoded as ``compile_writer`` would. Both schemas parsed,
    logical types removed."""
    plan = splice_plan(source, target)
    if plan is None:
        return None
    spans, given = plan
    names = [f["name"] for f in given]
    if not all(map(_free_name, names)):
        return None
    src = _Source(_named_enums(target["fields"], {}))
    params = "".join(f", {n}" for n in names)
    src.line(0, f"def splice(prefix, data, starts{params}):")
    copies = ", ".join(f"data[starts[{a}]:starts[{b}]]" for a, b in spans)
    src.line(1, f"parts = [prefix, {copies}]; a = parts.append")
    for f in given:
        _write_field(src, f["type"], f["name"])
    src.line(1, "return b''.join(parts)")
    return _compiled(src, f"<avro splice {source.get('name')} -> {target.get('name')}>", "splice")


def _free_name(name: str) -> bool:
    """True when a field name can be a parameter of generated code: an identifier that
    is not a keyword nor one of the names the code uses itself."""
    if not name.isidentifier() or iskeyword(name) or name.startswith("_"):
        return False
    generated = name[:1] in ("v", "f") and name[1:].isdigit()
    return not generated and name not in {"prefix", "data", "starts", "parts", "a", "x", "s", "n"}
