"""A schema registry that cannot be asked is not an answer (issue 16): the codec
retries briefly, then raises ``RegistryUnavailable`` (never a ``DecodeError``, which
sends the record to the DLQ); only the registry's "no such id" is a ``DecodeError``.
The re-keying stage waits for the registry, not ready meanwhile; the gate puts the
record back and reads it again later. No Kafka: stub registry clients, the gate over
in-memory tables (``test_splice``)."""

from __future__ import annotations

import struct
import threading
import time
from types import SimpleNamespace

import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError

import streams.gate.positions as gate_positions
import streams.serde.codec as codec_module
from streams.core.policy import load_policy
from streams.core.records import KIND_OBJECTION, KIND_POST
from streams.gate.metrics import Metrics
from streams.gate.offsets import Admit
from streams.gate.processor import Processor
from streams.kafka.registry import register_output_schemas
from streams.rekey.stage import Rekeyer
from streams.serde.codec import (
    DECISION,
    OBJECTION,
    POST,
    Codec,
    DecodeError,
    RegistryUnavailable,
    wait_for_registry,
)
from streams.settings import Settings
from streams.state.ledger import TableState
from tests.unit.test_splice import POST_RECORD, MemoryFaustTable, Recorder, _message

PLAIN = Codec()
EVENT = {
    "event_id": "e1",
    "user_id": "u1",
    "action": "OBJECT",
    "platform": None,
    "occurred_at": 1_700_000_000_000,
    "channel": "EMAIL",
}
POST_ID, OBJECTION_ID = 7, 8  # the ids the stub registry serves


def framed(schema_id: int, name: str, datum: dict) -> bytes:
    """A record in the Confluent wire format: 00, the schema id, the Avro datum."""
    return b"\x00" + struct.pack(">I", schema_id) + PLAIN.encode(name, datum)[10:]


def unavailable() -> Exception:
    return SchemaRegistryError(503, 50301, "Service Unavailable")


class StubRegistry:
    """A schema registry client that fails the next ``failures`` requests (with
    ``error()``), then answers: schemas by id, 404 (40403) for others."""

    def __init__(self, failures: float = 0, error=unavailable) -> None:
        self.failures = failures
        self.error = error
        self.requests = 0
        self.schemas = {
            POST_ID: PLAIN.current[POST].text,
            OBJECTION_ID: PLAIN.current[OBJECTION].text,
        }

    def _request(self) -> None:
        self.requests += 1
        if self.failures > 0:
            self.failures -= 1
            raise self.error()

    def get_schema(self, schema_id: int) -> Schema:
        self._request()
        if schema_id not in self.schemas:
            raise SchemaRegistryError(404, 40403, "Schema not found")
        return Schema(self.schemas[schema_id], "AVRO")

    def register_schema(self, subject: str, schema: Schema) -> int:
        self._request()
        return 100 + len(subject)


@pytest.fixture
def quick(monkeypatch):
    """Retries and waits in milliseconds."""
    monkeypatch.setattr(codec_module, "REGISTRY_DELAYS", (0.001, 0.001, 0.001, 0.001))
    monkeypatch.setattr(codec_module, "REGISTRY_PAUSE", 0.02)
    monkeypatch.setattr(codec_module, "REGISTRY_MAX_WAIT", 0.02)


# -- the codec -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "error",
    [
        unavailable,
        lambda: SchemaRegistryError(500, 50001, "Internal Server Error"),
        lambda: SchemaRegistryError(429, 42901, "Too Many Requests"),
        lambda: SchemaRegistryError(401, 40101, "Unauthorized"),
        lambda: ConnectionRefusedError(111, "Connection refused"),
        lambda: TimeoutError("timed out"),
        lambda: ValueError("Expecting value: line 1 column 1"),  # not a registry's answer
    ],
)
def test_a_registry_failing_a_few_times_is_retried(quick, error):
    registry = StubRegistry(failures=3, error=error)
    codec = Codec(registry)
    data = framed(OBJECTION_ID, OBJECTION, EVENT)
    assert codec.decode(data, OBJECTION) == (OBJECTION, EVENT)
    assert registry.requests == 4 and codec.registry_errors.value == 3
    assert codec.user_id_of(framed(OBJECTION_ID, OBJECTION, EVENT), OBJECTION) == "u1"
    assert registry.requests == 4  # known from then on


def test_a_registry_that_stays_away_is_unavailable_not_a_decode_error():
    """With the real retry budget: a bounded wait, then RegistryUnavailable; then calls
    fail at once, without a request, for REGISTRY_PAUSE seconds."""
    registry = StubRegistry(failures=float("inf"))
    codec = Codec(registry)
    data = framed(OBJECTION_ID, OBJECTION, EVENT)
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable, match=r"\(schema id 8\): SchemaRegistryError"):
        codec.decode(data, OBJECTION)
    assert time.monotonic() - started < codec_module.REGISTRY_BUDGET + 0.5
    assert not issubclass(RegistryUnavailable, DecodeError)
    assert registry.requests == len(codec_module.REGISTRY_DELAYS) + 1
    assert codec.registry_errors.value == registry.requests
    for read in (codec.decode, codec.user_id_of, codec.scan):
        with pytest.raises(RegistryUnavailable, match="not asked again yet"):
            read(data, OBJECTION)
    assert registry.requests == len(codec_module.REGISTRY_DELAYS) + 1
    registry.failures = 0
    codec._registry_paused_until = 0.0  # REGISTRY_PAUSE later
    assert codec.decode(data, OBJECTION) == (OBJECTION, EVENT)


def test_only_the_registrys_answer_that_an_id_does_not_exist_is_a_decode_error(quick):
    registry = StubRegistry()
    codec = Codec(registry)
    with pytest.raises(DecodeError, match="unknown schema id 9"):
        codec.decode(framed(9, OBJECTION, EVENT), OBJECTION)
    assert registry.requests == 1 and codec.registry_errors.value == 0  # not retried
    # a 404 that is not the registry's (a proxy, a wrong URL path) is no such answer
    codec = Codec(StubRegistry(failures=1, error=lambda: SchemaRegistryError(404, -1, "nginx")))
    assert codec.decode(framed(OBJECTION_ID, OBJECTION, EVENT), OBJECTION)[1] == EVENT
    codec = Codec(StubRegistry(failures=99, error=lambda: SchemaRegistryError(404, 404, "HTTP")))
    with pytest.raises(RegistryUnavailable):
        codec.decode(framed(OBJECTION_ID, OBJECTION, EVENT), OBJECTION)
    # an answer that is not a usable schema stays a DecodeError
    registry = StubRegistry()
    registry.schemas[9] = '{"type": "record", "name": "X", "fields": [{"name": "a"}]}'
    with pytest.raises(DecodeError, match="schema id 9 is not a usable Avro schema"):
        Codec(registry).decode(framed(9, OBJECTION, EVENT), OBJECTION)


def test_registering_an_output_schema_fails_closed(quick):
    registry = StubRegistry(failures=99)
    codec = Codec(registry)
    with pytest.raises(RegistryUnavailable, match="registering decisions-value"):
        codec.encode(DECISION, {}, "decisions")
    registry = StubRegistry(failures=2)
    subject_id = 100 + len("decisions-value")  # what the stub registers it as
    assert Codec(registry).wire_prefix(DECISION, "decisions")[1:] == struct.pack(">I", subject_id)
    conflict = StubRegistry(failures=1, error=lambda: SchemaRegistryError(409, 409, "Incompatible"))
    with pytest.raises(SchemaRegistryError, match="Incompatible"):  # an answer: not retried
        Codec(conflict).wire_prefix(DECISION, "decisions")
    assert conflict.requests == 1


def test_wait_for_registry_asks_again_until_it_answers_or_the_time_is_up(quick):
    registry = StubRegistry(failures=12)  # 5 requests a call: the third call answers
    codec = Codec(registry)
    data = framed(POST_ID, POST, POST_RECORD)
    waits = []
    user = wait_for_registry(
        lambda: codec.user_id_of(data, POST), 5, lambda exc, wait: waits.append(wait)
    )
    assert user == POST_RECORD["user_id"] and registry.requests == 13
    assert len(waits) >= 2  # calls during a pause fail without a request
    codec = Codec(StubRegistry(failures=float("inf")))
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable):
        wait_for_registry(lambda: codec.user_id_of(data, POST), 0.2)
    assert 0.15 < time.monotonic() - started < 1
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    with pytest.raises(RegistryUnavailable):
        wait_for_registry(lambda: codec.user_id_of(data, POST), 60, stop=stop.is_set)
    assert time.monotonic() - started < 2


# -- the re-keying stage ---------------------------------------------------------------
class Input:
    """A consumed input record, as confluent-kafka gives it."""

    def __init__(self, topic: str, value: bytes, offset: int = 5) -> None:
        self._topic, self._value, self._offset = topic, value, offset

    def topic(self):
        return self._topic

    def partition(self):
        return 0

    def offset(self):
        return self._offset

    def value(self):
        return self._value

    def key(self):
        return b"k"

    def headers(self):
        return None

    def timestamp(self):
        return (1, 1_000)


class Producer:
    def __init__(self) -> None:
        self.records = []

    def produce(self, topic, value, key, headers=None, timestamp=None):
        self.records.append((topic, key))


def _rekeyer(registry: StubRegistry, timeout: float = 5.0) -> Rekeyer:
    settings = Settings(registry_timeout=timeout)
    counts = [0] * 8
    blocked = threading.Event()
    return Rekeyer(settings, Codec(registry), threading.Event(), threading.Event(), counts, blocked)


def test_the_rekeying_stage_waits_for_the_registry_not_ready_meanwhile(quick):
    registry = StubRegistry(failures=12)
    rekeyer = _rekeyer(registry)
    seen_blocked = []
    get_schema = registry.get_schema

    def watched(schema_id):
        seen_blocked.append(rekeyer.blocked.is_set())
        return get_schema(schema_id)

    registry.get_schema = watched
    producer = Producer()
    objection = Input(rekeyer.settings.objections_topic, framed(OBJECTION_ID, OBJECTION, EVENT))
    rekeyer._forward(objection, producer, "internal")
    assert producer.records == [("internal", b"u1")]  # forwarded, not to the DLQ
    assert True in seen_blocked and not rekeyer.blocked.is_set()
    # an id the registry says does not exist: the DLQ, at once
    rekeyer._forward(
        Input(rekeyer.settings.posts_topic, framed(9, POST, POST_RECORD)), producer, "x"
    )
    assert producer.records[-1] == (rekeyer.settings.dlq_topic, b"k")


def test_the_rekeying_stage_stops_when_the_registry_stays_away(quick):
    rekeyer = _rekeyer(StubRegistry(failures=float("inf")), timeout=0.2)
    producer = Producer()
    objection = Input(rekeyer.settings.objections_topic, framed(OBJECTION_ID, OBJECTION, EVENT))
    with pytest.raises(RegistryUnavailable, match=r"objections\[0\]@5: no answer for"):
        rekeyer._forward(objection, producer, "internal")
    assert producer.records == [] and not rekeyer.blocked.is_set()


# -- the gate --------------------------------------------------------------------------
class Exited(SystemExit):
    pass


@pytest.fixture
def no_exit(monkeypatch):
    def exit_(code: int) -> None:
        raise Exited(code)

    monkeypatch.setattr(gate_positions.os, "_exit", exit_)


def _processor(registry: StubRegistry, timeout: float = 120.0) -> tuple[Processor, Recorder]:
    out = Recorder()
    consent = TableState(MemoryFaustTable(), "consent-changelog", out)
    ledger = TableState(MemoryFaustTable(), "ledger-changelog", out)
    recovered = threading.Event()
    recovered.set()
    app = SimpleNamespace(
        started=True,
        rebalancing=False,
        tables=SimpleNamespace(recovery=SimpleNamespace(in_recovery=False, completed=recovered)),
    )
    settings = Settings(partitions=1, registry_timeout=timeout)
    processor = Processor(
        app, settings, load_policy(), Codec(registry), consent, ledger, out, Metrics()
    )
    # as a worker does at start: no output waits for the registry later
    failures, registry.failures = registry.failures, 0
    register_output_schemas(processor.codec, settings)
    registry.failures = failures
    processor.offsets.start(0, 0)
    asked = []
    processor.positions.reposition = lambda partition, expected: asked.append((partition, expected))
    processor.asked = asked
    return processor, out


def test_the_gate_reads_a_record_again_once_the_registry_answers(quick, no_exit):
    registry = StubRegistry(failures=float("inf"))
    processor, out = _processor(registry)
    assert processor.ready()
    objection = _message(KIND_OBJECTION, framed(OBJECTION_ID, OBJECTION, EVENT), 0, "u1")
    post = _message(KIND_POST, PLAIN.encode(POST, {**POST_RECORD, "user_id": "u1"}), 1, "u1")
    processor.process([objection, post])  # the native fast path, where it is built
    assert out.records == [] and processor.metrics.dlq == {}
    assert processor.offsets.expected == {0: 0} and processor.offsets.to_commit() == {}
    assert not processor.ready() and 0 in processor.positions.blocked
    processor.positions.retry()  # not yet: REPOSITION_RETRY after the failure
    assert processor.asked == []
    processor.positions.repositioning[0] -= gate_positions.REPOSITION_RETRY + 1
    processor.positions.retry()
    assert processor.asked == [(0, 0)]  # the seek back to the objection
    registry.failures = 0
    processor.codec._registry_paused_until = 0.0
    processor.process([objection, post])  # read again after the seek
    assert processor.ready() and processor.positions.blocked == {}
    assert processor.metrics.objections["OBJECT"] == 1
    assert processor.metrics.decisions[("BLOCKED", "OBJECTED")] == 1
    assert processor.offsets.to_commit() == {0: 2}
    assert processor.metrics.dlq == {}


def test_the_gate_stops_when_a_record_waits_longer_than_the_registry_timeout(quick, no_exit):
    processor, out = _processor(StubRegistry(failures=float("inf")), timeout=1.0)
    objection = _message(KIND_OBJECTION, framed(OBJECTION_ID, OBJECTION, EVENT), 0, "u1")
    processor.process_one(objection)
    processor.positions.retry()  # within the timeout
    processor.positions.blocked[0] -= 2
    with pytest.raises(Exited) as exited:
        processor.positions.retry()
    assert exited.value.code == 70 and out.records == []
    assert processor.offsets.to_commit() == {}


def test_a_revoked_partition_is_no_longer_waited_for(quick, no_exit):
    processor, _ = _processor(StubRegistry(failures=float("inf")))
    processor.process_one(_message(KIND_POST, framed(POST_ID, POST, POST_RECORD), 0, "u1"))
    assert not processor.ready()
    processor.forget(0)
    assert processor.ready() and processor.offsets.admit(0, 0) is Admit.UNKNOWN


def test_the_metric_counts_failed_requests_of_gate_and_stage(quick):
    metrics = Metrics()
    codec = Codec(StubRegistry(failures=2))
    codec.decode(framed(OBJECTION_ID, OBJECTION, EVENT))
    metrics.codec = codec
    metrics.stage = SimpleNamespace(
        registry_errors=SimpleNamespace(value=5),
        inputs=dict,
        dlq=dict,
        skipped=dict,
    )
    assert "\nenforcer_schema_registry_errors_total 7.0\n" in metrics.render(True)
