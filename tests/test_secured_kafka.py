"""A secured cluster: SASL_SSL (SCRAM), mutual TLS and ACLs (issue 19, part 1).

One broker of ``local-kafka start --security sasl_ssl`` per module, on free ports, with
certificates this test makes (``tests/certs.py``; the client key is encrypted) and
client certificates required. Principals get exactly the ACLs docs/operations.md lists
("Secured clusters"), read from that table: ``enforcer`` the worker's rows, ``operator``
those of ``topics create`` and ``replay``, ``upstream`` those of ``generate``. Then the
worker decides posts end to end (a post published, an objection that retracts it and
blocks a later one), ``enforcer replay`` answers, and ``enforcer generate`` (the demo's
traffic) produces. A wrong password, a CA that did not sign the broker's certificate,
a client certificate of a CA the broker does not trust, and one ACL missing each stop
``enforcer worker`` with one line and exit code 2 within a deadline.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from streams.kafka.connection import librdkafka_config
from streams.settings import TOPIC_FLAGS, KafkaSecurity, Secret, Settings
from tests.certs import Certs, make_certs
from tests.enforcer_env import metric
from tests.support import (
    CODEC,
    LOCAL_KAFKA,
    ROOT,
    Names,
    Worker,
    free_port,
    free_ports,
    objection,
    post,
)

pytestmark = pytest.mark.integration

KEY_PASSWORD = "client-key-" + secrets.token_hex(4)
USERS = ("admin", "enforcer", "operator", "upstream", "limited")
# who runs which command (docs/operations.md's "command" column)
PRINCIPALS = {
    "worker": "enforcer",
    "topics create": "operator",
    "replay": "operator",
    "generate": "upstream",
}
PARTITIONS = 2
FAILURE_DEADLINE = 60.0  # seconds a refused command may take to stop


@dataclass
class SecuredBroker:
    """The broker, the certificates and every principal's password file."""

    bootstrap: str
    certs: Certs
    directory: Path
    passwords: dict[str, str]

    def password_file(self, user: str, password: str | None = None) -> Path:
        path = self.directory / f"{user}-{secrets.token_hex(3)}.password"
        path.write_text((password or self.passwords[user]) + "\n")
        path.chmod(0o600)
        return path

    def key_password_file(self) -> Path:
        path = self.directory / "client-key.password"
        path.write_text(KEY_PASSWORD)
        return path

    def security(self, user: str, mechanism: str = "SCRAM-SHA-512") -> KafkaSecurity:
        return KafkaSecurity(
            protocol="SASL_SSL",
            sasl_mechanism=mechanism,
            sasl_username=user,
            sasl_password=Secret(self.passwords[user]),
            ssl_ca_file=self.certs.ca,
            ssl_cert_file=self.certs.client_cert,
            ssl_key_file=self.certs.client_key,
            ssl_key_password=Secret(KEY_PASSWORD),
        )

    def settings(self, user: str, names: Names) -> Settings:
        base = names.settings(self.bootstrap, PARTITIONS, self.directory / "unused")
        return dataclasses.replace(base, security=self.security(user))

    def flags(
        self,
        user: str,
        *,
        password_file: Path | None = None,
        ca: Path | None = None,
        other_client: bool = False,
    ) -> list[str]:
        """A command's security flags; the password from a file unless ``password_file``
        is None (then ENFORCER_SASL_PASSWORD must hold it); ``other_client``: the client
        certificate of a CA the broker does not trust."""
        if other_client:
            cert, key = self.certs.other_client_cert, self.certs.other_client_key
            return [
                "--security-protocol",
                "SASL_SSL",
                "--sasl-username",
                user,
                *(["--sasl-password-file", str(password_file)] if password_file else []),
                "--ssl-ca-file",
                str(self.certs.ca),
                "--ssl-cert-file",
                str(cert),
                "--ssl-key-file",
                str(key),
            ]
        return [
            "--security-protocol",
            "SASL_SSL",
            "--sasl-username",
            user,
            *(["--sasl-password-file", str(password_file)] if password_file else []),
            "--ssl-ca-file",
            str(ca or self.certs.ca),
            "--ssl-cert-file",
            str(self.certs.client_cert),
            "--ssl-key-file",
            str(self.certs.client_key),
            "--ssl-key-password-file",
            str(self.key_password_file()),
        ]

    def admin(self) -> AdminClient:
        settings = Settings(bootstrap_servers=self.bootstrap, security=self.security("admin"))
        return AdminClient(librdkafka_config(settings))


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBroker]:
    directory = tmp_path_factory.mktemp("secured")
    certs = make_certs(directory / "certs", key_password=KEY_PASSWORD)
    passwords = {user: f"{user}-{secrets.token_hex(8)}" for user in USERS}
    users = directory / "scram-users"
    users.write_text("".join(f"{u}:{p}\n" for u, p in passwords.items()))
    port = free_ports(1)  # below the ephemeral range, as its controller's (port + 1000)
    kafka_dir = Path(str(tmp_path_factory.mktemp("secured-kafka")))
    base = [str(LOCAL_KAFKA), "--port", str(port), "--dir", str(kafka_dir)]
    result = subprocess.run(
        [
            base[0],
            "start",
            *base[1:],
            "--security",
            "sasl_ssl",
            "--certs",
            str(certs.directory),
            "--scram-users",
            str(users),
            "--client-auth",
            "required",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"local-kafka start --security sasl_ssl:\n{result.stderr}"
    try:
        yield SecuredBroker(result.stdout.strip().splitlines()[-1], certs, directory, passwords)
    finally:
        subprocess.run([base[0], "stop", *base[1:]], capture_output=True, timeout=120)
        shutil.rmtree(kafka_dir, ignore_errors=True)


# -- the ACLs of docs/operations.md ------------------------------------------------------
@dataclass(frozen=True)
class DocumentedAcl:
    command: str
    resource: str
    pattern: str
    names: tuple[str, ...]
    operations: tuple[str, ...]


def documented_acls() -> list[DocumentedAcl]:
    """The rows of the ACL table in docs/operations.md, as written there."""
    text = (ROOT / "docs" / "operations.md").read_text()
    block = text.split("<!-- acls:begin -->", 1)[1].split("<!-- acls:end -->", 1)[0]
    rows = []
    for line in block.splitlines():
        if not line.startswith("| ") or line.startswith("| command "):
            continue
        command, resource, pattern, names, operations = (
            cell.strip() for cell in line.strip().strip("|").split("|")[:5]
        )
        rows.append(
            DocumentedAcl(
                command,
                resource,
                pattern,
                tuple(n.strip().strip("`") for n in names.split(",")),
                tuple(o.strip() for o in operations.split(",")),
            )
        )
    assert rows, "no ACL table in docs/operations.md"
    return rows


def bindings(
    names: Names, principal: str, commands: set[str], leave_out: Callable | None = None
) -> list[AclBinding]:
    """The documented ACLs of ``commands`` for this test's app id and topic names."""
    topic_names = {
        default: getattr(names.settings("x", 1, Path(".")), attr)
        for attr, (_, _, default) in TOPIC_FLAGS.items()
    }
    resources = {
        "topic": ResourceType.TOPIC,
        "group": ResourceType.GROUP,
        "transactional-id": ResourceType.TRANSACTIONAL_ID,
    }
    out: dict[tuple, AclBinding] = {}
    for acl in documented_acls():
        if acl.command not in commands:
            continue
        for documented in acl.names:
            name = topic_names.get(documented, documented).replace("<app-id>", names.app_id)
            for operation in acl.operations:
                if leave_out is not None and leave_out(acl.resource, name, operation):
                    continue
                out[(acl.resource, acl.pattern, name, operation)] = AclBinding(
                    resources[acl.resource],
                    name,
                    ResourcePatternType[acl.pattern.upper()],
                    f"User:{principal}",
                    "*",
                    AclOperation[operation],
                    AclPermissionType.ALLOW,
                )
    return list(out.values())


def grant(broker: SecuredBroker, acls: list[AclBinding]) -> None:
    admin = broker.admin()  # referenced until the futures are done
    for future in admin.create_acls(acls, request_timeout=30).values():
        future.result()


# -- commands ------------------------------------------------------------------------------
def enforcer(
    names: Names, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streams", *args, *names.flags(), "--partitions", str(PARTITIONS)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def one_line_failure(result: subprocess.CompletedProcess) -> str:
    """The single line a refused command printed (exit code 2, nothing else)."""
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, lines[-20:])
    assert len(lines) == 1, lines[-20:]
    assert lines[0].startswith("enforcer: error: "), lines
    return lines[0]


def read_decisions(
    broker: SecuredBroker,
    names: Names,
    done: Callable[[dict[str, list[dict[str, Any]]]], bool],
    timeout: float = 60.0,
) -> dict[str, list[dict[str, Any]]]:
    """Decisions by post id, read as the admin until ``done`` holds."""
    admin_settings = broker.settings("admin", names)
    consumer = Consumer(
        librdkafka_config(
            admin_settings,
            {
                "group.id": f"{names.app_id}-test-reader",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            },
        )
    )
    try:
        topic = names.decisions
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        found: dict[str, list[dict[str, Any]]] = {}
        deadline = time.monotonic() + timeout
        while not done(found):
            assert time.monotonic() < deadline, f"decisions so far: {found}"
            for m in consumer.consume(1000, timeout=0.5):
                if m.error() is None:
                    found.setdefault(m.key().decode(), []).append(CODEC.decode(m.value())[1])
        return found
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def deployment(secured: SecuredBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """This module's topics (created by ``operator``) and the worker (``enforcer``),
    each principal with exactly its documented ACLs."""
    names = Names(f"sec-{secrets.token_hex(4)}")
    for command, principal in PRINCIPALS.items():
        grant(secured, bindings(names, principal, {command}))
    created = enforcer(
        names,
        "topics",
        "create",
        "--bootstrap-servers",
        secured.bootstrap,
        *secured.flags("operator", password_file=secured.password_file("operator")),
    )
    assert created.returncode == 0, created.stderr
    data = tmp_path_factory.mktemp("secured-worker") / "state"
    worker = Worker(
        secured.bootstrap,
        names,
        data,
        *secured.flags("enforcer"),  # the password from the environment
        partitions=PARTITIONS,
        env={"ENFORCER_SASL_PASSWORD": secured.passwords["enforcer"]},
    )
    worker.start(timeout=120)
    try:
        yield names, worker
    finally:
        if worker.alive():
            worker.stop(60)


def test_the_worker_replay_and_generate_work_with_exactly_the_documented_acls(
    secured: SecuredBroker, deployment: tuple[Names, Worker]
) -> None:
    names, worker = deployment
    upstream = Producer(
        librdkafka_config(
            secured.settings("upstream", names), {"enable.idempotence": True, "linger.ms": 5}
        )
    )

    def send(topic: str, record_name: str, record: dict[str, Any]) -> None:
        upstream.produce(topic, CODEC.encode(record_name, record), record["user_id"].encode())
        assert upstream.flush(30) == 0

    send(names.posts, "Post", post("p1", "u1"))
    read_decisions(secured, names, lambda d: "p1" in d)
    send(
        names.objections,
        "ObjectionEvent",
        objection("e1", "u1", occurred_at=int(time.time() * 1000)),
    )
    send(names.posts, "Post", post("p2", "u1"))
    decided = read_decisions(secured, names, lambda d: len(d.get("p1", [])) >= 2 and "p2" in d)
    assert [d["outcome"] for d in decided["p1"]] == ["PUBLISHED", "RETRACTED"], decided
    assert (decided["p2"][0]["outcome"], decided["p2"][0]["reason"]) == ("BLOCKED", "OBJECTED")

    # the operator's replay: both posts re-decided, nothing changes
    replay = enforcer(
        names,
        "replay",
        "--users",
        "u1",
        "--timeout",
        "60",
        "--bootstrap-servers",
        secured.bootstrap,
        *secured.flags("operator", password_file=secured.password_file("operator")),
    )
    assert replay.returncode == 0, replay.stderr
    assert "2 posts re-decided" in replay.stdout and "0 changed" in replay.stdout, replay.stdout

    # the demo's traffic generator, as the upstream principal over SCRAM-SHA-256
    before = metric(worker, "enforcer_inputs_total", '{kind="post"}')
    generated = enforcer(
        names,
        "generate",
        "--count",
        "200",
        "--users",
        "50",
        "--bootstrap-servers",
        secured.bootstrap,
        "--sasl-mechanism",
        "SCRAM-SHA-256",
        *secured.flags("upstream", password_file=secured.password_file("upstream")),
    )
    assert generated.returncode == 0, generated.stderr
    posts = int(generated.stdout.split("post=")[1].split()[0])
    deadline = time.monotonic() + 60
    while metric(worker, "enforcer_inputs_total", '{kind="post"}') < before + posts:
        assert worker.alive(), worker.log()
        assert time.monotonic() < deadline, "the worker did not decide the generated posts"
        time.sleep(0.2)


def refused_worker(
    names: Names, secured: SecuredBroker, tmp_path: Path, *flags: str
) -> subprocess.CompletedProcess:
    started = time.monotonic()
    result = enforcer(
        names,
        "worker",
        "--bootstrap-servers",
        secured.bootstrap,
        "--data-dir",
        str(tmp_path / "state"),
        "--web-port",
        str(free_port()),
        *flags,
        timeout=FAILURE_DEADLINE,
    )
    assert time.monotonic() - started < FAILURE_DEADLINE
    return result


def test_a_wrong_password_stops_the_worker_with_one_line(
    secured: SecuredBroker, deployment: tuple[Names, Worker], tmp_path: Path
) -> None:
    names, _ = deployment
    wrong = secured.password_file("enforcer", "not-" + secured.passwords["enforcer"])
    line = one_line_failure(
        refused_worker(names, secured, tmp_path, *secured.flags("enforcer", password_file=wrong))
    )
    assert "refused the login of User:enforcer" in line, line
    assert secured.passwords["enforcer"] not in line


def test_an_untrusted_broker_certificate_stops_the_worker_with_one_line(
    secured: SecuredBroker, deployment: tuple[Names, Worker], tmp_path: Path
) -> None:
    names, _ = deployment
    flags = secured.flags(
        "enforcer", password_file=secured.password_file("enforcer"), ca=secured.certs.other_ca
    )
    line = one_line_failure(refused_worker(names, secured, tmp_path, *flags))
    assert "TLS with Kafka" in line and "certificate verify failed" in line, line


def test_a_client_certificate_the_broker_does_not_trust_stops_the_worker_with_one_line(
    secured: SecuredBroker, deployment: tuple[Names, Worker], tmp_path: Path
) -> None:
    names, _ = deployment
    flags = secured.flags(
        "enforcer", password_file=secured.password_file("enforcer"), other_client=True
    )
    line = one_line_failure(refused_worker(names, secured, tmp_path, *flags))
    assert "TLS with Kafka" in line and "SSL alert" in line, line


def test_a_missing_acl_stops_the_worker_with_one_line(
    secured: SecuredBroker, deployment: tuple[Names, Worker], tmp_path: Path
) -> None:
    names, _ = deployment
    grant(
        secured,
        bindings(
            names,
            "limited",
            {"worker"},
            leave_out=lambda resource, name, op: (
                (resource, name, op) == ("topic", names.training, "WRITE")
            ),
        ),
    )
    flags = secured.flags("limited", password_file=secured.password_file("limited"))
    line = one_line_failure(refused_worker(names, secured, tmp_path, *flags))
    # without WRITE (which implies DESCRIBE) the broker describes nothing of the topic to
    # it, so its DESCRIBE_CONFIGS cannot be seen either: both are named
    assert f"User:limited may not DESCRIBE_CONFIGS, WRITE topic {names.training}" in line, line
