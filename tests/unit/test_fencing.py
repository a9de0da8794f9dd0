"""Fencing (``--fencing on``, docs/operations.md "Fencing"): every record the gate writes
for an input of internal partition p -- outputs, DLQ records, changelog records of
consent and ledger, held ledger removals -- goes through p's own transactional producer,
in its open transaction; nothing is written for a partition that has no producer here;
a failed commit stops the worker. No Kafka: the producers are recording stand-ins."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException

import streams.kafka.outputs as outputs_module
from streams.core.policy import load_policy
from streams.core.records import KIND_OBJECTION, KIND_POST, partition_for_user
from streams.gate import native
from streams.gate.metrics import Metrics
from streams.gate.processor import Processor
from streams.kafka.outputs import OutputProducer, Partition
from streams.serde.codec import OBJECTION, POST
from streams.settings import Settings
from streams.state.ledger import DIRTY_KEY, TableState
from tests.unit.test_splice import CODEC, POST_RECORD, MemoryFaustTable, _message

LEDGER, CONSENT = "ledger-changelog", "consent-changelog"


class FakeProducer:
    """A transactional confluent-kafka producer as the gate uses it."""

    def __init__(self, fail_commit: bool = False) -> None:
        self.records: list[tuple] = []
        self.calls: list[str] = []
        self.fail_commit = fail_commit

    def produce(self, topic, value=None, key=None, partition=-1, headers=None) -> None:
        self.records.append((topic, key, value, partition))

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def commit_transaction(self, timeout: float | None = None) -> None:
        if self.fail_commit:
            raise KafkaException(KafkaError(KafkaError._FENCED, "fenced", fatal=True))
        self.calls.append("commit")

    def abort_transaction(self, timeout: float | None = None) -> None:
        self.calls.append("abort")

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float | None = None) -> int:
        return 0


def user_of(partition: int, partitions: int = 2, prefix: str = "u") -> str:
    """A user id whose internal partition is ``partition``."""
    n = 0
    while partition_for_user(f"{prefix}{n}".encode(), partitions) != partition:
        n += 1
    return f"{prefix}{n}"


def fenced_gate(producers: dict[int, FakeProducer]) -> tuple[Processor, OutputProducer]:
    settings = Settings(partitions=2, fencing=True)
    out = OutputProducer(settings)
    out.add([Partition(p, producer, out.produce_when_room) for p, producer in producers.items()])
    consent = TableState(MemoryFaustTable(2), CONSENT, out)
    ledger = TableState(MemoryFaustTable(2), LEDGER, out)
    processor = Processor(None, settings, load_policy(), CODEC, consent, ledger, out, Metrics())
    processor.offsets.start(0, 0)
    processor.offsets.start(1, 0)
    return processor, out


def post(partition: int, offset: int, post_id: str) -> SimpleNamespace:
    user = user_of(partition)
    value = CODEC.encode(POST, {**POST_RECORD, "user_id": user, "post_id": post_id})
    message = _message(KIND_POST, value, offset, user)
    message.partition = partition
    return message


def objection(partition: int, offset: int) -> SimpleNamespace:
    user = user_of(partition)
    event = {
        "event_id": f"e-{partition}-{offset}",
        "user_id": user,
        "action": "OBJECT",
        "platform": None,
        "occurred_at": 1_700_000_000_000,
        "channel": "IN_APP",
    }
    message = _message(KIND_OBJECTION, CODEC.encode(OBJECTION, event), offset, user)
    message.partition = partition
    return message


def users_in(records: list[tuple]) -> set[str]:
    """The users of the ledger changelog records among ``records``."""
    return {
        r[1][2 : 2 + int.from_bytes(r[1][:2], "big")].decode() for r in records if r[0] == LEDGER
    }


@pytest.mark.parametrize("path", ["python", "native"])
def test_each_partitions_records_go_through_its_own_producer(path: str) -> None:
    if path == "native" and not native.available():
        pytest.skip("the C extension is not built here")
    producers = {0: FakeProducer(), 1: FakeProducer()}
    processor, out = fenced_gate(producers)
    if path == "python":
        processor.fast_path.gate = False
        for message in [post(0, 0, "a"), post(1, 0, "b"), post(0, 1, "c"), objection(1, 1)]:
            processor.process_one(message)
    else:
        processor.process([post(0, 0, "a"), post(0, 1, "c")], partition=0)
        processor.process([post(1, 0, "b"), objection(1, 1)], partition=1)
    assert processor.offsets.expected == {0: 2, 1: 2}
    for partition, producer in producers.items():
        mine = {r[1] for r in producer.records if r[0] == "training-ingest"}
        assert mine == ({b"a", b"c"} if partition == 0 else {b"b"})
        changelog = [r for r in producer.records if r[0] in (LEDGER, CONSENT)]
        assert changelog and {r[3] for r in changelog} == {partition}
        assert users_in(changelog) == {user_of(partition)}
        assert producer.calls == ["begin"]  # one transaction, open until the commit
    # partition 1's objection retracted "b": a tombstone in its transaction, the
    # ledger's removal held until the commit settles it, then in the same transaction
    assert ("training-ingest", b"b", None) in [r[:3] for r in producers[1].records]
    before = len(producers[1].records)
    processor.checkpoint.settle()
    settled = producers[1].records[before:]
    assert [(r[0], r[2], r[3]) for r in settled] == [(LEDGER, None, 1)]
    out.commit()
    assert all(p.calls == ["begin", "commit"] for p in producers.values())
    assert not out.in_transaction()


def test_nothing_is_written_for_a_partition_without_a_producer() -> None:
    producers = {0: FakeProducer()}  # partition 1 is not (or not yet) initialised here
    processor, out = fenced_gate(producers)
    asked = []
    processor.positions.reposition = lambda partition, expected: asked.append((partition, expected))
    processor.fast_path.gate = False
    processor.process_one(post(1, 0, "b"))
    processor.process([post(1, 0, "b")], partition=1)
    assert processor.offsets.expected[1] == 0  # read again later, not decided
    assert producers[0].records == [] and not out.in_transaction()
    assert 1 in processor.positions.repositioning


def test_a_failed_commit_stops_the_worker_and_leaves_its_open_partitions_marked(
    monkeypatch,
) -> None:
    producers = {0: FakeProducer(), 1: FakeProducer(fail_commit=True)}
    processor, out = fenced_gate(producers)
    processor.fast_path.gate = False
    processor.process_one(post(0, 0, "a"))
    processor.process_one(post(1, 0, "b"))

    def exit_(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr(outputs_module.os, "_exit", exit_)
    with pytest.raises(SystemExit) as stopped:
        out.commit()
    assert stopped.value.code == 70
    # both were open when the worker stopped: their databases are emptied when opened next
    for partition in (0, 1):  # each published a post: a ledger entry
        assert processor.ledger.state.get(partition, DIRTY_KEY) is not None


def test_failed_deliveries_stop_the_worker_except_records_of_an_aborted_transaction(
    monkeypatch,
) -> None:
    out = OutputProducer(Settings(partitions=2, fencing=True))
    monkeypatch.setattr(outputs_module.os, "_exit", lambda code: (_ for _ in ()).throw(SystemExit))
    msg = SimpleNamespace(topic=lambda: "training-ingest", partition=lambda: 0)
    out._delivered(KafkaError(KafkaError._PURGE_QUEUE), msg)  # aborted on revocation
    with pytest.raises(SystemExit):
        out._delivered(KafkaError(KafkaError._FENCED, "fenced", fatal=True), msg)


def test_revoked_partitions_abort_their_open_transaction() -> None:
    producers = {0: FakeProducer(), 1: FakeProducer()}
    processor, out = fenced_gate(producers)
    processor.fast_path.gate = False
    processor.process_one(post(0, 0, "a"))
    out.drop([0, 1])
    assert producers[0].calls == ["begin", "abort"] and producers[1].calls == []
    assert out.partitions == {} and not out.use(0)
