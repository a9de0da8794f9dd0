"""The Kafka Streams peer of the benchmark (issue 20): build it, and the command that runs it.

    python -m bench.peer_streams build
    python -m bench.peer_streams --bootstrap-servers HOST:PORT --app-id ID \\
        --posts-topic T --objections-topic T --training-topic T --retractions-topic T \\
        --decisions-topic T --dlq-topic T [--receipts-topic T] --state-dir DIR \\
        [--processing-guarantee at_least_once|exactly_once_v2] [--threads N] \\
        [--partitions N] [--policy FILE] [--web-port PORT] [--config KEY=VALUE ...]

The second form takes the Quix peer's flags (``bench/peer_quix.py``) and replaces itself
with the JVM (``exec``), so that the process a benchmark starts and samples is the peer.

The application is ``bench/peer-streams/`` (Java 17, Maven, Kafka Streams of the broker's
version): both inputs re-keyed by user, consent as a KTable aggregated from objection
events, the stream-table join, and the enforcer's outputs in the same Avro encoding; its
README says how it differs from the enforcer. ``build()`` runs Maven once for each change
of its sources (offline first, so a machine that built it once needs no network).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.run import topic_flags
from streams.core.policy import Policy, load_policy
from streams.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "bench" / "peer-streams"
JAR = PROJECT / "target" / "peer-streams.jar"
STAMP = PROJECT / "target" / ".sources.sha256"
SCHEMAS = ROOT / "streams" / "schemas"
GUARANTEES = ("at_least_once", "exactly_once_v2")
# the JVM's heap: at most 1 GiB (the default is a quarter of RAM), grown as needed, so that
# RSS is what the peer uses
JVM_OPTS = (
    "-Xmx1g",
    "-XX:+UseG1GC",
    "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
)


class BuildError(RuntimeError):
    """The peer could not be built; the message says why (Maven's output tail)."""


def missing_tools() -> str | None:
    """Why the peer cannot be built or run here (no ``java`` or ``mvn``), or None."""
    for tool in ("java", "mvn"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (the Kafka Streams peer needs Java 17+ and Maven)"
    return None


def _sources_digest() -> str:
    """A digest of everything the jar is built from: the pom, the Java sources, the schemas."""
    files = [
        PROJECT / "pom.xml",
        *sorted((PROJECT / "src").rglob("*")),
        *sorted(SCHEMAS.glob("*.avsc")),
    ]
    digest = hashlib.sha256()
    for path in files:
        if path.is_file():
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def build(timeout: float = 900) -> Path:
    """The peer's jar, built with Maven unless its sources are unchanged since the last
    build: offline first (``-o``, from the local repository), then online for a first
    build; concurrent callers wait for one build. Raises ``BuildError``."""
    reason = missing_tools()
    if reason:
        raise BuildError(reason)
    PROJECT.joinpath("target").mkdir(exist_ok=True)
    with open(PROJECT / "target" / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        digest = _sources_digest()
        if JAR.exists() and STAMP.exists() and STAMP.read_text().strip() == digest:
            return JAR
        out = ""
        for offline in (True, False):
            done = subprocess.run(
                ["mvn", "-q", "-B", *(["-o"] if offline else []), "package"],
                cwd=PROJECT,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            if done.returncode == 0:
                STAMP.write_text(digest + "\n")
                return JAR
            out = done.stdout + done.stderr
        raise BuildError(f"mvn package failed in {PROJECT}:\n{out[-4000:]}")


def policy_flags(policy: Policy) -> list[str]:
    """The policy as the peer's flags (validated by the enforcer's loader first)."""
    return [
        "--policy-version",
        policy.version,
        "--policy-countries",
        ",".join(sorted(policy.countries)),
        "--policy-visibilities",
        ",".join(sorted(policy.visibilities)),
        "--policy-platforms",
        ",".join(sorted(policy.platforms)),
        "--policy-adults-only",
        "true" if policy.adults_only else "false",
    ]


def command(
    settings: Settings,
    state_dir: Path | str,
    *,
    guarantee: str = "at_least_once",
    threads: int = 1,
    rekey_threads: int = 1,
    receipts: bool = True,
    web_port: int | None = None,
    max_task_idle_ms: int | None = None,
    commit_interval_ms: int | None = None,
    config: Mapping[str, str] | None = None,
    jvm_opts: Sequence[str] = JVM_OPTS,
    policy: Policy | None = None,
) -> list[str]:
    """The command line of a peer with ``settings``' broker, app id, topics and partition
    count (of its repartition topics; the enforcer's internal topic's), the policy at
    ``settings.policy_path`` (the packaged one if None) unless ``policy`` is given, and
    Kafka Streams' ``guarantee`` (at_least_once or exactly_once_v2), with ``rekey_threads``
    stream threads re-keying the inputs and ``threads`` deciding (two Kafka Streams
    instances in one JVM). ``config``: more Kafka Streams or client properties."""
    if guarantee not in GUARANTEES:
        raise ValueError(f"guarantee must be one of {GUARANTEES}, got {guarantee!r}")
    policy = policy or load_policy(settings.policy_path)
    s = settings
    args = [
        "java",
        *jvm_opts,
        "-jar",
        str(JAR),
        "--bootstrap-servers",
        s.bootstrap_servers,
        *topic_flags(s),
        "--receipts-topic",
        s.receipts_topic if receipts else "",
        "--partitions",
        str(s.partitions),
        "--state-dir",
        str(state_dir),
        "--processing-guarantee",
        guarantee,
        "--threads",
        str(threads),
        "--rekey-threads",
        str(rekey_threads),
        "--max-clock-skew-ms",
        str(s.max_clock_skew_ms),
        *policy_flags(policy),
    ]
    if web_port is not None:
        args += ["--web-port", str(web_port)]
    if max_task_idle_ms is not None:
        args += ["--max-task-idle-ms", str(max_task_idle_ms)]
    if commit_interval_ms is not None:
        args += ["--commit-interval-ms", str(commit_interval_ms)]
    for key, value in (config or {}).items():
        args += ["--config", f"{key}={value}"]
    return args


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (the Quix peer's flags, and the Kafka Streams ones)."""
    parser = argparse.ArgumentParser(prog="python -m bench.peer_streams", description=__doc__)
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--app-id", required=True)
    for name in ("posts", "objections", "training", "retractions", "decisions", "dlq"):
        parser.add_argument(f"--{name}-topic", required=True)
    parser.add_argument("--receipts-topic", default="", help="consent receipts (default: none)")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--partitions", type=int, default=8, help="of the repartition topics")
    parser.add_argument("--processing-guarantee", choices=GUARANTEES, default=GUARANTEES[0])
    parser.add_argument("--threads", type=int, default=1, help="stream threads deciding")
    parser.add_argument("--rekey-threads", type=int, default=1, help="stream threads re-keying")
    parser.add_argument("--policy", default=None, help="policy file (default: packaged)")
    parser.add_argument("--web-port", type=int, default=None, help="serve GET /ready")
    parser.add_argument("--max-task-idle-ms", type=int, default=None)
    parser.add_argument("--commit-interval-ms", type=int, default=None)
    parser.add_argument("--config", action="append", default=[], help="KEY=VALUE, repeatable")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """``build``, or build then run the peer in place of this process."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["build"]:
        try:
            print(build())
        except BuildError as exc:
            print(exc, file=sys.stderr)
            return 1
        return 0
    args = parse_args(argv)
    settings = Settings(
        bootstrap_servers=args.bootstrap_servers,
        app_id=args.app_id,
        partitions=args.partitions,
        posts_topic=args.posts_topic,
        objections_topic=args.objections_topic,
        training_topic=args.training_topic,
        retractions_topic=args.retractions_topic,
        decisions_topic=args.decisions_topic,
        dlq_topic=args.dlq_topic,
        receipts_topic=args.receipts_topic or "unused",
        policy_path=Path(args.policy) if args.policy else None,
    )
    config = dict(item.split("=", 1) for item in args.config)
    try:
        build()
    except BuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    cmd = command(
        settings,
        args.state_dir,
        guarantee=args.processing_guarantee,
        threads=args.threads,
        rekey_threads=args.rekey_threads,
        receipts=bool(args.receipts_topic),
        web_port=args.web_port,
        max_task_idle_ms=args.max_task_idle_ms,
        commit_interval_ms=args.commit_interval_ms,
        config=config,
    )
    sys.stdout.flush()
    os.execvp(cmd[0], cmd)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
