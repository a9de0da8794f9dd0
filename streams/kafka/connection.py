"""One connection configuration for every Kafka client the enforcer makes.

Built from ``Settings`` (``settings.security``, ``settings.registry_security``): the
librdkafka producers, consumers and admin clients (the re-keying stage, the outputs,
topics, replay, generate and the demo's traffic, audit, verify, the consent lookup),
Faust's aiokafka consumer and producer (``faust_connection``), and the schema
registry's HTTP client (``registry_config``). A new connection setting is added here,
once.

One-shot commands use ``command_config``: a refused login or certificate (librdkafka
reports them through ``error_cb``) raises ``KafkaAccessError``, one line, out of the
client call that served it, instead of retrying until a timeout; librdkafka's own log
lines are not printed. The worker's long-lived clients keep ``librdkafka_config``;
the worker checks its access once at start (``check_access``).

``required_acls`` is what each command needs on a cluster with an authorizer;
docs/operations.md ("Secured clusters") prints the same table (a unit test compares
them) and the secured-cluster test grants exactly that.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicCollection

from streams.settings import Settings, SettingsError, read_secret_file


class KafkaAccessError(SettingsError):
    """The cluster refused the enforcer: a login, a certificate or an ACL (one line)."""


def librdkafka_config(settings: Settings, role: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A librdkafka client's configuration: where the cluster is and how to connect
    to it, then the ``role``'s own settings (group, batching, ...)."""
    k = settings.security
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "security.protocol": k.protocol.lower(),
    }
    if k.sasl:
        config["sasl.mechanism"] = k.mechanism
        config["sasl.username"] = k.sasl_username
        config["sasl.password"] = k.sasl_password.reveal() if k.sasl_password else ""
    if k.tls:
        # the broker's host name is verified (librdkafka's default, kept)
        if k.ssl_ca_file:
            config["ssl.ca.location"] = str(k.ssl_ca_file)
        if k.ssl_cert_file and k.ssl_key_file:
            config["ssl.certificate.location"] = str(k.ssl_cert_file)
            config["ssl.key.location"] = str(k.ssl_key_file)
            if k.ssl_key_password:
                config["ssl.key.password"] = k.ssl_key_password.reveal()
    config.update(role or {})
    return config


def command_config(settings: Settings, role: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``librdkafka_config`` for a one-shot command's client: a refused login or
    certificate raises ``KafkaAccessError`` from the call that serves it (poll,
    consume, flush), and librdkafka prints nothing itself."""
    return {
        **librdkafka_config(settings, role),
        "error_cb": StopOnAccessError(settings),
        "log_level": 0,
        "logger": QUIET,
    }


class _QuietLogger:
    """Swallows librdkafka's log lines (connection chatter; errors surface otherwise)."""

    def log(self, *args: object, **kwargs: object) -> None:
        pass

    def debug(self, *args: object, **kwargs: object) -> None:
        pass

    info = warning = error = critical = exception = debug


QUIET = _QuietLogger()

# refused by the cluster: no retry helps
_LOGIN = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}
_DENIED = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
}
_BROKER_PREFIX = re.compile(r"^\S+://\S+?: ")  # "sasl_ssl://127.0.0.1:9093/bootstrap: "
_AFTER = re.compile(r"\s*\(after \d+ms in state \w+\)$")
_CA_HINT = re.compile(r", verify that ssl\.ca\.location .*$")


def principal(settings: Settings) -> str:
    """Who the cluster sees, as its ACLs name it."""
    k = settings.security
    if k.sasl:
        return f"User:{k.sasl_username}"
    if k.ssl_cert_file:
        return f"the principal of the client certificate {k.ssl_cert_file}"
    return "User:ANONYMOUS"


def access_problem(err: KafkaError, settings: Settings) -> str | None:
    """One line when ``err`` means the cluster refuses this client (a login, a
    certificate, an ACL); None for anything a retry may cure."""
    code = err.code()
    text = _CA_HINT.sub("", _AFTER.sub("", _BROKER_PREFIX.sub("", err.str())))
    where = f"Kafka at {settings.bootstrap_servers}"
    if code in _LOGIN:
        return (
            f"{where} refused the login of {principal(settings)}: {text} (check --sasl-username, "
            "the password and --sasl-mechanism)"
        )
    # a client certificate the broker refused reaches librdkafka as a TLS alert on a
    # transport error (TLS 1.3 checks it after the handshake)
    if code == KafkaError._SSL or (code == KafkaError._TRANSPORT and "SSL alert" in text):
        return (
            f"TLS with {where} failed: {text} (is --ssl-ca-file the CA that signed the brokers' "
            "certificates, and does the broker accept the client certificate?)"
        )
    if code in _DENIED:
        return (
            f"{where} denied {principal(settings)}: {text}; grant the ACLs "
            "docs/operations.md lists under 'Secured clusters'"
        )
    return None


def kafka_failure(exc: Exception, settings: Settings) -> str:
    """One line for a Kafka client call that failed (a ``KafkaException``, or a fatal
    ``KafkaError`` raised as such)."""
    err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else exc
    if isinstance(err, KafkaError):
        return (
            access_problem(err, settings) or f"Kafka at {settings.bootstrap_servers}: {err.str()}"
        )
    return f"Kafka at {settings.bootstrap_servers}: {err}"


def raise_if_denied(err: KafkaError | None, settings: Settings) -> None:
    """Raise ``KafkaAccessError`` for an error that means access is refused."""
    if err is not None:
        line = access_problem(err, settings)
        if line is not None:
            raise KafkaAccessError(line)


class StopOnAccessError:
    """A librdkafka ``error_cb``: a refused login or certificate raises
    ``KafkaAccessError`` out of the client call serving it; other errors (a broker
    away) are left to librdkafka's retries and the caller's deadline."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __call__(self, err: KafkaError) -> None:
        raise_if_denied(err, self.settings)


# -- Faust (aiokafka) ---------------------------------------------------------------------
def faust_connection(settings: Settings) -> dict[str, Any]:
    """Faust's ``broker`` and ``broker_credentials`` settings, which its consumer, its
    producer and its topic creation (through the consumer's client) all use."""
    # imported here, not at the top: only the worker imports Faust (it takes a second)
    import faust

    k = settings.security
    conf: dict[str, Any] = {"broker": f"kafka://{settings.bootstrap_servers.replace(',', ';')}"}
    context = k.ssl_context() if k.tls else None
    if k.sasl:
        conf["broker_credentials"] = faust.SASLCredentials(
            username=k.sasl_username,
            password=k.sasl_password.reveal() if k.sasl_password else None,
            ssl_context=context,
            mechanism=k.mechanism,
        )
    elif context is not None:
        conf["broker_credentials"] = faust.SSLCredentials(context)
    return conf


# -- the schema registry ---------------------------------------------------------------------
def registry_config(settings: Settings) -> dict[str, Any]:
    """``SchemaRegistryClient``'s configuration: its URL, basic or bearer authentication,
    the CA for https. A bearer token is read from its file for every request, so that a
    rotated token is used at once."""
    r = settings.registry_security
    conf: dict[str, Any] = {"url": settings.schema_registry_url}
    if r.ca_file:
        conf["ssl.ca.location"] = str(r.ca_file)
    if r.user and r.password:
        conf["basic.auth.user.info"] = f"{r.user}:{r.password.reveal()}"
    if r.token_file:
        conf["bearer.auth.credentials.source"] = "CUSTOM"
        conf["bearer.auth.custom.provider.function"] = _bearer_token
        conf["bearer.auth.custom.provider.config"] = {"path": str(r.token_file)}
    return conf


def _bearer_token(config: dict[str, str]) -> dict[str, str]:
    token = read_secret_file(Path(config["path"]), "--schema-registry-token-file")
    # the client requires a logical cluster (a Confluent Cloud header); empty elsewhere
    return {"bearer.auth.token": token, "bearer.auth.logical.cluster": ""}


# -- child commands ----------------------------------------------------------------------------
def connection_flags(settings: Settings) -> list[str]:
    """The flags that make a child ``enforcer`` command (the demo's worker) connect as
    this one does: files only, never a secret; a secret given in the environment
    reaches the child through its environment."""
    k, r = settings.security, settings.registry_security
    out = ["--bootstrap-servers", settings.bootstrap_servers, "--security-protocol", k.protocol]
    for flag, value in (
        ("--sasl-mechanism", k.sasl_mechanism),
        ("--sasl-username", k.sasl_username),
        ("--sasl-password-file", k.sasl_password_file),
        ("--ssl-ca-file", k.ssl_ca_file),
        ("--ssl-cert-file", k.ssl_cert_file),
        ("--ssl-key-file", k.ssl_key_file),
        ("--ssl-key-password-file", k.ssl_key_password_file),
        ("--schema-registry-url", settings.schema_registry_url),
        ("--schema-registry-user", r.user),
        ("--schema-registry-password-file", r.password_file),
        ("--schema-registry-token-file", r.token_file),
        ("--schema-registry-ca-file", r.ca_file),
    ):
        if value:
            out += [flag, str(value)]
    return out


# -- ACLs ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Acl:
    """ACLs one command needs on a cluster with an authorizer: ``operations`` on each
    resource ``names`` (literal names, or prefixes)."""

    command: str
    resource: str  # topic | group | transactional-id
    pattern: str  # literal | prefixed
    names: tuple[str, ...]
    operations: tuple[str, ...]
    why: str
    # a setting without which the command does not use the resource (check_access)
    only_with: str | None = None


# the group ids of the commands that read without joining a group (librdkafka looks
# their coordinator up, which needs DESCRIBE)
AUDIT_GROUP = "enforcer-audit"
VERIFY_GROUP = "enforcer-verify"


def required_acls(settings: Settings) -> list[Acl]:
    """What each command's principal needs (docs/operations.md, "Secured clusters")."""
    s, a = settings, settings.app_id
    inputs = (s.posts_topic, s.objections_topic)
    outputs = tuple(s.output_topics)
    internal = s.user_events_topic
    training = (s.retractions_topic, s.training_topic)
    return [
        Acl("worker", "topic", "literal", inputs, ("READ",), "the re-keying stage reads them"),
        Acl(
            "worker",
            "topic",
            "literal",
            outputs,
            ("WRITE", "DESCRIBE_CONFIGS"),
            "the gate's outputs; their max.message.bytes is checked at start",
        ),
        Acl(
            "worker",
            "topic",
            "prefixed",
            (f"{a}-",),
            ("READ", "WRITE", "CREATE", "DESCRIBE_CONFIGS"),
            "internal topics (re-keyed inputs, table changelogs, replay answers, worker "
            "endpoints, Faust's leader topic), created by the worker when missing; their "
            "max.message.bytes is checked at start",
        ),
        Acl(
            "worker",
            "topic",
            "literal",
            (internal,),
            ("DELETE", "DESCRIBE_CONFIGS", "ALTER_CONFIGS"),
            "the gate deletes processed records; its retention is checked at start",
        ),
        Acl("worker", "group", "literal", (a,), ("READ",), "the gate's group (Faust)"),
        Acl("worker", "group", "literal", (f"{a}-rekey",), ("READ",), "the re-keying stage"),
        Acl(
            "worker",
            "group",
            "literal",
            (f"{a}-endpoints-reader",),
            ("READ",),
            "the consent lookup's endpoints reader (only with --consent-lookup-token-file)",
            only_with="consent_lookup_token_file",
        ),
        Acl(
            "worker",
            "transactional-id",
            "prefixed",
            (f"{a}-gate-",),
            ("WRITE", "DESCRIBE"),
            "fencing: one transactional producer per internal partition",
        ),
        Acl(
            "topics create",
            "topic",
            "literal",
            (*inputs, *outputs),
            ("CREATE", "DESCRIBE"),
            "creates the contract's topics (and sees them)",
        ),
        Acl(
            "topics create",
            "topic",
            "prefixed",
            (f"{a}-",),
            ("CREATE", "DESCRIBE"),
            "creates the internal topics (and sees them)",
        ),
        Acl(
            "topics create",
            "topic",
            "literal",
            (internal,),
            ("DESCRIBE_CONFIGS", "ALTER_CONFIGS"),
            "checks the internal topic's retention",
        ),
        Acl("replay", "topic", "literal", (s.posts_topic,), ("READ",), "selects the posts"),
        Acl("replay", "topic", "literal", (internal,), ("WRITE",), "sends replay requests"),
        Acl(
            "replay", "topic", "literal", (s.replay_results_topic,), ("READ",), "reads the answers"
        ),
        Acl("replay", "group", "literal", (a,), ("DESCRIBE",), "checks that a worker runs"),
        Acl("replay", "group", "prefixed", (f"{a}-replay-",), ("READ",), "its readers' groups"),
        Acl("generate", "topic", "literal", inputs, ("WRITE",), "synthetic traffic (and demo)"),
        Acl(
            "audit",
            "topic",
            "literal",
            (s.receipts_topic, s.retractions_topic, s.decisions_topic),
            ("READ",),
            "one user's timeline",
        ),
        Acl("audit", "group", "literal", (AUDIT_GROUP,), ("DESCRIBE",), "its reader (no commits)"),
        Acl(
            "verify",
            "topic",
            "literal",
            (*inputs, s.receipts_topic, s.decisions_topic, s.dlq_topic, *training),
            ("READ",),
            "reads every topic of the contract",
        ),
        Acl(
            "verify", "group", "literal", (VERIFY_GROUP,), ("DESCRIBE",), "its reader (no commits)"
        ),
    ]


# operations the broker also grants when one of these is allowed (Kafka's implied ACLs)
_IMPLIES = {"DESCRIBE": {"READ", "WRITE", "DELETE", "ALTER"}, "DESCRIBE_CONFIGS": {"ALTER_CONFIGS"}}


def check_access(
    admin: Any, settings: Settings, command: str, known_topics: Iterable[str], timeout: float = 15.0
) -> None:
    """Stop (``KafkaAccessError``, one line naming the ACL) when the principal lacks an
    ACL ``command`` needs on its existing topics (``known_topics`` are the names a
    prefix may cover) and its groups, from the operations the broker says it
    authorizes (KIP-430). Transactional ids cannot be asked about:
    a missing one stops the worker when its partitions are assigned. A broker that does
    not say (no authorizer answers with every operation; an old one with none) passes."""
    topics: dict[str, set[str]] = {}
    groups: dict[str, set[str]] = {}
    known_topics = list(known_topics)
    for acl in required_acls(settings):
        if acl.command != command or acl.resource == "transactional-id":
            continue
        if acl.only_with and not getattr(settings, acl.only_with):
            continue
        if acl.resource == "topic":
            for name in acl.names:
                matches = (
                    [t for t in known_topics if t.startswith(name)]
                    if acl.pattern == "prefixed"
                    else [name]
                )
                for topic in matches:
                    topics.setdefault(topic, set()).update(acl.operations)
        else:
            for name in acl.names:  # a group of the prefix, whether or not it exists
                group = f"{name}preflight" if acl.pattern == "prefixed" else name
                groups.setdefault(group, set()).update(acl.operations)
    who = principal(settings)
    deadline = time.monotonic() + timeout
    if topics:
        futures = admin.describe_topics(
            TopicCollection(sorted(topics)),
            include_authorized_operations=True,
            request_timeout=timeout,
        )
        for topic, future in futures.items():
            try:
                allowed = _names(future.result().authorized_operations)
            except KafkaException as exc:
                code = exc.args[0].code()
                if code == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                    allowed = set()  # not even DESCRIBE (or it does not exist)
                elif code == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    continue  # created later, or its absence is reported elsewhere
                else:
                    raise
            _require(allowed, topics[topic], f"topic {topic}", who)
    for group, wanted in sorted(groups.items()):
        allowed = _group_operations(admin, group, max(1.0, deadline - time.monotonic()))
        _require(allowed, wanted, f"group {group}", who)


def _names(operations: Iterable[Any] | None) -> set[str] | None:
    return None if operations is None else {op.name for op in operations}


def _require(allowed: set[str] | None, wanted: set[str], what: str, who: str) -> None:
    if allowed is None:  # the broker did not say
        return
    missing = sorted(
        op for op in wanted if op not in allowed and not (_IMPLIES.get(op, set()) & allowed)
    )
    if missing:
        raise KafkaAccessError(
            f"{who} may not {', '.join(missing)} {what}: grant the ACLs docs/operations.md "
            "lists under 'Secured clusters'"
        )


def _group_operations(admin: Any, group: str, timeout: float) -> set[str] | None:
    """The operations the broker authorizes on a group (existing or not)."""
    deadline = time.monotonic() + timeout
    while True:
        future = admin.describe_consumer_groups(
            [group], include_authorized_operations=True, request_timeout=timeout
        )[group]
        try:
            return _names(future.result().authorized_operations)
        except KafkaException as exc:
            code = exc.args[0].code()
            if code == KafkaError.GROUP_AUTHORIZATION_FAILED:
                return set()
            # the group coordinator is still loading, or moved
            retriable = code in (
                KafkaError.NOT_COORDINATOR,
                KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                KafkaError.COORDINATOR_NOT_AVAILABLE,
            )
            if not retriable or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
