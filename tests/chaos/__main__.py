"""``python -m tests.chaos`` (``make chaos``): a chaos run on a Kafka of its own
(``local-kafka start --brokers N``, or one broker with ``--brokers 1``); the results go
to ``tests/chaos/results/<timestamp>.json``. Exit code 1 if a count that must be zero
is not."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.chaos.harness import MUST_BE_ZERO, SCHEDULES, run, say
from tests.support import LOCAL_KAFKA, KafkaCluster, free_port

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos")
    parser.add_argument("--brokers", type=int, default=3)
    parser.add_argument("--schedule", choices=sorted(SCHEDULES), default="long")
    parser.add_argument("--duration", type=float, default=480.0, help="seconds of traffic")
    parser.add_argument("--rate", type=float, default=150.0, help="records a second")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--bootstrap", help="an existing Kafka (no broker faults then)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="enforcer-chaos-"))
    cluster = None
    single_port = None
    try:
        if args.bootstrap:
            bootstrap = args.bootstrap
        elif args.brokers > 1:
            cluster = KafkaCluster.start(work / "kafka", nodes=args.brokers)
            bootstrap = cluster.bootstrap
        else:
            single_port = free_port()
            out = subprocess.run(
                [
                    str(LOCAL_KAFKA),
                    "start",
                    "--port",
                    str(single_port),
                    "--dir",
                    str(work / "kafka"),
                ],
                capture_output=True,
                text=True,
                timeout=600,
            )
            if out.returncode != 0:
                raise SystemExit(f"local-kafka start failed:\n{out.stderr[-3000:]}")
            bootstrap = out.stdout.strip().splitlines()[-1]
        say(f"kafka at {bootstrap}; work in {work}")
        result = run(
            bootstrap,
            work / "workers",
            SCHEDULES[args.schedule],
            duration=args.duration,
            cluster=cluster,
            workers=args.workers,
            partitions=args.partitions,
            rate=args.rate,
            users=args.users,
            seed=args.seed,
        )
        result["schedule_name"] = args.schedule
        result["git"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
        path.write_text(json.dumps(result, indent=1, default=str))
        say(f"results in {path}")
        # a run passes when every count that must be zero is, and `enforcer verify`
        # (the operator's own check, from the topics alone) finds nothing either
        failed = [k for k in MUST_BE_ZERO if result[k]]
        if result["verify_exit"] != 0:
            failed.append(f"enforcer verify exit {result['verify_exit']}")
        if failed:
            say(f"FAILED: {', '.join(failed)}")
        return 1 if failed else 0
    finally:
        if cluster is not None:
            cluster.stop()
        if single_port is not None:
            subprocess.run(
                [
                    str(LOCAL_KAFKA),
                    "stop",
                    "--port",
                    str(single_port),
                    "--dir",
                    str(work / "kafka"),
                ],
                capture_output=True,
                timeout=120,
            )
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"kept {work}")


if __name__ == "__main__":
    sys.exit(main())
