"""The Kafka Streams peer of the benchmark decides what the enforcer decides (issue 20).

The enforcer and two peers (at-least-once and exactly_once_v2) run side by side while a
small workload is fed in three phases, each once every system has processed the one
before: objection events (repeats, a future-dated one); posts with malformed records and
re-sent posts; objection events that retract published posts. Each peer must write the
enforcer's decisions per post (outcome, reason, cause, source), final training-ingest,
retractions, consent receipts and dead letters, in the enforcer's Avro encoding, byte for
byte. Then a peer is started, as the benchmark starts it, on inputs that already hold the
first two phases, and must decide what the enforcer decided while they were fed. The
harness is ``tests/peers_support.py``'s, shared with the Quix Streams peer's test.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.peer_streams import GUARANTEES, command
from streams.settings import Settings
from tests import peers_support as peers
from tests.support import Names

pytestmark = peers.needs_streams_peer


def _start_peer(
    kafka: str, names: Names, prefix: str, guarantee: str, tmp: Path
) -> subprocess.Popen:
    """A peer on the inputs of ``names``, writing to ``prefix``'s topics; /ready polled."""

    def cmd(outputs: dict[str, str], port: int) -> list[str]:
        settings = Settings(
            bootstrap_servers=kafka,
            app_id=f"{prefix}-app",
            partitions=peers.PARTITIONS,
            posts_topic=names.posts,
            objections_topic=names.objections,
            **{f"{o}_topic": t for o, t in outputs.items()},
        )
        return command(settings, tmp / "state", guarantee=guarantee, web_port=port)

    # a JVM starting on a loaded 2-core machine is slow
    return peers.launch(kafka, prefix, tmp / "peer-worker.log", cmd, timeout=180)


@pytest.fixture(scope="module")
def jar() -> Path:
    return peers.streams_jar()


@pytest.fixture(scope="module")
def run(kafka: str, jar: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[peers.Run]:
    """The enforcer and a peer of each guarantee, all running while the workload is fed
    phase by phase, each phase once every system has processed the one before."""
    yield from peers.run_alongside(
        kafka,
        "peer-streams",
        tmp_path_factory,
        GUARANTEES,
        lambda guarantee, names, prefix, tmp: _start_peer(kafka, names, prefix, guarantee, tmp),
        wait=90,
    )


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_peer_running_alongside_decides_what_the_enforcer_decides(
    run: peers.Run, guarantee: str
) -> None:
    peers.check_alongside(run, guarantee)


def test_peer_started_on_existing_data_decides_what_the_enforcer_decided(
    kafka: str, run: peers.Run, tmp_path: Path
) -> None:
    """As the benchmark runs it: objection events, then posts, all on the inputs before the
    peer starts; it must decide as the enforcer did while they were fed."""
    got, expected = peers.late_peer(
        kafka,
        run,
        "peer-streams",
        lambda _, names, prefix, tmp: _start_peer(kafka, names, prefix, "at_least_once", tmp),
        tmp_path,
        wait=90,
    )
    peers.check_encoding(got)
    peers.compare(got, expected)
