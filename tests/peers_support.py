"""The harness of the benchmark peers' tests (issue 20): ``tests/test_peer_streams.py``
(Kafka Streams) and ``tests/test_peer_quix.py`` (Quix Streams).

A small workload fed in three phases: objection events (repeats, a future-dated one);
posts with malformed records and re-sent posts; objection events that retract published
posts. The enforcer and the peers run side by side while it is fed, each phase once every
system has processed the one before (``run_alongside``); then a peer is started on inputs
that already hold the first two phases (``late_peer``). Each peer must write the
enforcer's decisions per post (outcome, reason, cause, source), final training-ingest,
retractions, consent receipts and dead letters, in the enforcer's Avro encoding, byte for
byte (clock fields aside): ``check_encoding`` and ``compare``.
"""

from __future__ import annotations

import dataclasses
import random
import signal
import subprocess
import time
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.peer_streams import BuildError, build, missing_tools
from streams.traffic.generator import TrafficGenerator
from tests.enforcer_env import Deployment
from tests.support import (
    CODEC,
    ROOT,
    Names,
    Reader,
    Record,
    Sender,
    create_topics,
    free_port,
    live_view,
)

PARTITIONS = 4  # of the internal topics (the enforcer's and the peers')
INPUT_PARTITIONS = 3  # inputs partitioned otherwise, as upstream producers may
USERS, POSTS, BAD, EVENTS = 150, 500, 12, 40
OUTPUTS = ("decisions", "training", "retractions", "receipts", "dlq")
RECORD_NAMES = {
    "decisions": "Decision",
    "training": "TrainingRecord",
    "retractions": "Retraction",
    "receipts": "ConsentReceipt",
}
FUTURE_MS = 86_400_000  # a day ahead: applied at the time it is read (max clock skew 5 min)

Sent = tuple[str, str, int, bytes | None, bytes | None]  # kind, topic kind, partition, key, value
# starts a peer: (its name in the run, the inputs' names, its topics' prefix, a directory)
StartPeer = Callable[[str, Names, str, Path], subprocess.Popen]

needs_streams_peer = pytest.mark.skipif(
    missing_tools() is not None, reason=f"Kafka Streams peer not testable: {missing_tools()}"
)


def streams_jar() -> Path:
    """The Kafka Streams peer's jar, built if need be (for a module-scoped fixture)."""
    try:
        return build()
    except BuildError as exc:  # a broken build is a failure, not a skip
        pytest.fail(str(exc), pytrace=False)


class System:
    """One system under test: its process, its output topics and readers of them."""

    def __init__(self, kafka: str, name: str, outputs: dict[str, str], proc: Any) -> None:
        self.name = name
        self.outputs = outputs
        self.proc = proc  # a tests.support.Worker or a subprocess.Popen
        self.readers = {o: Reader(kafka, t) for o, t in outputs.items()}

    def alive(self) -> bool:
        alive = getattr(self.proc, "alive", None)
        return alive() if alive else self.proc.poll() is None

    def wait(self, posts: int, receipts: int, bad: int, timeout: float = 90) -> None:
        """Until every post has a decision, and every objection a receipt or a dead letter."""
        goals = {
            "decisions": lambda rs: len({r.key for r in rs}) >= posts,
            "receipts": lambda rs: len(rs) >= receipts,
            "dlq": lambda rs: len(rs) >= bad,
        }
        deadline = time.monotonic() + timeout
        for out, done in goals.items():
            reader = self.readers[out]
            while not done(reader.records):
                assert self.alive(), f"{self.name} exited while waiting for {out}"
                assert time.monotonic() < deadline, f"{self.name}: timed out waiting for {out}"
                reader.poll(0.3)

    def snapshot(self) -> dict[str, list[Record]]:
        """Everything written so far (read until quiet)."""
        return {o: list(r.settle(1.0)) for o, r in self.readers.items()}

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()


def phases(gen: TrafficGenerator) -> list[list[Sent]]:
    """Objection events (a few repeated, one dated in the future); posts with malformed
    records, a re-sent post and a re-sent post made private; objection events again, which
    retract published posts. Each record on a fixed input partition: a user's objection
    events on one, posts anywhere (a re-sent post on the partition of the first)."""
    rnd = random.Random(7)

    def sent(kind: str, topic_kind: str, key: bytes | None, value: bytes | None) -> Sent:
        partition = rnd.randrange(INPUT_PARTITIONS)
        if kind == "objection":  # a user's events in order: their order across partitions
            user = CODEC.decode(value, "ObjectionEvent")[1]["user_id"]  # is neither system's
            partition = zlib.crc32(user.encode()) % INPUT_PARTITIONS
        return (kind, topic_kind, partition, key, value)

    def events(n: int) -> list[Sent]:
        out = []
        for i in range(n):
            e = gen.objection()
            out.append(
                sent("objection", "objections", e["event_id"].encode(), _enc("ObjectionEvent", e))
            )
            if i % 10 == 0:  # the same event delivered twice
                out.append(out[-1])
        return out

    first = [sent(g.kind, g.topic_kind, g.key, g.value) for g in gen.objections_for_all_objectors()]
    first += events(EVENTS)
    future = {**gen.objection(1), "action": "WITHDRAW"}
    future["occurred_at"] = int(time.time() * 1000) + FUTURE_MS
    first.append(sent("objection", "objections", None, _enc("ObjectionEvent", future)))
    second: list[Sent] = []
    for i in range(POSTS):
        p = gen.post()
        key = p["post_id"].encode()
        second.append(sent("post", "posts", key, _enc("Post", p)))
        if i % 50 == 0:  # re-sent as it was, and re-sent made private
            kind, topic_kind, partition, _, _ = second[-1]  # on its partition: in order
            second.append(second[-1])
            private = _enc("Post", {**p, "visibility": "PRIVATE"})
            second.append((kind, topic_kind, partition, key, private))
        if i % (POSTS // BAD) == 0:
            bad = gen.bad()
            second.append(sent(bad.kind, bad.topic_kind, bad.key, bad.value))
    return [first, second, events(EVENTS)]


def _enc(name: str, datum: dict[str, Any]) -> bytes:
    return CODEC.encode(name, datum)


def feed(kafka: str, names: Names, records: list[Sent]) -> tuple[int, int, int]:
    """Send records in order; (post ids, objection records, malformed records) sent."""
    sender = Sender(kafka)
    topics = {"posts": names.posts, "objections": names.objections}
    for _kind, topic_kind, partition, key, value in records:
        sender.raw(topics[topic_kind], value, key, partition)
    sender.flush()
    posts = {CODEC.decode(v)[1]["post_id"] for k, _t, _p, _key, v in records if k == "post"}
    return (
        len(posts),
        sum(k == "objection" for k, *_ in records),
        sum(k == "bad" for k, *_ in records),
    )


def peer_outputs(prefix: str) -> dict[str, str]:
    return {o: f"{prefix}-{o}" for o in OUTPUTS}


def launch(
    kafka: str,
    prefix: str,
    log_path: Path,
    command: Callable[[dict[str, str], int], list[str]],
    timeout: float,
) -> subprocess.Popen:
    """A peer writing to ``prefix``'s topics (created here), started by ``command(its
    output topics, a web port)`` with its output in ``log_path``; /ready polled for up to
    ``timeout`` seconds."""
    outputs = peer_outputs(prefix)
    create_topics(kafka, {t: PARTITIONS for t in outputs.values()})
    port = free_port()
    cmd = command(outputs, port)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + timeout
    while not _ready(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(log_path.read_text(errors="replace")[-3000:])
        time.sleep(0.2)
    return proc


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def stop_peer(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("the peer did not stop within 60 s of SIGTERM") from None
    return proc.returncode


@dataclasses.dataclass
class Run:
    """What each system wrote: after phases 1-2 (the enforcer only) and after all three."""

    names: Names
    sent: list[list[Sent]]
    posts: int
    enforcer_two_phases: dict[str, list[Record]]
    outputs: dict[str, dict[str, list[Record]]]  # by system name
    exits: dict[str, int]  # by peer name


def run_alongside(
    kafka: str,
    label: str,
    tmp_path_factory: pytest.TempPathFactory,
    peers: Iterable[str],
    start: StartPeer,
    wait: float,
) -> Iterator[Run]:
    """The enforcer and a peer of each name in ``peers`` (on ``label``'s inputs, each
    writing to its own topics), all running while the workload is fed phase by phase, each
    phase once every system has processed the one before; for a module-scoped fixture."""
    names = Names(f"{label}-{uuid.uuid4().hex[:8]}")
    create_topics(kafka, {names.posts: INPUT_PARTITIONS, names.objections: INPUT_PARTITIONS})
    env = Deployment(kafka, names, tmp_path_factory.mktemp("enforcer"), PARTITIONS).create_topics()
    systems: list[System] = []
    try:
        systems.append(
            System(kafka, "enforcer", {o: getattr(names, o) for o in OUTPUTS}, env.worker())
        )
        for peer in peers:
            prefix = f"{names.prefix}-{peer}"
            proc = start(peer, names, prefix, tmp_path_factory.mktemp(peer))
            systems.append(System(kafka, peer, peer_outputs(prefix), proc))
        sent = phases(TrafficGenerator(USERS, seed=20, objector_share=0.3, objection_rate=0.0))
        posts = receipts = bad = 0
        two_phases: dict[str, list[Record]] = {}
        for i, phase in enumerate(sent):
            n_posts, n_receipts, n_bad = feed(kafka, names, phase)
            posts, receipts, bad = posts + n_posts, receipts + n_receipts, bad + n_bad
            for system in systems:
                system.wait(posts, receipts, bad, wait)
            if i == 1:
                two_phases = systems[0].snapshot()
        outputs = {s.name: s.snapshot() for s in systems}
        exits = {s.name: stop_peer(s.proc) for s in systems[1:]}
        yield Run(names, sent, posts, two_phases, outputs, exits)
    finally:
        for system in systems:
            if system.name != "enforcer":
                stop_peer(system.proc)
            system.close()
        env.close()


def late_peer(
    kafka: str, run: Run, label: str, start: StartPeer, tmp: Path, wait: float
) -> tuple[dict[str, list[Record]], dict[str, list[Record]]]:
    """As the benchmark runs a peer: the first two phases of ``run`` (objection events, then
    posts) all on new inputs before it starts. What it wrote (once it stopped cleanly), and
    what the enforcer of ``run`` wrote while they were fed, as if from these inputs."""
    names = Names(f"{label}-late-{uuid.uuid4().hex[:8]}")
    create_topics(kafka, {names.posts: INPUT_PARTITIONS, names.objections: INPUT_PARTITIONS})
    posts, receipts, bad = feed(kafka, names, run.sent[0] + run.sent[1])
    prefix = f"{names.prefix}-late"
    proc = start("late", names, prefix, tmp)
    peer = System(kafka, "late peer", peer_outputs(prefix), proc)
    try:
        peer.wait(posts, receipts, bad, wait)
        got = peer.snapshot()
        assert stop_peer(proc) == 0
    finally:
        stop_peer(proc)
        peer.close()
    expected = {
        o: _renamed(rs, run.names.prefix.encode(), names.prefix.encode())
        for o, rs in run.enforcer_two_phases.items()
    }
    return got, expected


def _renamed(records: list[Record], old: bytes, new: bytes) -> list[Record]:
    """Records as if read from the input topics of another run (source topic renamed)."""
    out = []
    for r in records:
        raw = r.raw
        if r.raw is not None and r.topic.endswith(("-decisions", "-receipts")):
            name = "Decision" if r.topic.endswith("-decisions") else "ConsentReceipt"
            value = CODEC.decode(r.raw, name)[1]
            value["source_topic"] = value["source_topic"].replace(old.decode(), new.decode())
            raw = CODEC.encode(name, value)
        headers = {
            k: v.replace(old, new) if k == "source.topic" else v for k, v in r.headers.items()
        }
        out.append(dataclasses.replace(r, raw=raw, headers=headers))
    return out


def check_alongside(run: Run, peer: str) -> None:
    """The peer ``peer`` of ``run`` stopped cleanly and wrote what the enforcer wrote, a
    decision for every post; the workload made the enforcer retract posts and clamp a
    future-dated objection event."""
    got, expected = run.outputs[peer], run.outputs["enforcer"]
    assert run.exits[peer] == 0  # a clean stop on SIGTERM
    check_encoding(got)
    assert len({r.key for r in got["decisions"]}) == run.posts
    assert any(r.value["outcome"] == "RETRACTED" for r in expected["decisions"])
    assert any(r.value["outcome"] == "CLAMPED_FROM_FUTURE" for r in expected["receipts"])
    compare(got, expected)


def _decisions(records: list[Record]) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for r in records:
        d = r.value
        out.setdefault(r.key.decode(), []).append(
            tuple(v for k, v in d.items() if k != "decided_at")
        )
    return out


def _training(records: list[Record]) -> dict[str, dict[str, Any]]:
    return {
        post_id: {k: v for k, v in rec.items() if k != "decided_at"}
        for post_id, rec in live_view(records).items()
    }


def _retractions(records: list[Record]) -> list[tuple]:
    return sorted(
        (r.key, *(repr(v) for k, v in r.value.items() if k != "retracted_at")) for r in records
    )


def _receipts(records: list[Record]) -> dict[tuple, dict[str, Any]]:
    out = {}
    for r in records:
        v = dict(r.value)
        del v["applied_at"]
        if v["outcome"] == "CLAMPED_FROM_FUTURE":  # applied at the time each system read it
            del v["applied_occurred_at"]
        out[(v["source_partition"], v["source_offset"])] = v
    return out


def _dead_letters(records: list[Record]) -> list[tuple]:
    return sorted(
        (
            r.headers["source.topic"],
            int(r.headers["source.partition"]),
            int(r.headers["source.offset"]),
            r.key,
            r.raw,
        )
        for r in records
    )


def check_encoding(got: dict[str, list[Record]]) -> None:
    """Every value is the enforcer's encoding of what it holds: decoded and encoded again by
    the enforcer's codec, the same bytes."""
    for o, name in RECORD_NAMES.items():
        for r in got[o]:
            if r.raw is not None:
                assert CODEC.encode(name, CODEC.decode(r.raw, name)[1]) == r.raw, (o, r.raw)


def compare(got: dict[str, list[Record]], expected: dict[str, list[Record]]) -> None:
    """The same decisions per post, final training-ingest, retractions, receipts and dead
    letters, and nothing written twice."""
    reference, decisions = _decisions(expected["decisions"]), _decisions(got["decisions"])
    differ = {
        p: (reference.get(p), decisions.get(p))
        for p in reference.keys() | decisions.keys()
        if reference.get(p) != decisions.get(p)
    }
    assert not differ, f"{len(differ)} posts decided otherwise, e.g. {list(differ.items())[:3]}"
    assert _training(got["training"]) == _training(expected["training"])
    assert _retractions(got["retractions"]) == _retractions(expected["retractions"])
    assert _receipts(got["receipts"]) == _receipts(expected["receipts"])
    assert _dead_letters(got["dlq"]) == _dead_letters(expected["dlq"])
    assert len(got["decisions"]) == len(expected["decisions"])
