"""``docs/capacity.md``: the enforcer at internet scale, on paper, computed from results
files so that it stays current (issue 20, part 9).

    python -m bench.capacity [--matrix bench/results/matrix-<ts>.json]
                             [--failover bench/results/failover-<ts>.json]
                             [--state bench/results/state-scale-<ts>.json] [--write]

Measured inputs (from the files named in the document): the enforcer's CPU per post
(worker and broker) and its main thread's, the records and bytes it writes per post and
per state entry (its changelogs read back), its RSS, the share of posts published; and
from a failover results file the restore rate and the failover times. With ``--state``,
the bytes per user and per live post come from a ``bench.state_scale`` results file
instead (the enforcer's changelogs read back at 1,000,000 users and live posts), and
RocksDB's bytes on disk per logical byte measured there replace the assumed
``rocksdb_overhead``. Everything else is an assumption, named in ``ASSUMPTIONS`` and
printed in the document.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "capacity.md"

USERS = 3_000_000_000
RATES = (1_000_000, 10_000)  # posts/s: the platform, and 1% of it

# every assumption, with why; the document prints them all
ASSUMPTIONS: dict[str, tuple[float, str]] = {
    "consent_share": (
        0.10,
        "share of users with consent state (an objection event ever): the benchmark's 10%",
    ),
    "ledger_days": (
        365.0,
        "days a published post stays in the ledger (the enforcer has NO expiry: a live post "
        "stays until retracted; 365 days is the horizon assumed here)",
    ),
    "worker_cores": (
        4.0,
        "cores per worker (the gate is one Python process plus its re-keying child)",
    ),
    "cpu_headroom": (
        0.5,
        "share of a worker's capacity used in steady state (the rest to catch up after a failover)",
    ),
    "partitions_per_worker": (4.0, "partitions per worker, so that workers can be added 4x"),
    "rocksdb_overhead": (1.5, "RocksDB bytes on disk per logical byte (space amplification)"),
    "standby_replicas": (1.0, "standby replicas per partition (the default: warm failover)"),
    "block_cache_share": (0.1, "share of a worker's state held in memory (RocksDB block cache)"),
    "memtable_mb": (
        64.0,
        "RocksDB write buffer per table partition held (Faust's default; 2 tables a "
        "partition, active and standby copies): writes stay in memory until it fills",
    ),
    "worker_disk_tb": (4.0, "local disk per worker for RocksDB, TB (NVMe)"),
    "worker_memory_gb": (64.0, "memory per worker, GB"),
    "broker_cores": (16.0, "cores per broker"),
    "broker_disk_tb": (20.0, "usable disk per broker, TB"),
    "broker_net_gbytes": (1.0, "usable network per broker, GB/s (of 10-25 Gbit/s)"),
    "replication_factor": (3.0, "replicas of every topic (min.insync.replicas 2)"),
    "broker_cpu_per_replica": (
        1.0,
        "broker CPU of each follower replica's write, as a share of the leader's measured one",
    ),
    "input_retention_days": (7.0, "retention of posts and objections"),
    "audit_retention_days": (
        365.0,
        "decisions and receipts kept this long (the enforcer's default is forever)",
    ),
    "readers_per_output": (1.0, "downstream readers of each output topic"),
    "max_partitions_per_cluster": (200_000.0, "partition replicas one KRaft cluster handles well"),
    "partition_write_mb": (10.0, "MB/s one partition's leader takes comfortably"),
    "restore_target_s": (300.0, "longest acceptable cold restore of one worker's state"),
}


def A(name: str) -> float:
    return ASSUMPTIONS[name][0]


def newest(pattern: str) -> Path | None:
    files = sorted(RESULTS.glob(pattern))
    return files[-1] if files else None


def measured(matrix: dict[str, Any], failover: dict[str, Any] | None) -> dict[str, Any]:
    """The measured inputs, from the results files."""
    runs = [r for r in matrix["runs"] if r["system"] == "enforcer"]
    med = matrix["summary"]["enforcer"]
    written = next(r["records_written"] for r in runs if r.get("records_written"))
    topics = written["topics"]
    posts = matrix["data"]["post"]

    def topic(suffix: str) -> dict[str, int]:
        return next((v for t, v in topics.items() if t.endswith(suffix)), {})

    consent, ledger = topic("-consent-changelog"), topic("-ledger-changelog")
    training = topic("-training")
    mains = [
        r["thread_cpu_seconds_per_1000"].get("main", math.nan)
        for r in runs
        if r.get("thread_cpu_seconds_per_1000")
    ]
    out: dict[str, Any] = {
        "worker_cpu_us_per_post": med["worker_cpu_seconds_per_1000"]["median"] * 1000,
        "broker_cpu_us_per_post": med["broker_cpu_seconds_per_1000"]["median"] * 1000,
        "main_thread_cpu_us_per_post": statistics.median(mains) * 1000 if mains else math.nan,
        "peak_rss_mb": med["peak_rss_mb"]["median"],
        "posts_per_second_2_cores": med["posts_per_second"]["median"],
        "bytes_written_per_post": sum(
            v["value_bytes"] + v.get("key_bytes", 0) for v in topics.values()
        )
        / posts,
        "records_written_per_post": written["records_per_post"],
        "published_share": training.get("records", 0) / posts,
        "training_record_bytes": training.get("value_bytes", 0)
        / max(1, training.get("records", 0)),
        "consent_entry_bytes": (consent.get("value_bytes", 0) + consent.get("key_bytes", 0))
        / max(1, consent.get("records", 0)),
        "ledger_entry_bytes": (ledger.get("value_bytes", 0) + ledger.get("key_bytes", 0))
        / max(1, ledger.get("records", 0)),
        "decision_bytes": _per_record(topic("-decisions")),
        "receipt_bytes": _per_record(topic("-receipts")),
        "input_post_bytes": _per_record(topic("-user-events-repartition")),
    }
    if not topic("-user-events-repartition").get("records"):
        inputs = sum(matrix["data"].values())
        out["records_written_per_post"] += inputs / posts
        # the enforcer deletes its internal records once processed; the Quix peer's
        # internal topic holds the same bytes (each input's, unchanged)
        quix = [r for r in matrix["runs"] if r.get("records_written") and r["system"] == "quix"]
        for run in quix:
            for t, v in run["records_written"]["topics"].items():
                if t.startswith("repartition__"):
                    out["input_post_bytes"] = _per_record(v)
                    out["input_bytes_from"] = f"the Quix peer's internal topic `{t}`"
                    out["bytes_written_per_post"] += (
                        v["value_bytes"] / posts + v["key_bytes"] / posts
                    )
    if failover:
        cold = [r for r in failover["runs"] if r["mode"] == "cold"]
        warm = [r for r in failover["runs"] if r["mode"] == "warm"]
        rates = [r["restore_records_per_s"] for r in cold if r.get("restore_records_per_s")]
        out["restore_records_per_s"] = statistics.median(rates) if rates else math.nan
        out["cold_failover_s"] = (
            statistics.median(r["failover_s"] for r in cold) if cold else math.nan
        )
        out["warm_failover_s"] = (
            statistics.median(r["failover_s"] for r in warm) if warm else math.nan
        )
    return out


def with_state(m: dict[str, Any], state: dict[str, Any], path: Path) -> dict[str, Any]:
    """``m`` with the bytes per user and per live post of a ``bench.state_scale`` results
    file (the enforcer's medians): its changelogs' live entries (key + value), and the
    RocksDB bytes on disk per logical byte measured there."""
    e = state["per_entry"]["enforcer"]
    return {
        **m,
        "consent_entry_bytes": e["logical_per_user"],
        "ledger_entry_bytes": e["logical_per_live_post"],
        "rocksdb_overhead": e["rocksdb_disk_per_logical_byte"],
        "state_file": path.name,
        "state_users": state["config"]["users"],
        "state_live_posts": state["config"]["live_posts"],
        "state_disk_per_user": e["disk_per_user"],
        "state_disk_per_live_post": e["disk_per_live_post"],
    }


def _per_record(v: dict[str, int]) -> float:
    return (v.get("value_bytes", 0) + v.get("key_bytes", 0)) / max(1, v.get("records", 0))


def plan(m: dict[str, Any], rate: float) -> dict[str, float]:
    """Workers, partitions, brokers, memory and disk at ``rate`` posts/s."""
    day = 86400.0
    # workers: CPU, or the main thread (one Python thread decides: its CPU per post bounds
    # a worker's posts/s whatever its cores)
    per_worker_cpu = A("worker_cores") / (m["worker_cpu_us_per_post"] / 1e6)
    per_worker_main = 1 / (m["main_thread_cpu_us_per_post"] / 1e6)
    per_worker = min(per_worker_cpu, per_worker_main) * A("cpu_headroom")
    workers_cpu = math.ceil(rate / per_worker - 1e-6)
    # state
    consent_entries = USERS * A("consent_share")
    ledger_entries = rate * m["published_share"] * A("ledger_days") * day
    consent_bytes = consent_entries * m["consent_entry_bytes"]
    ledger_bytes = ledger_entries * m["ledger_entry_bytes"]
    state_bytes = consent_bytes + ledger_bytes
    # workers: enough for the CPU, and for their state to fit their disk and memory
    copies = 1 + A("standby_replicas")
    overhead = m.get("rocksdb_overhead", A("rocksdb_overhead"))  # measured with --state
    workers_disk = math.ceil(state_bytes * overhead * copies / (A("worker_disk_tb") * 1e12))
    spare_memory = (
        A("worker_memory_gb") * 1e9
        - m["peak_rss_mb"] * 2**20
        - A("partitions_per_worker") * 2 * copies * A("memtable_mb") * 2**20
    )
    workers_memory = math.ceil(state_bytes * A("block_cache_share") * copies / spare_memory)
    workers = max(workers_cpu, workers_disk, workers_memory)
    bound = {workers_cpu: "CPU", workers_disk: "state on disk", workers_memory: "memory"}[workers]
    partitions = int(2 ** math.ceil(math.log2(max(1, workers * A("partitions_per_worker")))))
    state_per_worker = state_bytes / workers
    entries_per_worker = (consent_entries + ledger_entries) / workers
    worker_disk = state_per_worker * overhead * (1 + A("standby_replicas"))
    memtables = A("partitions_per_worker") * 2 * copies * A("memtable_mb") * 2**20
    worker_memory = (
        m["peak_rss_mb"] * 2**20
        + state_per_worker * A("block_cache_share") * (1 + A("standby_replicas"))
        + memtables
    )
    restore_s = entries_per_worker / m.get("restore_records_per_s", math.nan)
    # brokers: CPU, network, disk
    rf = A("replication_factor")
    broker_cpu = (
        rate * m["broker_cpu_us_per_post"] / 1e6 * (1 + (rf - 1) * A("broker_cpu_per_replica"))
    )
    brokers_cpu = broker_cpu / A("broker_cores")
    write_bytes = rate * m["bytes_written_per_post"]
    input_bytes = rate * m["input_post_bytes"]
    # written (x rf: leader and followers' ingress); read: the inputs and the internal topic
    # once by the enforcer, outputs by their readers, followers' fetches (rf - 1)
    net = write_bytes * rf + (input_bytes * 2 + write_bytes * A("readers_per_output"))
    brokers_net = net / (A("broker_net_gbytes") * 1e9)
    disk = rf * (
        input_bytes * A("input_retention_days") * day
        + rate * (m["decision_bytes"] + 0.0) * A("audit_retention_days") * day
        + ledger_entries * m["training_record_bytes"]  # training-ingest, compacted: live posts
        + state_bytes  # the changelogs, compacted
    )
    brokers_disk = disk / (A("broker_disk_tb") * 1e12)
    brokers = max(3, math.ceil(max(brokers_cpu, brokers_net, brokers_disk)))
    # partition replicas: internal + 2 changelogs + 5 outputs at ``partitions`` each, inputs too
    replicas = partitions * 9 * rf
    per_partition_mb = rate * m["input_post_bytes"] / partitions / 1e6
    return {
        "rate": rate,
        "per_worker_posts_s": per_worker,
        "worker_bound": "main thread" if per_worker_main < per_worker_cpu else "CPU",
        "workers_by_cpu": workers_cpu,
        "workers_by_disk": workers_disk,
        "workers_by_memory": workers_memory,
        "workers_bound": bound,
        "workers": workers,
        "worker_cores_total": workers * A("worker_cores"),
        "partitions": partitions,
        "consent_entries": consent_entries,
        "ledger_entries": ledger_entries,
        "state_tb": state_bytes / 1e12,
        "state_per_worker_gb": state_per_worker / 1e9,
        "worker_disk_gb": worker_disk / 1e9,
        "worker_memory_gb": worker_memory / 1e9,
        "restore_s": restore_s,
        "broker_cores": broker_cpu,
        "brokers_by_cpu": brokers_cpu,
        "brokers_by_network": brokers_net,
        "brokers_by_disk": brokers_disk,
        "brokers": brokers,
        "broker_disk_pb": disk / 1e15,
        "partition_replicas": replicas,
        "internal_partition_mb_s": per_partition_mb,
    }


def breaks(m: dict[str, Any], p: dict[str, float]) -> list[tuple[float, str]]:
    """What gives way, each with how far past its limit (ratio > 1 breaks), worst first."""
    out = [
        (
            p["restore_s"] / A("restore_target_s"),
            f"cold restore of one worker's state: {_dur(p['restore_s'])} at the measured "
            f"{m.get('restore_records_per_s', math.nan):,.0f} records/s "
            f"(target {_dur(A('restore_target_s'))}); the ledger is "
            f"{p['ledger_entries'] / max(1, p['ledger_entries'] + p['consent_entries']):.0%} of "
            "the entries and has no expiry, so this grows every day",
        ),
        (
            p["partition_replicas"] / A("max_partitions_per_cluster"),
            f"partition replicas: {p['partition_replicas']:,.0f} "
            f"(about {A('max_partitions_per_cluster'):,.0f} per KRaft cluster)",
        ),
        (
            p["internal_partition_mb_s"] / A("partition_write_mb"),
            f"writes per internal partition: {p['internal_partition_mb_s']:.2f} MB/s "
            f"(about {A('partition_write_mb'):.0f} MB/s each)",
        ),
        (
            p["workers"] / p["workers_by_cpu"],
            f"workers sized by their state, not their CPU: {p['workers']:,} workers where the "
            f"CPU needs {p['workers_by_cpu']:,} (their cores idle; the ledger's size decides)",
        ),
    ]
    return sorted(out, key=lambda x: -x[0])


def _s(seconds: float) -> str:
    return f"{seconds:.0f} s" if math.isfinite(seconds) else "not in the file"


def _dur(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "n/a"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def document(
    matrix_path: Path,
    failover_path: Path | None,
    others: Sequence[Path] = (),
    state_path: Path | None = None,
) -> str:
    matrix = json.loads(matrix_path.read_text())
    failover = json.loads(failover_path.read_text()) if failover_path else None
    state = json.loads(state_path.read_text()) if state_path else None
    m = measured(matrix, failover)
    if state and state_path:
        m = with_state(m, state, state_path)
    plans = [plan(m, r) for r in RATES]
    alternatives = []
    for path in others:
        alt = measured(matrix, json.loads(path.read_text()))
        if state and state_path:
            alt = with_state(alt, state, state_path)
        alternatives.append((path, alt, [plan(alt, r) for r in RATES]))
    commit = matrix.get("git", {}).get("commit", "?")[:7]
    lines = [
        "# Capacity at internet scale, on paper",
        "",
        "<!-- generated by `python -m bench.capacity --write --matrix "
        + f"bench/results/{matrix_path.name}"
        + "".join(
            f" --failover bench/results/{f.name}"
            for f in [*([failover_path] if failover_path else []), *others]
        )
        + (f" --state bench/results/{state_path.name}" if state_path else "")
        + "`; do not edit by hand -->",
        "",
        f"A platform of {USERS:,} users posting {RATES[0]:,} posts/s (and {RATES[1]:,}, 1% of "
        "that): the workers, partitions, brokers, memory and disk the enforcer would need, "
        "computed from measurements on a 2-core machine and the assumptions below. It is "
        "arithmetic, not a test: every figure scales a measured one by an assumption.",
        "",
        "## Measured (the inputs)",
        "",
        f"From `{matrix_path.name}` (the benchmark matrix, commit `{commit}`, "
        f"{matrix['config']['posts']:,} posts; the enforcer as shipped, medians of its runs)"
        + (
            f" and `{failover_path.name}` (failover: "
            f"{failover['config']['users']:,} users' consent state and "
            f"{failover['config']['live_posts']:,} live posts, 2 workers)"
            if failover_path and failover
            else " (no failover results file: restore figures unknown)"
        )
        + ":",
        "",
        "| measured | value |",
        "|---|---|",
        f"| worker CPU per post (both processes) | {m['worker_cpu_us_per_post']:.1f} us |",
        f"| of which the gate's main thread (one Python thread) | "
        f"{m['main_thread_cpu_us_per_post']:.1f} us |",
        f"| broker CPU per post (one node, no replication) | "
        f"{m['broker_cpu_us_per_post']:.1f} us |",
        f"| records written per post (all topics) | {m['records_written_per_post']:.2f} |",
        f"| bytes written per post (keys and values, all topics) | "
        f"{m['bytes_written_per_post']:,.0f} |",
        f"| share of posts published | {m['published_share']:.1%} |",
    ]
    if state:
        at = (
            f"`{m['state_file']}`: the worker's changelogs read back, {m['state_users']:,} "
            f"users with state and {m['state_live_posts']:,} live posts, key + value of the "
            "live entries"
        )
        lines += [
            f"| consent state per user with state ({at}) | {m['consent_entry_bytes']:.0f} bytes |",
            f"| ledger per live post (the same) | {m['ledger_entry_bytes']:.0f} bytes |",
            f"| RocksDB on disk per logical byte (`{m['state_file']}`: the worker's data dir "
            "after a clean stop over its live entries' key + value, compressed by RocksDB: "
            "the benchmark's ids and timestamps are sequential and compress better than real "
            f"ones would; replaces the assumption `rocksdb_overhead`) | "
            f"{m['rocksdb_overhead']:.2f} |",
            f"| RocksDB on disk per user / per live post (`{m['state_file']}`, after a clean "
            f"stop) | {m['state_disk_per_user']:.0f} / {m['state_disk_per_live_post']:.0f} "
            "bytes |",
        ]
    else:
        lines += [
            f"| consent state per user with state (changelog key + value) | "
            f"{m['consent_entry_bytes']:.0f} bytes |",
            f"| ledger per live post (changelog key + value) | "
            f"{m['ledger_entry_bytes']:.0f} bytes |",
        ]
    lines += [
        f"| decision record / training record / input record | {m['decision_bytes']:.0f} / "
        f"{m['training_record_bytes']:.0f} / {m['input_post_bytes']:.0f} bytes"
        + (
            f" (input: {m['input_bytes_from']}, the same bytes)"
            if m.get("input_bytes_from")
            else ""
        )
        + " |",
        f"| peak RSS of a worker in the benchmark | {m['peak_rss_mb']:.0f} MB |",
    ]
    if failover:
        lines += [
            f"| restore rate (cold, one worker) | {m['restore_records_per_s']:,.0f} records/s |",
            f"| failover, cold / with a standby | {_s(m['cold_failover_s'])} / "
            f"{_s(m['warm_failover_s'])} |",
        ]
    for path, alt, _ in alternatives:
        lines += [
            f"| restore rate in `{path.name}` (cold, one worker) | "
            f"{alt['restore_records_per_s']:,.0f} records/s |",
            f"| failover in `{path.name}`, cold / with a standby | "
            f"{_s(alt['cold_failover_s'])} / {_s(alt['warm_failover_s'])} |",
        ]
    if alternatives:
        lines += [
            "",
            f"The sizing uses `{failover_path.name if failover_path else '-'}`; the other "
            "file's restore rate is shown in the cold restore row beside it.",
        ]
    lines += ["", "## Assumptions", "", "| name | value | meaning |", "|---|---|---|"]
    for name, (value, meaning) in ASSUMPTIONS.items():
        unused = " (not used: measured, above)" if name in m else ""
        lines.append(f"| `{name}` | {value:g} | {meaning}{unused} |")
    lines += [
        f"| users | {USERS:,} | the platform |",
        "",
        "## Sizing",
        "",
        "| | " + " | ".join(f"{p['rate']:,.0f} posts/s" for p in plans) + " |",
        "|---|" + "---|" * len(plans),
    ]
    rows = [
        ("posts/s per worker (at the headroom)", "per_worker_posts_s", "{:,.0f}"),
        ("a worker's posts/s are bound by", "worker_bound", "{}"),
        ("workers needed by CPU / state on disk / memory", None, "workers"),
        ("workers (the largest)", "workers", "{:,}"),
        ("workers are bound by", "workers_bound", "{}"),
        ("worker cores in total", "worker_cores_total", "{:,.0f}"),
        ("partitions (internal topic, changelogs, outputs)", "partitions", "{:,}"),
        ("consent entries", "consent_entries", "{:,.0f}"),
        ("ledger entries (live posts)", "ledger_entries", "{:,.0f}"),
        ("state, TB (logical)", "state_tb", "{:,.2f}"),
        ("state per worker, GB", "state_per_worker_gb", "{:,.1f}"),
        ("disk per worker (with standby, RocksDB overhead), GB", "worker_disk_gb", "{:,.0f}"),
        ("memory per worker, GB", "worker_memory_gb", "{:,.1f}"),
        ("cold restore of one worker", "restore_s", None),
        ("broker cores (with replication)", "broker_cores", "{:,.0f}"),
        ("brokers needed by CPU / network / disk", None, "brokers"),
        ("brokers", "brokers", "{:,}"),
        ("broker disk, PB (with replication)", "broker_disk_pb", "{:,.2f}"),
        ("partition replicas in the cluster", "partition_replicas", "{:,.0f}"),
        ("writes per internal partition, MB/s", "internal_partition_mb_s", "{:,.2f}"),
    ]
    for label, key, form in rows:
        cells = []
        for p in plans:
            if key is None and form == "workers":
                cells.append(
                    f"{p['workers_by_cpu']:,} / {p['workers_by_disk']:,} / "
                    f"{p['workers_by_memory']:,}"
                )
            elif key is None:
                cells.append(
                    f"{p['brokers_by_cpu']:.1f} / {p['brokers_by_network']:.1f} / "
                    f"{p['brokers_by_disk']:.1f}"
                )
            elif form is None:
                cells.append(_dur(p[key]))
                i = plans.index(p)
                cells[-1] += "".join(
                    f" ({_dur(ps[i][key])} at `{path.name}`'s rate)" for path, _, ps in alternatives
                )
            else:
                cells.append(form.format(p[key]))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## Where it breaks first", ""]
    for p in plans:
        worst = breaks(m, p)
        lines.append(f"At {p['rate']:,.0f} posts/s (past its limit when the ratio is above 1):")
        lines.append("")
        lines += [f"{i}. **{r:.2f}x**: {what}" for i, (r, what) in enumerate(worst, 1)]
        lines.append("")
    lines += [
        "What the arithmetic says, and what it leaves out:",
        "",
        "* **The ledger first.** Every published post stays in the ledger until it is "
        "retracted; nothing expires it. Its entries outnumber the consent state's after days "
        "at these rates, and a cold restore replays every entry of a worker's partitions "
        "through its changelog at the restore rate measured here. A standby replica avoids "
        "the restore on a failover (the warm failover above), not on a lost standby or a new "
        "worker. What would fix it: an expiry of live posts (a horizon after which a post "
        "cannot be retracted, or retraction by a scan of `training-ingest`), and a faster "
        "restore (the measured rate is one worker on 2 shared cores, through Faust's "
        "changelog reader).",
        "* **Failover time** is the gate consumer's session timeout (60 s) whatever the "
        "size: a worker lost holds its partitions' posts for about a minute; at "
        f"{RATES[0]:,} posts/s over the workers above, that is the backlog the survivors "
        "catch up with the headroom assumed.",
        "* **Hot users** are not modelled: a user's posts and objections all go to one "
        "partition (that is how an objection is applied before the user's next post), so "
        "one very active account is one partition's load, and a worker cannot be split "
        "below a partition.",
        "* **The main thread**: the gate decides in one Python thread; past its CPU per post "
        "a worker cannot go faster with more cores, only more workers (more partitions).",
        "* Broker figures scale one unreplicated local broker's CPU per post by the "
        "replication factor; a real cluster's per-record cost differs (batching, TLS, "
        "network), so they are the order of magnitude, not a purchase order.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", default=None)
    parser.add_argument(
        "--failover",
        action="append",
        default=[],
        help="failover results file (repeatable: the first sizes; default the newest)",
    )
    parser.add_argument(
        "--state",
        type=Path,
        default=None,
        help="a bench.state_scale results file: bytes per user and per live post, and "
        "RocksDB's overhead, from it (default: from the matrix, overhead assumed)",
    )
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    matrix = Path(args.matrix) if args.matrix else newest("matrix-*.json")
    if matrix is None:
        raise SystemExit("no bench/results/matrix-*.json")
    files = [Path(f) for f in args.failover]
    failover = files[0] if files else newest("failover-*.json")
    text = document(matrix, failover, files[1:], args.state)
    if args.write:
        DOC.write_text(text)
        print(f"wrote {DOC}", file=sys.stderr)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
