"""The Quix Streams peer of the benchmark decides what the enforcer decides (issue 20).

The same workload as the Kafka Streams peer's test (``tests/test_peer_streams.py``), with
the same harness (``tests/peers_support.py``): objection events (repeats, a future-dated
one); posts with malformed records and re-sent posts; objection events that retract
published posts. A peer of two gate processes runs beside the enforcer while it is fed
phase by phase; then a peer of one gate process is started as the benchmark starts it, on
inputs that already hold the first two phases. Each must write the enforcer's decisions
per post (outcome, reason, cause, source), final training-ingest, retractions, consent
receipts and dead letters, in the enforcer's Avro encoding, byte for byte (clock fields
aside).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import peers_support as peers
from tests.support import ROOT, Names, Reader, Sender, create_topics, objection, post

PEER_PYTHON = ROOT / ".venv-peer" / "bin" / "python"  # make test builds it
pytestmark = pytest.mark.skipif(
    not PEER_PYTHON.exists(), reason="no .venv-peer (make test builds it)"
)

WAIT = 180  # seconds for a system to catch up with a phase (a loaded machine)


def _start_peer(
    kafka: str, names: Names, prefix: str, tmp: Path, processes: int
) -> subprocess.Popen:
    """A Quix peer on the inputs of ``names``, writing to ``prefix``'s topics, started as
    the benchmark starts it; /ready polled."""

    def cmd(outputs: dict[str, str], port: int) -> list[str]:
        return [
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
            str(peers.PARTITIONS),
            "--processes",
            str(processes),
            "--web-port",
            str(port),
        ]

    return peers.launch(kafka, prefix, tmp / "peer-quix.log", cmd, timeout=120)


@pytest.fixture(scope="module")
def run(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[peers.Run]:
    """The enforcer and a peer of two gate processes, fed phase by phase, each phase once
    both have processed the one before."""
    yield from peers.run_alongside(
        kafka,
        "peer-quix",
        tmp_path_factory,
        ["quix"],
        lambda _, names, prefix, tmp: _start_peer(kafka, names, prefix, tmp, processes=2),
        WAIT,
    )


def test_peer_running_alongside_decides_what_the_enforcer_decides(run: peers.Run) -> None:
    assert run.outputs["enforcer"]["dlq"]  # malformed records were sent
    peers.check_alongside(run, "quix")


def test_peer_started_on_existing_data_decides_what_the_enforcer_decided(
    kafka: str, run: peers.Run, tmp_path: Path
) -> None:
    """As the benchmark runs it: objection events, then posts, all on the inputs before the
    peer starts (its re-keying must forward a user's objections before their posts)."""
    got, expected = peers.late_peer(
        kafka,
        run,
        "peer-quix",
        lambda _, names, prefix, tmp: _start_peer(kafka, names, prefix, tmp, processes=1),
        tmp_path,
        WAIT,
    )
    peers.check_encoding(got)
    assert any(r.value["reason"] == "OBJECTED" for r in got["decisions"])
    peers.compare(got, expected)


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
        assert peers.stop_peer(proc) == 0
    finally:
        peers.stop_peer(proc)
        decisions.close()
    reasons = {r.key.decode(): r.value["reason"] for r in decisions.records}
    assert reasons == {f"post-{u}": "OBJECTED" for u in late}
