"""The Quix Streams peer of the benchmark decides what the enforcer decides (issue 20).

The same workload as the Kafka Streams peer's test (``tests/test_peer_streams.py``, whose
helpers this uses): objection events (repeats, a future-dated one); posts with malformed
records and re-sent posts; objection events that retract published posts. A peer of two
gate processes runs beside the enforcer while it is fed phase by phase; then a peer of one
gate process is started as the benchmark starts it, on inputs that already hold the first
two phases. Each must write the enforcer's decisions per post (outcome, reason, cause,
source), final training-ingest, retractions, consent receipts and dead letters, in the
enforcer's Avro encoding, byte for byte (clock fields aside).
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.traffic.generator import TrafficGenerator
from tests.enforcer_env import Deployment
from tests.support import (
    ROOT,
    Names,
    Reader,
    Record,
    Sender,
    create_topics,
    free_port,
    objection,
    post,
)
from tests.test_peer_streams import (
    INPUT_PARTITIONS,
    OUTPUTS,
    USERS,
    Sent,
    System,
    _check_encoding,
    _compare,
    _feed,
    _phases,
    _ready,
    _renamed,
    _stop_peer,
)

PEER_PYTHON = ROOT / ".venv-peer" / "bin" / "python"  # make test builds it
pytestmark = pytest.mark.skipif(
    not PEER_PYTHON.exists(), reason="no .venv-peer (make test builds it)"
)

PARTITIONS = 4  # of the internal topics (the enforcer's and the peer's)
WAIT = 180  # seconds for a system to catch up with a phase (a loaded machine)


def _outputs(prefix: str) -> dict[str, str]:
    return {o: f"{prefix}-{o}" for o in OUTPUTS}


def _start_peer(
    kafka: str, names: Names, prefix: str, tmp: Path, processes: int
) -> subprocess.Popen:
    """A Quix peer on the inputs of ``names``, writing to ``prefix``'s topics, started as
    the benchmark starts it; /ready polled."""
    outputs = _outputs(prefix)
    create_topics(kafka, {t: PARTITIONS for t in outputs.values()})
    port = free_port()
    cmd = [
        str(PEER_PYTHON),
        "-m",
        "bench.peer_quix",
        "--bootstrap-servers",
        kafka,
        "--app-id",
        f"{prefix}-app",
        "--posts-topic",
        names.posts,
        "--objections-topic",
        names.objections,
        *(arg for o, t in outputs.items() for arg in (f"--{o}-topic", t)),
        "--state-dir",
        str(tmp / "state"),
        "--partitions",
        str(PARTITIONS),
        "--processes",
        str(processes),
        "--web-port",
        str(port),
    ]
    log_path = tmp / "peer-quix.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 120
    while not _ready(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(log_path.read_text(errors="replace")[-3000:])
        time.sleep(0.2)
    return proc


@dataclasses.dataclass
class Run:
    """What each system wrote: after phases 1-2 (the enforcer only) and after all three."""

    names: Names
    sent: list[list[Sent]]
    posts: int
    enforcer_two_phases: dict[str, list[Record]]
    outputs: dict[str, dict[str, list[Record]]]
    exit: int


@pytest.fixture(scope="module")
def run(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """The enforcer and a peer of two gate processes, fed phase by phase, each phase once
    both have processed the one before."""
    names = Names(f"peer-quix-{uuid.uuid4().hex[:8]}")
    create_topics(kafka, {names.posts: INPUT_PARTITIONS, names.objections: INPUT_PARTITIONS})
    env = Deployment(kafka, names, tmp_path_factory.mktemp("enforcer"), PARTITIONS).create_topics()
    systems: list[System] = []
    try:
        systems.append(
            System(kafka, "enforcer", {o: getattr(names, o) for o in OUTPUTS}, env.worker())
        )
        prefix = f"{names.prefix}-quix"
        proc = _start_peer(kafka, names, prefix, tmp_path_factory.mktemp("quix"), processes=2)
        systems.append(System(kafka, "quix", _outputs(prefix), proc))
        phases = _phases(TrafficGenerator(USERS, seed=20, objector_share=0.3, objection_rate=0.0))
        posts = receipts = bad = 0
        two_phases: dict[str, list[Record]] = {}
        for i, phase in enumerate(phases):
            n_posts, n_receipts, n_bad = _feed(kafka, names, phase)
            posts, receipts, bad = posts + n_posts, receipts + n_receipts, bad + n_bad
            for system in systems:
                system.wait(posts, receipts, bad, WAIT)
            if i == 1:
                two_phases = systems[0].snapshot()
        outputs = {s.name: s.snapshot() for s in systems}
        exit_code = _stop_peer(proc)
        yield Run(names, phases, posts, two_phases, outputs, exit_code)
    finally:
        for system in systems:
            if system.name != "enforcer":
                _stop_peer(system.proc)
            system.close()
        env.close()


def test_peer_running_alongside_decides_what_the_enforcer_decides(run: Run) -> None:
    got, expected = run.outputs["quix"], run.outputs["enforcer"]
    assert run.exit == 0  # a clean stop on SIGTERM
    _check_encoding(got)
    assert len({r.key for r in got["decisions"]}) == run.posts
    assert any(r.value["outcome"] == "RETRACTED" for r in expected["decisions"])
    assert any(r.value["outcome"] == "CLAMPED_FROM_FUTURE" for r in expected["receipts"])
    assert expected["dlq"]  # malformed records were sent
    _compare(got, expected)


def test_peer_started_on_existing_data_decides_what_the_enforcer_decided(
    kafka: str, run: Run, tmp_path: Path
) -> None:
    """As the benchmark runs it: objection events, then posts, all on the inputs before the
    peer starts (its re-keying must forward a user's objections before their posts)."""
    names = Names(f"peer-quix-late-{uuid.uuid4().hex[:8]}")
    create_topics(kafka, {names.posts: INPUT_PARTITIONS, names.objections: INPUT_PARTITIONS})
    posts, receipts, bad = _feed(kafka, names, run.sent[0] + run.sent[1])
    prefix = f"{names.prefix}-late"
    proc = _start_peer(kafka, names, prefix, tmp_path, processes=1)
    peer = System(kafka, "late peer", _outputs(prefix), proc)
    try:
        peer.wait(posts, receipts, bad, WAIT)
        got = peer.snapshot()
        assert _stop_peer(proc) == 0
    finally:
        _stop_peer(proc)
        peer.close()
    expected = {
        o: _renamed(rs, run.names.prefix.encode(), names.prefix.encode())
        for o, rs in run.enforcer_two_phases.items()
    }
    _check_encoding(got)
    assert any(r.value["reason"] == "OBJECTED" for r in got["decisions"])
    _compare(got, expected)


def test_posts_wait_for_a_backlog_of_objections(kafka: str, tmp_path: Path) -> None:
    """Objection events several fetches long, then posts of the users objecting last: the
    re-keying stage reads both topics at once, and must hold the posts until every
    objection that was on the inputs when they were read is forwarded (else they are
    published, as the first fetch brings them with only the first objections)."""
    names = Names(f"peer-quix-backlog-{uuid.uuid4().hex[:8]}")
    create_topics(kafka, {names.posts: 1, names.objections: 1})
    users = [f"user-{i:05d}-{'x' * 40}" for i in range(30_000)]  # about 4 MB of events
    sender = Sender(kafka)
    sender.objections(names.objections, (objection(f"event-{u}", u) for u in users))
    sender.flush()
    late = users[-100:]
    sender.posts(names.posts, (post(f"post-{u}", u) for u in late)).flush()
    proc = _start_peer(kafka, names, f"{names.prefix}-q", tmp_path, processes=1)
    decisions = Reader(kafka, f"{names.prefix}-q-decisions")
    try:
        decisions.wait_count(len(late), timeout=WAIT)
        assert _stop_peer(proc) == 0
    finally:
        _stop_peer(proc)
        decisions.close()
    reasons = {r.key.decode(): r.value["reason"] for r in decisions.records}
    assert reasons == {f"post-{u}": "OBJECTED" for u in late}
