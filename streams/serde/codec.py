"""Avro encoding of every record the enforcer reads or writes.

Two wire forms, told apart by the first byte:

* Avro single-object encoding: ``C3 01``, the 8-byte little-endian CRC-64-AVRO
  fingerprint of the writer schema's Parsing Canonical Form, then the datum.
* Confluent wire format: ``00``, a 4-byte big-endian schema id, then the datum
  (only resolvable when a schema registry is configured).

A schema id is a ``DecodeError`` only when the registry answers that it does not
exist; a registry that cannot be asked (refused, timed out, an error status) is
retried briefly, then ``RegistryUnavailable``: the record may be valid, and is read
again later, never sent to the DLQ.

Every schema version under ``schemas/`` (and ``schemas/history/``) is parsed once at
start; writers are resolved by fingerprint from a dictionary and read into the
current reader schema of the same name. Records written with the current schema are
read and written by functions compiled for it (``avro_compiled``); other versions go
through fastavro's schema resolution. No Kafka here.
"""

from __future__ import annotations

import io
import json
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import fastavro
from fastavro.schema import to_parsing_canonical_form

# defined with the record checks (the core), which raise it too; the codec's to raise
from streams.core.records import DecodeError as DecodeError
from streams.serde.avro_compiled import (
    NonCanonical,
    Reader,
    Writer,
    compile_reader,
    compile_splice,
    compile_writer,
)

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = 0

POST = "Post"
OBJECTION = "ObjectionEvent"
TRAINING_RECORD = "TrainingRecord"
RETRACTION = "Retraction"
DECISION = "Decision"
CONSENT_RECEIPT = "ConsentReceipt"


class RegistryUnavailable(Exception):
    """The schema registry could not be asked (refused, timed out, an error status, a
    response that is not one): the record may be valid, so it must be read again later,
    never sent to the DLQ. Deliberately not a ``DecodeError``."""


# A registry request that fails other than with a definite answer is retried after
# these delays, as long as the call has taken less than REGISTRY_BUDGET seconds (the
# gate's event loop waits meanwhile), then RegistryUnavailable. For REGISTRY_PAUSE
# seconds after that, calls fail at once without a request: in an outage, records of
# many partitions do not each wait a whole budget. Callers that wait for the registry
# (``wait_for_registry``) ask again after REGISTRY_PAUSE at the earliest.
REGISTRY_DELAYS = (0.05, 0.1, 0.2, 0.4)
REGISTRY_BUDGET = 1.0
REGISTRY_PAUSE = 2.0
REGISTRY_MAX_WAIT = 8.0  # seconds between the attempts of wait_for_registry, at most


class Tally:
    """A count with a ``value`` (a ``multiprocessing.Value`` can stand in for it)."""

    def __init__(self) -> None:
        self.value = 0


def _not_found(exc: Exception) -> bool:
    """The registry's definite answer that a schema id does not exist: HTTP 404 with a
    registry error code 404xx (the registry says 40403; confluent-kafka's mock client
    40400). A 404 without one (a proxy's, a wrong URL path) is no such answer."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    code = getattr(exc, "error_code", None)
    return (
        isinstance(exc, SchemaRegistryError)
        and exc.http_status_code == 404
        and isinstance(code, int)
        and 40400 <= code <= 40499
    )


def _refused(exc: Exception) -> bool:
    """The registry's definite refusal of a request (a 4xx status other than 408 and
    429: an incompatible or invalid schema, no permission, a wrong URL path)."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    status = getattr(exc, "http_status_code", None)
    return (
        isinstance(exc, SchemaRegistryError)
        and isinstance(status, int)
        and 400 <= status < 500
        and status not in (408, 429)
    )


def _described(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def wait_for_registry(
    call: Callable[[], Any],
    timeout: float,
    on_failure: Callable[[RegistryUnavailable, float], None] = lambda exc, wait: None,
    stop: Callable[[], bool] = lambda: False,
) -> Any:
    """``call()`` until it does not raise ``RegistryUnavailable``, asking again after
    REGISTRY_PAUSE seconds, then twice as long each time (at most REGISTRY_MAX_WAIT),
    the last time ``timeout`` seconds after the first; ``on_failure(exc, wait)`` before
    each wait. Raises the last ``RegistryUnavailable`` when less than REGISTRY_PAUSE
    is left until then (an attempt could not ask the registry), or once ``stop()`` is
    true (checked every 0.1 s while waiting)."""
    deadline = time.monotonic() + timeout
    backoff = REGISTRY_PAUSE
    while True:
        try:
            return call()
        except RegistryUnavailable as exc:
            left = deadline - time.monotonic()
            if left < REGISTRY_PAUSE or stop():
                raise
            wait = min(backoff, left)
            on_failure(exc, wait)
            until = time.monotonic() + wait
            while (left := until - time.monotonic()) > 0:
                if stop():
                    raise
                time.sleep(min(0.1, left))
            backoff = min(backoff * 2, REGISTRY_MAX_WAIT)


_EMPTY = 0xC15D213AA4D7A795


def _crc64_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY & -(fp & 1))
        table.append(fp)
    return table


_TABLE = _crc64_table()


def crc64_avro(data: bytes) -> int:
    """The Avro specification's 64-bit Rabin fingerprint (CRC-64-AVRO)."""
    fp = _EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ byte) & 0xFF]
    return fp


def fingerprint(parsed_schema: dict[str, Any]) -> bytes:
    """The 8-byte little-endian CRC-64-AVRO fingerprint of a schema's canonical form."""
    canonical = to_parsing_canonical_form(parsed_schema)
    return struct.pack("<Q", crc64_avro(canonical.encode("utf-8")))


def _without_logical_types(node: Any) -> Any:
    """The schema with ``logicalType`` dropped: timestamps stay epoch-millis ints.

    Parsing Canonical Form ignores logical types, so fingerprints do not change.
    """
    if isinstance(node, dict):
        return {k: _without_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_without_logical_types(v) for v in node]
    return node


def _short_name(full_name: str) -> str:
    return full_name.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class SchemaVersion:
    """One parsed schema version, as read from ``schemas/``."""

    name: str
    parsed: dict[str, Any]
    fingerprint: bytes
    source: str
    text: str = ""


def load_schemas(
    directory: Path = SCHEMA_DIR,
) -> tuple[dict[str, SchemaVersion], list[SchemaVersion]]:
    """Parse every ``*.avsc``: current versions (top level) and all versions (with history)."""
    current: dict[str, SchemaVersion] = {}
    every: list[SchemaVersion] = []
    files = sorted(directory.glob("*.avsc")) + sorted(directory.glob("history/*.avsc"))
    for path in files:
        text = path.read_text()
        parsed = cast(
            "dict[str, Any]", fastavro.parse_schema(_without_logical_types(json.loads(text)))
        )
        name = _short_name(parsed["name"])
        version = SchemaVersion(name, parsed, fingerprint(parsed), path.name, text)
        every.append(version)
        if path.parent == directory:
            current[version.name] = version
    return current, every


class Codec:
    """Encodes and decodes the enforcer's records in either wire form.

    ``registry`` is an optional ``confluent_kafka.schema_registry.SchemaRegistryClient``;
    with it, ``encode`` writes the Confluent wire format (registering the schema under
    ``<topic>-value``), and ids in incoming records are resolved through it.
    ``registry_errors`` counts the registry requests that failed (a ``Tally`` unless
    one is given, e.g. a ``multiprocessing.Value`` shared with another process).
    """

    def __init__(
        self,
        registry: Any | None = None,
        directory: Path = SCHEMA_DIR,
        registry_errors: Any = None,
    ) -> None:
        self.current, self.versions = load_schemas(directory)
        self._by_fingerprint: dict[bytes, SchemaVersion] = {v.fingerprint: v for v in self.versions}
        self._by_header = {SINGLE_OBJECT_MAGIC + v.fingerprint: v for v in self.versions}
        self._registry: Any = registry
        self.registry_errors = Tally() if registry_errors is None else registry_errors
        self._registry_paused_until = 0.0  # after a failed call: see REGISTRY_PAUSE
        self._registry_failure = ""
        self._ids_by_subject: dict[tuple[str, str], int] = {}
        self._versions_by_id: dict[int, SchemaVersion] = {}
        self._prefix = {
            name: SINGLE_OBJECT_MAGIC + v.fingerprint for name, v in self.current.items()
        }
        # compiled for the current versions: a writer per name, a reader per fingerprint
        # (used only when the writer's schema is the reader's)
        self._writers: dict[str, Writer] = {}
        self._readers: dict[bytes, Reader] = {}
        for name, version in self.current.items():
            writer, reader = compile_writer(version.parsed), compile_reader(version.parsed)
            if writer is not None:
                self._writers[name] = writer
            if reader is not None:
                self._readers[version.fingerprint] = reader
        # scanning readers of the current versions (values and field positions, for
        # records copied into others as bytes: ``scan`` and ``splicer``)
        self._scanners: dict[bytes, Reader] = {}
        for version in self.current.values():
            scanner = compile_reader(version.parsed, scan=True)
            if scanner is not None:
                self._scanners[version.fingerprint] = scanner
        # the single-object header of each current version that has a scanner: a record
        # that starts with it is scanned without looking its writer up
        self._scan_current: dict[str, tuple[bytes, Reader]] = {
            name: (self._prefix[name], self._scanners[v.fingerprint])
            for name, v in self.current.items()
            if v.fingerprint in self._scanners
        }
        # record prefixes up to ``user_id``, of every known version: what re-keying reads
        self._user_readers: dict[bytes, Reader] = {}
        for version in self.versions:
            prefix = compile_reader(version.parsed, last_field="user_id")
            if prefix is not None:
                self._user_readers[version.fingerprint] = prefix

    @property
    def uses_registry(self) -> bool:
        """True when records are written in the Confluent wire format."""
        return self._registry is not None

    def schema(self, name: str) -> dict[str, Any]:
        """The current parsed schema of a record name."""
        return self.current[name].parsed

    # -- writing -------------------------------------------------------------------
    def wire_prefix(self, name: str, topic: str | None = None) -> bytes:
        """What ``encode`` writes before the datum of a ``name`` record for ``topic``."""
        if self._registry is not None:
            return struct.pack(">bI", CONFLUENT_MAGIC, self._schema_id(name, topic or name))
        return self._prefix[name]

    def scan_prefix(self, name: str) -> bytes | None:
        """The header of the records ``scan`` reads without looking their writer up (the
        current schema's single-object header), or None if it has no scanner."""
        current = self._scan_current.get(name)
        return current[0] if current is not None else None

    def encode(self, name: str, datum: Mapping[str, Any], topic: str | None = None) -> bytes:
        """Serialize ``datum`` with the current schema ``name``."""
        prefix = self.wire_prefix(name, topic)
        writer = self._writers.get(name)
        if writer is not None:
            return prefix + writer(datum)
        buf = io.BytesIO()
        buf.write(prefix)
        fastavro.schemaless_writer(buf, self.current[name].parsed, datum)
        return buf.getvalue()

    def splicer(self, source: str, target: str, topic: str) -> Callable[..., bytes] | None:
        """A function ``(data, starts, *fields) -> bytes`` that writes a ``target``
        record (as ``encode`` does, for ``topic``) from a ``source`` record that ``scan``
        read (its bytes and field positions) and the target's remaining fields (in schema
        order, or by name), or None when ``target`` does not begin with fields of
        ``source`` (``compile_splice``)."""
        splice = compile_splice(self.current[source].parsed, self.current[target].parsed)
        if splice is None:
            return None
        return partial(splice, self.wire_prefix(target, topic))

    def field_names(self, name: str) -> tuple[str, ...]:
        """The fields of the current schema ``name``, in order (the order of ``scan``)."""
        return tuple(f["name"] for f in self.current[name].parsed["fields"])

    def encode_with(self, version: SchemaVersion, datum: Mapping[str, Any]) -> bytes:
        """Serialize with an explicit (possibly older) schema version, single-object form."""
        buf = io.BytesIO()
        buf.write(SINGLE_OBJECT_MAGIC + version.fingerprint)
        fastavro.schemaless_writer(buf, version.parsed, datum)
        return buf.getvalue()

    def _schema_id(self, name: str, topic: str) -> int:
        subject = f"{topic}-value"
        key = (subject, name)
        schema_id = self._ids_by_subject.get(key)
        if schema_id is None:
            from confluent_kafka.schema_registry import Schema

            schema = Schema(self.current[name].text, "AVRO")
            # a definite refusal is raised as the client raised it; anything else is
            # RegistryUnavailable (a worker registers its outputs' schemas at start)
            register = self._registry.register_schema
            schema_id = self._ask_registry(
                f"registering {subject}", register, (subject, schema), _refused
            )
            self._ids_by_subject[key] = schema_id
            self._versions_by_id[schema_id] = self.current[name]
        return schema_id

    # -- reading -------------------------------------------------------------------
    def writer_of(self, data: bytes) -> tuple[SchemaVersion, int]:
        """The writer schema of an encoded record and where its datum starts."""
        version = self._by_header.get(data[:10])
        if version is not None:  # the common case: a known single-object header
            return version, 10
        if not data:
            raise DecodeError("empty value")
        first = data[0]
        if first == 0xC3:
            if len(data) < 10 or data[1] != 0x01:
                raise DecodeError("truncated single-object header")
            version = self._by_fingerprint.get(bytes(data[2:10]))
            if version is None:
                raise DecodeError(f"unknown schema fingerprint {bytes(data[2:10]).hex()}")
            return version, 10
        if first == CONFLUENT_MAGIC:
            if len(data) < 5:
                raise DecodeError("truncated Confluent wire-format header")
            (schema_id,) = struct.unpack_from(">I", data, 1)
            return self._version_for_id(schema_id), 5
        raise DecodeError(f"not Avro: unknown magic byte 0x{first:02x}")

    def _version_for_id(self, schema_id: int) -> SchemaVersion:
        version = self._versions_by_id.get(schema_id)
        if version is not None:
            return version
        if self._registry is None:
            raise DecodeError(f"schema id {schema_id} but no schema registry is configured")
        try:
            registered = self._ask_registry(
                f"schema id {schema_id}", self._registry.get_schema, (schema_id,), _not_found
            )
        except RegistryUnavailable:
            raise  # the record may be valid: read it again later
        except Exception as exc:  # _not_found: the registry says there is no such id
            raise DecodeError(f"unknown schema id {schema_id}: {exc}") from None
        try:
            raw = _without_logical_types(json.loads(registered.schema_str))
            parsed = cast("dict[str, Any]", fastavro.parse_schema(raw))
        except Exception as exc:
            raise DecodeError(f"schema id {schema_id} is not a usable Avro schema: {exc}") from None
        version = SchemaVersion(
            _short_name(parsed["name"]), parsed, fingerprint(parsed), f"id:{schema_id}"
        )
        self._versions_by_id[schema_id] = version
        return version

    def _ask_registry(
        self,
        what: str,
        call: Callable[..., Any],
        args: tuple[Any, ...],
        definite: Callable[..., bool],
    ) -> Any:
        """``call(*args)`` on the registry client; an exception that ``definite`` accepts
        (an answer) is raised as is, any other is retried (REGISTRY_DELAYS, within
        REGISTRY_BUDGET), then ``RegistryUnavailable``."""
        if time.monotonic() < self._registry_paused_until:
            raise RegistryUnavailable(
                f"schema registry unavailable ({what}): {self._registry_failure}; "
                "not asked again yet"
            )
        start = time.monotonic()
        for delay in (*REGISTRY_DELAYS, None):
            try:
                return call(*args)
            except Exception as exc:
                if definite(exc):
                    raise
                self.registry_errors.value += 1
                failure = _described(exc)
                if delay is None or time.monotonic() - start + delay > REGISTRY_BUDGET:
                    break
                time.sleep(delay)
        self._registry_paused_until = time.monotonic() + REGISTRY_PAUSE
        self._registry_failure = failure
        raise RegistryUnavailable(f"schema registry unavailable ({what}): {failure}")

    def _writer_expecting(self, data: bytes, expect: str | None) -> tuple[SchemaVersion, int]:
        """``writer_of``, refusing a record of another name than ``expect`` (if given)."""
        version, start = self.writer_of(data)
        if expect is not None and version.name != expect:
            raise DecodeError(f"expected a {expect} record, got {version.name}")
        return version, start

    def user_id_of(self, data: bytes, expect: str) -> Any:
        """The ``user_id`` of an encoded ``expect`` record, reading the datum only as far
        as that field (the rest is checked where the record is decoded). Raises
        ``DecodeError`` as ``decode`` does for what comes before it."""
        version, start = self._writer_expecting(data, expect)
        prefix = self._user_readers.get(version.fingerprint)
        if prefix is None:  # e.g. a version from the schema registry: read it all
            return self.decode(data, expect)[1].get("user_id")
        return _read_datum(prefix, data, start, version.name)[0]["user_id"]

    def scan(self, data: bytes, expect: str) -> tuple[tuple[Any, ...], tuple[int, ...]] | None:
        """An ``expect`` record's field values (a tuple in the order of ``field_names``)
        and where each field starts in ``data`` (the last entry is the end), for records
        written with the current schema; None for other versions, and for bytes that
        are valid but not the canonical encoding of their values (``NonCanonical``):
        ``decode`` those, so that what is written is encoded anew, never copied.
        Raises ``DecodeError`` exactly as ``decode`` does."""
        try:
            current = self._scan_current.get(expect)
            scanned: tuple[tuple[Any, ...], tuple[int, ...]]
            if current is not None and data[:10] == current[0]:  # the common case
                scanned = _read_whole(current[1], data, 10, expect)
                return scanned
            version, start = self._writer_expecting(data, expect)
            scanner = self._scanners.get(version.fingerprint)
            if scanner is None or self.current[expect].fingerprint != version.fingerprint:
                return None
            scanned = _read_whole(scanner, data, start, version.name)
            return scanned
        except NonCanonical:
            return None

    def decode(self, data: bytes, expect: str | None = None) -> tuple[str, dict[str, Any]]:
        """Read a record into the current reader schema; returns (record name, datum).

        ``expect`` limits which record name is acceptable. Raises ``DecodeError``
        with a human-readable reason for anything that is not a valid record.
        """
        version, start = self._writer_expecting(data, expect)
        reader = self.current.get(version.name)
        if reader is None:
            raise DecodeError(f"no reader schema for record {version.name}")
        compiled = None
        if reader.fingerprint == version.fingerprint:
            compiled = self._readers.get(version.fingerprint)
        read = compiled or _fastavro_reader(version, reader)
        return version.name, _read_whole(read, data, start, version.name)


# a compiled reader of each writer schema read through fastavro (None: not compilable),
# by fingerprint: it refuses what fastavro reads but the specification does not allow
_CHECKERS: dict[bytes, Reader | None] = {}


def _fastavro_reader(writer: SchemaVersion, reader: SchemaVersion) -> Reader:
    """A ``(data, pos) -> (datum, end)`` reader through fastavro's schema resolution,
    of bytes a compiled reader of the writer schema accepts, where it compiles
    (fastavro reads varints of any length and ints beyond 32 bits)."""
    resolve_into = None if reader.fingerprint == writer.fingerprint else reader.parsed
    if writer.fingerprint not in _CHECKERS:
        _CHECKERS[writer.fingerprint] = compile_reader(writer.parsed)
    check = _CHECKERS[writer.fingerprint]

    def read(data: bytes, pos: int) -> tuple[dict[str, Any], int]:
        if check is not None:
            check(data, pos)
        buf = io.BytesIO(data)
        buf.seek(pos)
        datum = cast("dict[str, Any]", fastavro.schemaless_reader(buf, writer.parsed, resolve_into))
        return datum, buf.tell()

    return read


def _read_datum(reader: Reader, data: bytes, start: int, name: str) -> tuple[dict[str, Any], int]:
    """Run a reader (compiled or fastavro); anything it raises becomes the DLQ reason."""
    try:
        return reader(data, start)
    except EOFError:
        raise DecodeError(f"truncated {name} datum") from None
    except NonCanonical:  # a scanning reader's: the caller decodes instead
        raise
    except Exception as exc:  # corrupt lengths, indexes, UTF-8; fastavro raises many types
        raise DecodeError(f"corrupt {name} datum: {type(exc).__name__}: {exc}") from None


def _read_whole(reader: Reader, data: bytes, start: int, name: str) -> Any:
    """``_read_datum`` of a datum that must end where ``data`` does."""
    datum, end = _read_datum(reader, data, start, name)
    if end != len(data):
        raise DecodeError(f"{len(data) - end} trailing bytes after the {name} datum")
    return datum
