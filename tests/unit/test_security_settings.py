"""Secured-cluster settings (issue 19, part 1): flags and variables, validation with one
line, secrets that never show, the one connection configuration built from them, and
the ACL table of docs/operations.md against the code's."""

from __future__ import annotations

import pickle
import ssl
from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from streams.cli.main import build_parser, main
from streams.kafka.connection import (
    access_problem,
    connection_flags,
    faust_connection,
    librdkafka_config,
    registry_config,
    required_acls,
)
from streams.settings import Secret, Settings, SettingsError, from_args
from tests.certs import make_certs

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cret-Pa55word"


@pytest.fixture(autouse=True)
def _no_outer_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings under test come from the arguments and variables set here."""
    import os

    for name in list(os.environ):
        if name.startswith("ENFORCER_") or name == "KAFKA_BOOTSTRAP_SERVERS":
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory):
    return make_certs(tmp_path_factory.mktemp("certs"), key_password="key-pw")


def settings_of(*argv: str) -> Settings:
    return from_args(build_parser().parse_args(["worker", *argv]))


def password_file(tmp_path: Path, text: str = PASSWORD + "\n") -> Path:
    path = tmp_path / "password"
    path.write_text(text)
    return path


def sasl_ssl(tmp_path: Path, certs, *more: str) -> list[str]:
    return [
        "--security-protocol",
        "sasl_ssl",
        "--sasl-username",
        "enforcer",
        "--sasl-password-file",
        str(password_file(tmp_path)),
        "--ssl-ca-file",
        str(certs.ca),
        *more,
    ]


def test_plaintext_by_default_and_only_the_bootstrap_address() -> None:
    s = settings_of()
    assert s.security.protocol == "PLAINTEXT"
    assert librdkafka_config(s, {"group.id": "g"}) == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "plaintext",
        "group.id": "g",
    }
    assert "broker_credentials" not in faust_connection(s)


def test_sasl_ssl_with_mutual_tls_reaches_every_client(tmp_path: Path, certs) -> None:
    key_password = tmp_path / "key-password"
    key_password.write_text("key-pw")
    s = settings_of(
        *sasl_ssl(tmp_path, certs),
        "--sasl-mechanism",
        "scram-sha-256",
        "--ssl-cert-file",
        str(certs.client_cert),
        "--ssl-key-file",
        str(certs.client_key),
        "--ssl-key-password-file",
        str(key_password),
    )
    config = librdkafka_config(s)
    assert config["security.protocol"] == "sasl_ssl"
    assert config["sasl.mechanism"] == "SCRAM-SHA-256"
    assert (config["sasl.username"], config["sasl.password"]) == ("enforcer", PASSWORD)
    assert config["ssl.ca.location"] == str(certs.ca)
    assert config["ssl.certificate.location"] == str(certs.client_cert)
    assert config["ssl.key.password"] == "key-pw"
    credentials = faust_connection(s)["broker_credentials"]
    assert (credentials.username, credentials.password) == ("enforcer", PASSWORD)
    assert credentials.mechanism.value == "SCRAM-SHA-256"
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert credentials.ssl_context.check_hostname


def test_ssl_without_sasl_gives_faust_ssl_credentials(certs) -> None:
    s = settings_of("--security-protocol", "SSL", "--ssl-ca-file", str(certs.ca))
    credentials = faust_connection(s)["broker_credentials"]
    assert credentials.protocol.value == "SSL"
    assert "sasl.username" not in librdkafka_config(s)


def test_the_password_from_the_environment_and_a_file_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENFORCER_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("ENFORCER_SASL_USERNAME", "enforcer")
    monkeypatch.setenv("ENFORCER_SASL_PASSWORD", "from-the-environment")
    assert settings_of().security.sasl_password == Secret("from-the-environment")
    monkeypatch.setenv("ENFORCER_SASL_PASSWORD_FILE", str(password_file(tmp_path)))
    s = settings_of()
    assert s.security.sasl_password == Secret(PASSWORD)  # its line ending dropped
    assert s.security.mechanism == "SCRAM-SHA-512"  # the default


@pytest.mark.parametrize("flag", ["--sasl-password", "--ssl-key-password"])
def test_a_secret_on_the_command_line_is_refused_without_echoing_it(flag: str) -> None:
    with pytest.raises(SettingsError) as raised:
        settings_of(flag, PASSWORD)
    assert PASSWORD not in str(raised.value) and f"{flag}-file" in str(raised.value)


def test_secrets_are_redacted_everywhere_but_reveal(tmp_path: Path, certs) -> None:
    s = settings_of(*sasl_ssl(tmp_path, certs))
    for text in (repr(s), str(s), repr(s.security), str(s.security.sasl_password)):
        assert PASSWORD not in text
    assert "Secret('********')" in repr(s.security)
    assert PASSWORD not in " ".join(connection_flags(s))
    assert "--sasl-password-file" in connection_flags(s)
    # the re-keying stage gets its settings pickled
    assert pickle.loads(pickle.dumps(s)).security.sasl_password.reveal() == PASSWORD


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--security-protocol", "TLS"], "--security-protocol must be one of"),
        (["--sasl-mechanism", "PLAIN"], "--sasl-mechanism needs --security-protocol SASL_"),
        (["--sasl-username", "x"], "--sasl-username needs --security-protocol SASL_"),
        (["--security-protocol", "SASL_SSL"], "needs --sasl-username"),
        (
            ["--security-protocol", "SASL_SSL", "--sasl-username", "x"],
            "needs a password: --sasl-password-file or ENFORCER_SASL_PASSWORD",
        ),
        (["--ssl-ca-file", "/etc/hostname"], "--ssl-ca-file needs --security-protocol SSL"),
        (
            ["--security-protocol", "SSL", "--ssl-ca-file", "/nonexistent/ca.pem"],
            "cannot read --ssl-ca-file /nonexistent/ca.pem",
        ),
        (
            ["--security-protocol", "SSL", "--ssl-cert-file", "/etc/hostname"],
            "--ssl-cert-file and --ssl-key-file go together",
        ),
        (
            ["--security-protocol", "SSL", "--sasl-password-file", "/nonexistent/pw"],
            "cannot read --sasl-password-file /nonexistent/pw",
        ),
        (["--schema-registry-user", "u"], "need --schema-registry-url"),
        (
            ["--schema-registry-url", "http://r:8081", "--schema-registry-user", "u"],
            "--schema-registry-user needs a password",
        ),
    ],
)
def test_bad_configuration_is_one_line(argv: list[str], message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        settings_of(*argv)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_tls_files_that_do_not_load_are_named(tmp_path: Path, certs) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-key-pw")
    with pytest.raises(SettingsError, match="is --ssl-key-file the key of --ssl-cert-file"):
        settings_of(
            "--security-protocol",
            "SSL",
            "--ssl-cert-file",
            str(certs.client_cert),
            "--ssl-key-file",
            str(certs.client_key),
            "--ssl-key-password-file",
            str(wrong),
        )
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("hello")
    with pytest.raises(SettingsError, match="does --ssl-ca-file hold PEM"):
        settings_of("--security-protocol", "SSL", "--ssl-ca-file", str(not_pem))


def test_an_empty_or_multi_line_password_file_is_refused(tmp_path: Path) -> None:
    base = ["--security-protocol", "SASL_PLAINTEXT", "--sasl-username", "x"]
    for text, message in (("\n", "is empty"), ("a\nb\n", "must hold one line")):
        path = password_file(tmp_path, text)
        with pytest.raises(SettingsError, match=message):
            settings_of(*base, "--sasl-password-file", str(path))


def test_the_command_line_prints_one_line_and_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["topics", "create", "--security-protocol", "SASL_SSL"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("enforcer: error: ")


# -- the schema registry ------------------------------------------------------------------
def test_registry_basic_authentication_and_ca(tmp_path: Path, certs) -> None:
    s = settings_of(
        "--schema-registry-url",
        "https://registry:8081",
        "--schema-registry-user",
        "reader",
        "--schema-registry-password-file",
        str(password_file(tmp_path)),
        "--schema-registry-ca-file",
        str(certs.ca),
    )
    assert registry_config(s) == {
        "url": "https://registry:8081",
        "ssl.ca.location": str(certs.ca),
        "basic.auth.user.info": f"reader:{PASSWORD}",
    }
    assert PASSWORD not in repr(s.registry_security)


def test_a_registry_bearer_token_is_read_for_every_request(tmp_path: Path) -> None:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    token = tmp_path / "token"
    token.write_text("first-token\n")
    s = settings_of(
        "--schema-registry-url", "http://registry:8081", "--schema-registry-token-file", str(token)
    )
    client = SchemaRegistryClient(registry_config(s))
    headers: dict[str, str] = {}
    client._rest_client.handle_bearer_auth(headers)
    assert headers["Authorization"] == "Bearer first-token"
    token.write_text("rotated-token\n")
    client._rest_client.handle_bearer_auth(headers)
    assert headers["Authorization"] == "Bearer rotated-token"


def test_bad_registry_configuration(tmp_path: Path) -> None:
    url = ["--schema-registry-url", "http://registry:8081"]
    with pytest.raises(SettingsError, match="needs an https:// --schema-registry-url"):
        settings_of(*url, "--schema-registry-ca-file", str(tmp_path / "ca.pem"))
    token = tmp_path / "token"
    token.write_text("token")
    with pytest.raises(SettingsError, match="not both"):
        settings_of(
            *url,
            "--schema-registry-user",
            "u",
            "--schema-registry-password-file",
            str(password_file(tmp_path)),
            "--schema-registry-token-file",
            str(token),
        )


# -- refusals by the cluster ----------------------------------------------------------------
def test_refusals_by_the_cluster_are_one_line_naming_the_cause() -> None:
    s = Settings()
    login = KafkaError(
        KafkaError._AUTHENTICATION,
        "sasl_ssl://127.0.0.1:9093/bootstrap: SASL authentication error: Authentication "
        "failed (after 310ms in state AUTH_REQ)",
    )
    line = access_problem(login, s)
    assert line is not None
    assert line.startswith("Kafka at 127.0.0.1:9092 refused the login of User:ANONYMOUS: SASL")
    assert "after 310ms" not in line and "sasl_ssl://" not in line
    tls = KafkaError(KafkaError._SSL, "x://h:1/b: SSL handshake failed: certificate verify failed")
    assert "TLS with Kafka at 127.0.0.1:9092 failed" in (access_problem(tls, s) or "")
    denied = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "Topic authorization failed")
    assert "Secured clusters" in (access_problem(denied, s) or "")
    assert access_problem(KafkaError(KafkaError._TRANSPORT, "broker down"), s) is None


# -- the documented ACLs are the code's ----------------------------------------------------
def render_acl_table(settings: Settings) -> str:
    lines = [
        "| command | resource | pattern | name | operations | why |",
        "|---|---|---|---|---|---|",
    ]
    for acl in required_acls(settings):
        names = ", ".join(f"`{name}`" for name in acl.names)
        lines.append(
            f"| {acl.command} | {acl.resource} | {acl.pattern} | {names} | "
            f"{', '.join(acl.operations)} | {acl.why} |"
        )
    return "\n".join(lines)


def test_operations_md_lists_the_acls_the_code_checks() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    block = text.split("<!-- acls:begin -->\n", 1)[1].split("\n<!-- acls:end -->", 1)[0]
    assert block == render_acl_table(Settings(app_id="<app-id>"))


# -- the check of a command's ACLs against what the broker authorizes ------------------
class _Done:
    def __init__(self, value: object = None, error: KafkaError | None = None) -> None:
        self.value, self.error = value, error

    def result(self) -> object:
        if self.error is not None:
            from confluent_kafka import KafkaException

            raise KafkaException(self.error)
        return self.value


class _Authorized:
    def __init__(self, operations: list[str]) -> None:
        from confluent_kafka.admin import AclOperation

        self.authorized_operations = [AclOperation[op] for op in operations]


class FakeAdmin:
    """Answers describe_topics / describe_consumer_groups with authorized operations."""

    def __init__(self, topics: dict[str, list[str] | None], groups: dict[str, list[str]]) -> None:
        self.topics, self.groups, self.asked_groups = topics, groups, []

    def describe_topics(self, collection, **kwargs):
        out = {}
        for name in collection.topic_names:
            ops = self.topics.get(name)
            out[name] = (
                _Done(error=KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
                if ops is None
                else _Done(_Authorized(ops))
            )
        return out

    def describe_consumer_groups(self, groups, **kwargs):
        self.asked_groups += groups
        return {g: _Done(_Authorized(self.groups.get(g, []))) for g in groups}


def test_check_access_names_the_first_acl_missing() -> None:
    from streams.kafka.connection import KafkaAccessError, check_access

    s = Settings(app_id="app")
    topics = {s.posts_topic: ["READ", "DESCRIBE"], s.objections_topic: ["READ", "DESCRIBE"]}
    # DESCRIBE_CONFIGS: the worker checks each written topic's max.message.bytes at start
    topics |= {t: ["WRITE", "DESCRIBE", "DESCRIBE_CONFIGS"] for t in s.output_topics}
    internal = ["READ", "WRITE", "CREATE", "DESCRIBE", "DESCRIBE_CONFIGS"]
    topics |= {s.user_events_topic: [*internal, "DELETE", "ALTER_CONFIGS", "DESCRIBE_CONFIGS"]}
    groups = {"app": ["READ", "DESCRIBE"], "app-rekey": ["READ", "DESCRIBE"]}
    known = [*topics, s.replay_results_topic]
    topics[s.replay_results_topic] = internal
    admin = FakeAdmin(topics, groups)
    check_access(admin, s, "worker", known)  # everything there
    # the endpoints reader's group only matters with the consent lookup
    assert "app-endpoints-reader" not in admin.asked_groups
    with pytest.raises(KafkaAccessError, match="User:ANONYMOUS may not READ group app-endpoints"):
        check_access(
            admin, Settings(app_id="app", consent_lookup_token_file=Path("t")), "worker", known
        )
    topics[s.training_topic] = None  # not even DESCRIBE
    with pytest.raises(
        KafkaAccessError, match=f"may not DESCRIBE_CONFIGS, WRITE topic {s.training_topic}: grant"
    ):
        check_access(FakeAdmin(topics, groups), s, "worker", known)
    topics[s.training_topic] = ["WRITE", "DESCRIBE"]  # its record limit cannot be read
    with pytest.raises(
        KafkaAccessError, match=f"may not DESCRIBE_CONFIGS topic {s.training_topic}: grant"
    ):
        check_access(FakeAdmin(topics, groups), s, "worker", known)
    topics[s.training_topic] = ["WRITE", "DESCRIBE", "DESCRIBE_CONFIGS"]
    topics[s.user_events_topic] = internal  # no DELETE for the purge
    with pytest.raises(KafkaAccessError, match="may not ALTER_CONFIGS, DELETE topic"):
        check_access(FakeAdmin(topics, groups), s, "worker", known)


def test_a_broker_slow_to_answer_the_acl_check_is_asked_again(monkeypatch) -> None:
    """A timeout is transient (a loaded cluster): the worker asks again instead of
    stopping at start; a refusal stops it at once, not asked again."""
    from confluent_kafka import KafkaException

    from streams.kafka import connection, topics
    from streams.kafka.connection import KafkaAccessError

    calls = []

    def slow_then_fine(*args, **kwargs) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))

    monkeypatch.setattr(topics.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(connection, "check_access", slow_then_fine)
    topics.check_access(Settings(app_id="app"), "worker", admin=object())  # type: ignore[arg-type]
    assert len(calls) == 3

    def refused(*args, **kwargs) -> None:
        calls.append(1)
        raise KafkaAccessError("User:ANONYMOUS may not READ topic posts")

    calls.clear()
    monkeypatch.setattr(connection, "check_access", refused)
    with pytest.raises(KafkaAccessError):
        topics.check_access(Settings(app_id="app"), "worker", admin=object())  # type: ignore[arg-type]
    assert len(calls) == 1
