"""A rolling restart under traffic (issue 17, item 6), as a Kubernetes rolling update does
it: three workers of one app (one standby replica, fencing on: the defaults) on the
three-node cluster, posts and objections flowing all along; each worker in turn is
stopped with SIGTERM, started again on its data dir, and the next one is stopped only
once the restarted worker answers ``/ready``, both consumer groups (the gate's
``<app-id>`` and the re-keying stage's ``<app-id>-rekey``) are stable with all three
members, every worker is ready, and a post sent after that has been decided.

Then, from the topics alone: the chaos oracle (``tests/chaos/harness.py``: no post of an
objecting user live, none published while an objection acknowledged before it was in
force, no eligible post of a never-objecting user lost, every post decided), ``enforcer
verify --grace 0`` (the operator's own check), and every post's final decision agrees
with ``training-ingest``: live exactly when its last decision is PUBLISHED.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from confluent_kafka import ConsumerGroupState
from confluent_kafka.admin import AdminClient

from streams.kafka.topics import ensure_topics
from tests.chaos.harness import (
    Fleet,
    Traffic,
    _decode,
    independent_check,
    local_state_check,
    oracle,
    read_topic,
    report,
    say,
    wait_all_decided,
)
from tests.support import KafkaCluster, Names

WORKERS = 3
PARTITIONS = 6


class GroupAdmin:
    """An admin client for describing groups, made anew after an error: one that saw a
    coordinator move can keep failing with its old view of the cluster (the workers'
    own clients renew theirs the same way, ``kafka/topics.py`` ``RenewingAdmin``)."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.client = AdminClient({"bootstrap.servers": bootstrap})
        self.last: dict[str, str] = {}  # group -> what was last seen of it (diagnostics)

    def describe(self, group: str) -> Any:
        try:
            return self.client.describe_consumer_groups([group])[group].result(timeout=10)
        except Exception:
            self.client = AdminClient({"bootstrap.servers": self.bootstrap})
            raise


def group_stable(admin: GroupAdmin, group: str, members: int) -> bool:
    """The group is STABLE with ``members`` members, each with an assignment."""
    try:
        described = admin.describe(group)
    except Exception as exc:  # a coordinator moving, a timeout: not stable yet
        admin.last[group] = f"not described: {exc}"
        return False
    admin.last[group] = (
        f"{described.state}, {len(described.members)} members, assigned: "
        f"{[len(m.assignment.topic_partitions) for m in described.members]}"
    )
    return (
        described.state == ConsumerGroupState.STABLE
        and len(described.members) == members
        and all(m.assignment.topic_partitions for m in described.members)
    )


def wait_until(what: str, predicate, timeout: float, interval: float = 0.5) -> float:
    """Poll ``predicate`` until it holds; the seconds it took. AssertionError after
    ``timeout`` seconds."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not after {timeout:.0f} s")
        time.sleep(interval)
    return time.monotonic() - started


class DecisionTail:
    """The post ids decided since it was made (the decisions topic from its end)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"rolling-tail-{time.time_ns()}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        parts = self.consumer.list_topics(topic, timeout=30).topics[topic].partitions
        tps = []
        for p in parts:
            tp = TopicPartition(topic, p)
            tp.offset = self.consumer.get_watermark_offsets(tp, timeout=30)[1]
            tps.append(tp)
        self.consumer.assign(tps)
        self.seen: set[str] = set()

    def poll(self) -> set[str]:
        for m in self.consumer.consume(10000, timeout=0.2):
            if not m.error() and m.key() is not None:
                self.seen.add(m.key().decode())
        return self.seen

    def close(self) -> None:
        self.consumer.close()


def final_decisions(bootstrap: str, names: Names) -> dict:
    """Every post's decisions in the order written (one partition per post id) against
    its last record on training-ingest; inputs decided more than once."""
    decisions: dict[str, list[dict]] = defaultdict(list)
    per_input: dict[tuple, int] = defaultdict(int)
    for r in sorted(read_topic(bootstrap, names.decisions), key=lambda r: (r.partition, r.offset)):
        d = _decode(r.value)
        if d is None:
            continue
        decisions[d["post_id"]].append(d)
        if d["outcome"] != "RETRACTED":
            per_input[(d["source_topic"], d["source_partition"], d["source_offset"])] += 1
    live: dict[str, bool] = {}
    for r in sorted(read_topic(bootstrap, names.training), key=lambda r: (r.partition, r.offset)):
        live[r.key.decode()] = r.value is not None
    disagree = [
        {
            "post_id": pid,
            "live": live.get(pid, False),
            "decisions": [(d["outcome"], d["reason"], d["decided_at"]) for d in ds],
        }
        for pid, ds in decisions.items()
        if (ds[-1]["outcome"] == "PUBLISHED") != live.get(pid, False)
    ]
    return {
        "posts_decided": len(decisions),
        "final_decision_disagrees_with_training": len(disagree),
        "examples": disagree[:10],
        "inputs_decided_more_than_once": sum(1 for n in per_input.values() if n > 1),
        "live_without_decision": sum(1 for pid, v in live.items() if v and pid not in decisions),
    }


def test_rolling_restart_under_traffic(kafka_cluster: KafkaCluster, tmp_path: Path) -> None:
    bootstrap = kafka_cluster.bootstrap
    names = Names(f"rolling-{int(time.time())}-{time.time_ns() % 10**6}")
    work = tmp_path / "workers"
    work.mkdir()
    ensure_topics(names.settings(bootstrap, PARTITIONS, work), create_inputs=True)
    admin = GroupAdmin(bootstrap)
    fleet = Fleet(bootstrap, names, work, PARTITIONS)
    traffic = Traffic(bootstrap, names, rate=80, users=300, seed=23)
    groups = (names.app_id, f"{names.app_id}-rekey")
    timings: list[dict] = []
    started = time.monotonic()

    def settled() -> bool:
        return all(w.alive() for w in fleet.slots.values()) and all(
            group_stable(admin, g, WORKERS) for g in groups
        )

    tail = None
    try:
        for slot in range(WORKERS):
            fleet.start(slot, wait=False)
        for slot in range(WORKERS):
            fleet.slots[slot].wait_ready(180)
        wait_until("the groups stable at start", settled, 120)
        tail = DecisionTail(bootstrap, names.decisions)
        traffic.start()
        wait_until("decisions at start", lambda: len(tail.poll()) >= 50, 60, 0)

        for slot in range(WORKERS):
            worker = fleet.slots[slot]
            t0 = time.monotonic()
            code = worker.stop(60)  # SIGTERM; Kubernetes' grace period is 30 s by default
            stopped = time.monotonic() - t0
            assert code == 0, f"worker {slot} exited {code} on SIGTERM:\n{worker.log()}"
            restarted = fleet.start(slot, wait=False)  # the same data dir (the pod's volume)
            restarted.wait_ready(180)
            ready = time.monotonic() - t0
            try:
                wait_until(f"groups stable after restarting worker {slot}", settled, 120)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; last seen of the groups: {admin.last}") from None
            for other in fleet.slots.values():
                other.wait_ready(60)
            stable = time.monotonic() - t0
            # the next worker goes only once posts sent now are decided
            with traffic.lock:
                probe = traffic.post(traffic.user_ids[slot], visibility="FRIENDS")["post_id"]
            wait_until(
                f"a post decided after restarting worker {slot}",
                lambda probe=probe: probe in tail.poll(),
                90,
                0,
            )
            timings.append(
                {
                    "slot": slot,
                    "stop_s": round(stopped, 1),
                    "ready_s": round(ready, 1),
                    "stable_s": round(stable, 1),
                    "probe_decided_s": round(time.monotonic() - t0, 1),
                }
            )
            say(f"rolling: worker {slot} {timings[-1]}")
        time.sleep(3)  # traffic after the last restart
        traffic.finish()
        say(f"rolling: traffic stopped: {dict(traffic.sent)}")
        wait_all_decided(bootstrap, names, 120)
        time.sleep(3)  # held removals settle and commit
        result = oracle(bootstrap, names, traffic.acked)
        result.update(independent_check(bootstrap, names))
        final = final_decisions(bootstrap, names)
        exits = {
            slot: w.proc.returncode
            for slot, w in enumerate(fleet.all)
            if w.proc is not None and w.proc.poll() is not None
        }
    finally:
        traffic.stop_event.set()
        if tail is not None:
            tail.close()
        fleet.stop_all()
    result.update(local_state_check(bootstrap, names, (w.data_dir for w in fleet.all)))
    say(report(result))
    say(f"rolling: final decisions {final}; {time.monotonic() - started:.0f} s in all")

    assert not traffic.errors, traffic.errors[:5]
    assert set(exits.values()) <= {0}, f"a worker exited by itself: {exits}"
    assert result["posts"] > 500, result["posts"]
    assert result["undecided_posts"] == 0, result["examples"]["undecided"]
    assert result["eligible_never_objecting_not_live"] == 0, result["examples"]["missing"]
    assert result["leaked_late_still_live"] == 0, result["examples"]["leaked_late_still_live"]
    assert result["leaked_in_force"] == 0, result["examples"]["leaked_in_force"]
    assert final["final_decision_disagrees_with_training"] == 0, final["examples"]
    assert final["live_without_decision"] == 0, final
    assert result["verify_exit"] == 0, result["verify_output"]
    assert result["local_state_differs_from_changelog"] == 0, result["local_state_mismatches"]
