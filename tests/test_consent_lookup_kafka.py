"""The consent lookup (``GET /consent/{user_id}``, streams/runtime/lookup.py) with two workers of
one app on the real broker: asked on either worker, the answer for each user is the
one of the worker that owns the user's partition (as the broker's group description
says), byte for byte the same from both; refused without the bearer token; absent
(404) where it is not configured."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from confluent_kafka.admin import AdminClient

from streams.core.records import partition_for_user
from streams.runtime.lookup import ANSWERED_BY, FORWARDED
from tests.enforcer_env import Deployment, run_enforcer
from tests.support import (
    SECRET_TEXT,
    SECRET_URL,
    Names,
    Worker,
    free_port,
    objection,
    post,
)

TOKEN = "lookup-test-token-0123456789abcdef"
PARTITIONS = 4


@pytest.fixture
def env(kafka: str, names, tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(kafka, names, tmp_path, partitions=PARTITIONS).create_topics()
    yield deployment
    deployment.close()


def ask(
    worker: Worker, user_id: str, token: str | None = TOKEN, **headers: str
) -> tuple[int, bytes, dict[str, str]]:
    """``GET /consent/<user_id>`` on a worker: status, body, headers."""
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    url = f"http://127.0.0.1:{worker.port}/consent/{quote(user_id, safe='')}"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=15) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def owners(kafka: str, names: Names) -> dict[int, str]:
    """Partition of the internal topic -> group instance id of its owner, as the broker
    describes the gate's consumer group (empty unless the group is stable)."""
    topic = names.settings(kafka, PARTITIONS, Path(".")).user_events_topic
    admin = AdminClient({"bootstrap.servers": kafka})
    group = admin.describe_consumer_groups([names.app_id])[names.app_id].result(timeout=10)
    if group.state.name != "STABLE":
        return {}
    return {
        tp.partition: member.group_instance_id
        for member in group.members
        for tp in member.assignment.topic_partitions
        if tp.topic == topic
    }


def users_on_every_partition(per_partition: int = 2) -> list[str]:
    found: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
    n = 0
    while any(len(v) < per_partition for v in found.values()):
        user = f"lookup-user-{n}"
        bucket = found[partition_for_user(user.encode(), PARTITIONS)]
        if len(bucket) < per_partition:
            bucket.append(user)
        n += 1
    return [u for p in sorted(found) for u in found[p]]


def events_for(i: int, user: str) -> tuple[list[dict], list[str], dict[str, tuple]]:
    """A user's events, the platforms they leave objected, and per platform the expected
    ``set_by`` (event id, action, platform), by one of three patterns."""
    if i % 3 == 0:  # objects everywhere
        return (
            [objection(f"{user}-e1", user, occurred_at=1000)],
            ["FACEBOOK", "INSTAGRAM"],
            {
                "FACEBOOK": (f"{user}-e1", "OBJECT", None),
                "INSTAGRAM": (f"{user}-e1", "OBJECT", None),
            },
        )
    if i % 3 == 1:  # objects on Facebook only
        return (
            [objection(f"{user}-e1", user, platform="FACEBOOK", occurred_at=1000)],
            ["FACEBOOK"],
            {"FACEBOOK": (f"{user}-e1", "OBJECT", "FACEBOOK"), "INSTAGRAM": None},
        )
    return (  # objects everywhere, later withdraws for Instagram
        [
            objection(f"{user}-e1", user, occurred_at=1000),
            objection(f"{user}-e2", user, "WITHDRAW", "INSTAGRAM", occurred_at=2000),
        ],
        ["FACEBOOK"],
        {
            "FACEBOOK": (f"{user}-e1", "OBJECT", None),
            "INSTAGRAM": (f"{user}-e2", "WITHDRAW", "INSTAGRAM"),
        },
    )


def test_either_worker_answers_with_the_owners_state(env: Deployment, tmp_path: Path) -> None:
    n = env.names
    token_file = tmp_path / "lookup.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    lookup = ("--consent-lookup-token-file", str(token_file))
    a = env.worker(*lookup, start=False, data_dir=tmp_path / "a")
    b = env.worker(*lookup, start=False, data_dir=tmp_path / "b")
    # a worker of another app without the lookup: the route does not exist there
    off_env = Deployment(env.kafka, Names(n.prefix + "-off"), tmp_path / "off", 1)
    off_env.create_topics()
    (tmp_path / "off").mkdir()
    off = off_env.worker(data_dir=tmp_path / "off" / "state", start=False)
    env.workers.append(off)  # stopped with the others
    t0 = int(time.time() * 1000)
    for worker in (a, b, off):
        worker.start(wait=False)

    users = users_on_every_partition()
    expected = {}
    sender = env.sender()
    sender.posts(n.posts, [post(f"{users[0]}-p1", users[0])])
    for i, user in enumerate(users):
        events, objected, set_by = events_for(i, user)
        sender.objections(n.objections, events)
        expected[user] = (objected, set_by)
    sender.flush()
    for worker in (a, b, off):
        worker.wait_ready(90)

    instance = {
        w: env.names.settings(env.kafka, PARTITIONS, w.data_dir).instance_id for w in (a, b)
    }
    answered: dict[str, bytes] = {}
    deadline = time.monotonic() + 60
    while len(answered) < len(users):
        assert time.monotonic() < deadline, f"answered {sorted(answered)}: {a.log()}\n{b.log()}"
        assert a.alive() and b.alive()
        owner_of = owners(env.kafka, n)
        for user in users:
            owner = owner_of.get(partition_for_user(user.encode(), PARTITIONS))
            got = [ask(w, user) for w in (a, b)]
            if owner is None or any(status != 200 for status, _, _ in got):
                continue
            body = json.loads(got[0][1])
            if sorted(body["objected_platforms"]) != sorted(expected[user][0]):
                continue  # events not all applied yet
            # the owner's answer, from both, byte for byte
            assert got[0][1] == got[1][1], user
            assert got[0][2][ANSWERED_BY] == got[1][2][ANSWERED_BY] == owner, user
            answered[user] = got[0][1]
        time.sleep(0.2)
    # both workers own some of these users: each of them answered for the other
    assert {json.loads(b_)["partition"] for b_ in answered.values()} == set(range(PARTITIONS))
    assert set(owners(env.kafka, n).values()) == set(instance.values())

    now = int(time.time() * 1000)
    for user, raw in answered.items():
        body = json.loads(raw)
        assert body["user_id"] == user
        assert body["partition"] == partition_for_user(user.encode(), PARTITIONS)
        for platform, want in expected[user][1].items():
            entry = body["platforms"][platform]
            assert entry["objected"] == (platform in expected[user][0])
            if want is None:
                assert entry["set_by"] is None
                continue
            got = entry["set_by"]
            assert (got["event_id"], got["action"], got["platform"]) == want, (user, platform)
            assert got["occurred_at"] in (1000, 2000)
            assert t0 <= got["applied_at"] <= now
        assert SECRET_TEXT.encode() not in raw and SECRET_URL.encode() not in raw

    # a user nobody objected for: every platform not objected, set by nothing
    for worker in (a, b):
        status, raw, headers = ask(worker, "lookup-nobody")
        assert status == 200, raw
        body = json.loads(raw)
        assert body["objected_platforms"] == []
        assert all(v == {"objected": False, "set_by": None} for v in body["platforms"].values())
    # no token, a wrong one, another scheme: 401, whether the user exists or not
    for worker in (a, b):
        for user in (users[0], "lookup-nobody", "\x00"):
            for token, extra in ((None, {}), ("wrong-token-0123456789", {})):
                status, raw, headers = ask(worker, user, token, **extra)
                assert status == 401 and b"objected" not in raw, (user, status, raw)
                assert headers.get("WWW-Authenticate", "").startswith("Bearer")
            status, _, _ = ask(worker, user, None, Authorization=f"Basic {TOKEN}")
            assert status == 401
    # garbage user ids: 400 (blank, too long, not UTF-8)
    for bad in ("%20%20", "x" * 1001, "%FF%FE"):
        url = f"http://127.0.0.1:{a.port}/consent/{bad}"
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=15)
        assert err.value.code == 400, bad
    # a forwarded request that reaches a worker that does not own the partition (it
    # holds a standby copy) is not answered from it, nor forwarded again
    user = users[0]
    owner = owners(env.kafka, n)[partition_for_user(user.encode(), PARTITIONS)]
    other = a if instance[b] == owner else b
    status, raw, headers = ask(other, user, **{FORWARDED: "1"})
    assert status == 503 and int(headers["Retry-After"]) > 0, raw
    # the worker without a token file has no such route
    assert ask(off, users[0])[0] == 404
    assert off.http("/ready")[0] == 200


def test_an_unusable_token_file_stops_the_worker_with_one_line(
    env: Deployment, tmp_path: Path
) -> None:
    short = tmp_path / "short.token"
    short.write_text("too-short\n")
    for path, fragment in ((tmp_path / "missing.token", "cannot read"), (short, "16 to 4096")):
        result = run_enforcer(
            env,
            "worker",
            "--data-dir",
            str(tmp_path / "state"),
            "--web-port",
            str(free_port()),
            "--consent-lookup-token-file",
            str(path),
            timeout=60,
        )
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert fragment in lines[0] and "too-short" not in result.stderr, lines[0]
