"""The enforcer's settings: command-line flags and environment variables, validated once.

Every flag of the contract also reads an environment variable; a flag wins over the
environment, the environment over the default. ``SettingsError`` carries a one-line
reason for the operator. No Kafka here.
"""

from __future__ import annotations

import argparse
import os
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_APP_ID = "objection-enforcer"
DEFAULT_PARTITIONS = 8
DEFAULT_WEB_PORT = 6066

TOPIC_FLAGS = {
    # attribute: (flag, environment variable, default topic name)
    "posts_topic": ("--posts-topic", "ENFORCER_POSTS_TOPIC", "posts"),
    "objections_topic": ("--objections-topic", "ENFORCER_OBJECTIONS_TOPIC", "objections"),
    "training_topic": ("--training-topic", "ENFORCER_TRAINING_TOPIC", "training-ingest"),
    "retractions_topic": (
        "--retractions-topic",
        "ENFORCER_RETRACTIONS_TOPIC",
        "training-retractions",
    ),
    "decisions_topic": ("--decisions-topic", "ENFORCER_DECISIONS_TOPIC", "enforcer-decisions"),
    "dlq_topic": ("--dlq-topic", "ENFORCER_DLQ_TOPIC", "enforcer-dlq"),
    "receipts_topic": (
        "--receipts-topic",
        "ENFORCER_RECEIPTS_TOPIC",
        "enforcer-consent-receipts",
    ),
}

_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")
# scheme, a host name, IPv4 or [IPv6] address, an optional port; nothing after it
ADVERTISED_URL = re.compile(
    r"https?://([A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])"
    r"(:[0-9]{1,5})?/?"
)


class SettingsError(ValueError):
    """Configuration that cannot work; the message is one line for the operator."""


class CliError(Exception):
    """A one-line reason to stop a command (other than a setting that cannot work)."""


# -- secured clusters: how every Kafka client and the schema registry client connect
# (streams/kafka/connection.py builds the clients' configurations from these) --
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")
DEFAULT_SASL_MECHANISM = "SCRAM-SHA-512"


class Secret:
    """A password or token: its value only through ``reveal()``, never in a repr, a
    str or a log line."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the client that sends it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple:  # pickled to the re-keying stage's process
        return (Secret, (self._value,))


@dataclass(frozen=True)
class KafkaSecurity:
    """How the Kafka clients authenticate and encrypt (``--security-protocol`` etc.)."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None  # None: DEFAULT_SASL_MECHANISM with SASL
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    sasl_password_file: Path | None = None  # where the password was read, if from a file
    ssl_ca_file: Path | None = None  # None: the system's CA certificates
    ssl_cert_file: Path | None = None  # a client certificate (mutual TLS)
    ssl_key_file: Path | None = None
    ssl_key_password: Secret | None = None
    ssl_key_password_file: Path | None = None

    @property
    def sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def mechanism(self) -> str:
        return self.sasl_mechanism or DEFAULT_SASL_MECHANISM

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context of the Python (aiokafka) clients, from the same files as
        librdkafka's: the broker's certificate and host name are verified."""
        context = ssl.create_default_context(
            cafile=str(self.ssl_ca_file) if self.ssl_ca_file else None
        )
        if self.ssl_cert_file and self.ssl_key_file:
            password = self.ssl_key_password
            context.load_cert_chain(
                str(self.ssl_cert_file),
                str(self.ssl_key_file),
                # never OpenSSL's prompt on the terminal for an encrypted key
                password=(lambda: password.reveal()) if password else (lambda: b""),
            )
        return context


@dataclass(frozen=True)
class RegistrySecurity:
    """How the schema registry client authenticates (basic or bearer) and which CA it
    trusts for https."""

    user: str | None = None
    password: Secret | None = None
    password_file: Path | None = None
    token_file: Path | None = None  # read again for every request (rotated tokens)
    ca_file: Path | None = None

    @property
    def configured(self) -> bool:
        return any((self.user, self.password, self.token_file, self.ca_file))


@dataclass(frozen=True)
class Settings:
    """Everything a worker, the topic tool or a replay needs to know."""

    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    registry_security: RegistrySecurity = field(default_factory=RegistrySecurity)
    app_id: str = DEFAULT_APP_ID
    data_dir: Path = field(default_factory=lambda: Path("./enforcer-data"))
    policy_path: Path | None = None
    web_host: str = "127.0.0.1"
    web_port: int = DEFAULT_WEB_PORT
    partitions: int = DEFAULT_PARTITIONS
    replication_factor: int | None = None  # None: min(3, number of brokers)
    schema_registry_url: str | None = None
    posts_topic: str = "posts"
    objections_topic: str = "objections"
    training_topic: str = "training-ingest"
    retractions_topic: str = "training-retractions"
    decisions_topic: str = "enforcer-decisions"
    dlq_topic: str = "enforcer-dlq"
    receipts_topic: str = "enforcer-consent-receipts"
    log_level: str = "info"
    # batching: more records per request means far fewer requests for the broker to
    # serve (measured trade-offs in docs/operations.md, "Tuning")
    linger_ms: int = 5
    fetch_min_bytes: int = 65536
    # how long a record may wait for a schema registry that does not answer before the
    # worker stops (exit 70); at most 240 s: the re-keying consumer waits without
    # polling, and librdkafka's max.poll.interval.ms is 300 s
    registry_timeout: float = 120.0
    # the largest record the worker writes (librdkafka's message.max.bytes; the broker's
    # default limit is slightly above): larger inputs go to the DLQ as a reference
    max_record_bytes: int = 1_000_000
    # an objection event dated more than this after the time it is read is applied at
    # the time it is read
    max_clock_skew_ms: int = 5 * 60 * 1000
    # records of the objections topic or an internal topic deleted by retention before
    # they were processed: stop (the default), or skip them, counted and logged
    accept_data_loss: bool = False
    # one transactional producer per gate partition, so that a worker that no longer
    # owns a partition cannot write its outputs or table changes (docs/operations.md,
    # "Fencing"); off: one idempotent producer for everything
    fencing: bool = True
    # with fencing, seconds between commits of the transactions: outputs are visible to
    # read_committed readers only then; 0.1 as Kafka Streams' exactly-once default
    # (docs/operations.md, "Fencing": measured by bench/commit_interval.py)
    txn_commit_interval: float = 0.1
    # standby replicas of each table partition, kept warm from the changelog by other
    # workers of the app, so that a failed worker's partitions move to a worker that
    # holds their state already (docs/operations.md, "Standby replicas and failover").
    # Kept by the worker's own changelog reader (runtime/standby.py), not Faust's
    # recovery loop, which lost records of standby copies in long chaos runs. Faust
    # places none on a worker alone, so 1 costs nothing there
    standby_replicas: int = 1
    # the gate's consumer group session timeout: how long a killed worker's partitions
    # wait before they move (static members never leave the group by themselves); a
    # worker paused for longer (GC, a frozen VM) loses them and is fenced
    session_timeout_s: int = 60
    # how long tombstones stay on training-ingest for downstream consumers to see, and
    # how long the DLQ (which holds post content) keeps records
    tombstone_retention_ms: int = 7 * 86_400_000
    dlq_retention_ms: int = 7 * 86_400_000
    # retention.ms of created audit topics (decisions, retractions, receipts): forever
    audit_retention_ms: int = -1
    # -- the consent lookup (GET /consent/{user_id}, streams/runtime/lookup.py) --
    # off unless a file holds the bearer token (never the token itself on a flag);
    # advertised_url: where the other workers reach this one's HTTP port
    consent_lookup_token_file: Path | None = None
    advertised_url: str | None = None

    # -- internal topics, named after the application id like Kafka Streams does --
    @property
    def user_events_topic(self) -> str:
        """Posts, objections and replay requests re-keyed by user id (co-partitioned)."""
        return f"{self.app_id}-user-events-repartition"

    @property
    def replay_results_topic(self) -> str:
        """The worker's answers to replay requests, read by ``enforcer replay``."""
        return f"{self.app_id}-replay-results"

    def changelog_topic(self, table: str) -> str:
        """Faust's changelog topic name for a table of this application."""
        return f"{self.app_id}-{table}-changelog"

    @property
    def instance_id(self) -> str:
        """Static group membership id: stable for one data dir on one host, so that a
        restarted worker takes its partitions back at once instead of waiting for the
        broker to time the old member out (and without a second rebalance)."""
        import hashlib
        import socket

        where = f"{socket.gethostname()}:{self.data_dir.resolve()}"
        return f"{self.app_id}-{hashlib.sha1(where.encode()).hexdigest()[:12]}"

    @property
    def endpoints_topic(self) -> str:
        """Each worker's advertised HTTP address, for consent lookups (compacted)."""
        return f"{self.app_id}-worker-endpoints"

    @property
    def lookup_url(self) -> str:
        """The advertised URL, or this worker's host and web port (its host name when it
        listens on every address)."""
        if self.advertised_url:
            return self.advertised_url.rstrip("/")
        import socket

        host = self.web_host
        host = socket.gethostname() if host in ("", "0.0.0.0", "::") else host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.web_port}"

    @property
    def output_topics(self) -> list[str]:
        """The topics the worker writes to."""
        return [
            self.training_topic,
            self.retractions_topic,
            self.decisions_topic,
            self.dlq_topic,
            self.receipts_topic,
        ]

    @property
    def input_topics(self) -> list[str]:
        """The topics the worker reads from upstream."""
        return [self.posts_topic, self.objections_topic]


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The contract's common flags; defaults are resolved later by ``from_args``."""
    g = parser.add_argument_group("common")
    g.add_argument(
        "--bootstrap-servers",
        help=f"Kafka bootstrap servers [KAFKA_BOOTSTRAP_SERVERS, default {DEFAULT_BOOTSTRAP}]",
    )
    g.add_argument("--data-dir", help="directory for RocksDB state [ENFORCER_DATA_DIR]")
    g.add_argument("--policy", help="policy TOML file [ENFORCER_POLICY, default: packaged]")
    g.add_argument("--app-id", help=f"application id [ENFORCER_APP_ID, default {DEFAULT_APP_ID}]")
    g.add_argument(
        "--web-port",
        type=int,
        help=f"HTTP port for /ready and /metrics [ENFORCER_WEB_PORT, default {DEFAULT_WEB_PORT}]",
    )
    g.add_argument("--web-host", help="HTTP bind address [ENFORCER_WEB_HOST, default 127.0.0.1]")
    g.add_argument(
        "--partitions",
        type=int,
        help="partitions of the internal topics and tables "
        f"[ENFORCER_PARTITIONS, default {DEFAULT_PARTITIONS}]",
    )
    g.add_argument(
        "--replication-factor",
        type=int,
        help="replication factor of created "
        "topics [ENFORCER_REPLICATION_FACTOR, default min(3, brokers)]",
    )
    g.add_argument(
        "--schema-registry-url",
        help="write the Confluent wire format through this registry [ENFORCER_SCHEMA_REGISTRY_URL]",
    )
    g.add_argument(
        "--log-level",
        choices=["debug", "info", "warn", "error"],
        help="log level [ENFORCER_LOG_LEVEL, default info]",
    )
    g.add_argument(
        "--linger-ms",
        type=int,
        help="how long output records wait to be sent in a batch [ENFORCER_LINGER_MS, default 5]",
    )
    g.add_argument(
        "--fetch-min-bytes",
        type=int,
        help="bytes a fetch waits for (at most 10 ms) [ENFORCER_FETCH_MIN_BYTES, default 65536]",
    )
    g.add_argument(
        "--registry-timeout",
        type=float,
        help="seconds a record waits for an unavailable schema registry before the worker "
        "stops (exit 70) [ENFORCER_REGISTRY_TIMEOUT, default 120]",
    )
    g.add_argument(
        "--max-record-bytes",
        type=int,
        help="largest record the worker writes; larger inputs go to the DLQ; at most the "
        "max.message.bytes of every topic it writes (checked at start) "
        "[ENFORCER_MAX_RECORD_BYTES, default 1000000]",
    )
    g.add_argument(
        "--max-clock-skew-ms",
        type=int,
        help="an objection event dated further ahead than this is applied when read "
        "[ENFORCER_MAX_CLOCK_SKEW_MS, default 300000]",
    )
    g.add_argument(
        "--accept-data-loss",
        action="store_true",
        default=None,
        help="skip (count and log) objection or internal records deleted by retention "
        "before they were processed, instead of stopping [ENFORCER_ACCEPT_DATA_LOSS=1]",
    )
    g.add_argument(
        "--fencing",
        choices=("on", "off"),
        help="transactional outputs that a partition's new owner fences "
        "[ENFORCER_FENCING, default on]",
    )
    g.add_argument(
        "--txn-commit-interval",
        type=float,
        help="seconds between commits of the transactions with fencing (outputs are visible "
        f"then) [ENFORCER_TXN_COMMIT_INTERVAL, default {Settings.txn_commit_interval:g}]",
    )
    g.add_argument(
        "--standby-replicas",
        type=int,
        help="standby copies of each table partition on other workers (0-3; Faust keeps "
        "at most one per other worker) [ENFORCER_STANDBY_REPLICAS, default 1]",
    )
    g.add_argument(
        "--session-timeout",
        type=int,
        dest="session_timeout_s",
        help="seconds before a silent worker's partitions move to another worker (6-300; "
        "shorter: faster failover, more rebalances on a pause) "
        "[ENFORCER_SESSION_TIMEOUT, default 60]",
    )
    g.add_argument(
        "--tombstone-retention-ms",
        type=int,
        help="delete.retention.ms of created training-ingest topics "
        "[ENFORCER_TOMBSTONE_RETENTION_MS, default 7 days]",
    )
    g.add_argument(
        "--dlq-retention-ms",
        type=int,
        help="retention.ms of a created DLQ topic (it holds post content; -1: forever) "
        "[ENFORCER_DLQ_RETENTION_MS, default 7 days]",
    )
    g.add_argument(
        "--audit-retention-ms",
        type=int,
        help="retention.ms of created audit topics (decisions, retractions, receipts) "
        "[ENFORCER_AUDIT_RETENTION_MS, default -1: forever]",
    )
    g.add_argument(
        "--consent-lookup-token-file",
        help="file with the bearer token of GET /consent/{user_id}; the lookup is off "
        "without it [ENFORCER_CONSENT_LOOKUP_TOKEN_FILE]",
    )
    g.add_argument(
        "--advertised-url",
        help="http(s)://host:port where the other workers reach this one's HTTP port, for "
        "consent lookups [ENFORCER_ADVERTISED_URL, default http://<web host>:<web port>]",
    )
    for attr, (flag, env, default) in TOPIC_FLAGS.items():
        g.add_argument(flag, dest=attr, help=f"[{env}, default {default}]")
    add_security_arguments(parser)


# flag, attribute, environment variable, help: the secured-cluster flags (files only for
# secrets: a password on a command line shows in the process list)
_SECURITY_FLAGS = (
    ("--security-protocol", "security_protocol", "ENFORCER_SECURITY_PROTOCOL",
     "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (default PLAINTEXT)"),
    ("--sasl-mechanism", "sasl_mechanism", "ENFORCER_SASL_MECHANISM",
     f"SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN (default {DEFAULT_SASL_MECHANISM})"),
    ("--sasl-username", "sasl_username", "ENFORCER_SASL_USERNAME", "SASL user name"),
    ("--sasl-password-file", "sasl_password_file", "ENFORCER_SASL_PASSWORD_FILE",
     "file holding the SASL password (or ENFORCER_SASL_PASSWORD)"),
    ("--ssl-ca-file", "ssl_ca_file", "ENFORCER_SSL_CA_FILE",
     "PEM CA certificates that sign the brokers' (default: the system's)"),
    ("--ssl-cert-file", "ssl_cert_file", "ENFORCER_SSL_CERT_FILE",
     "PEM client certificate, for mutual TLS"),
    ("--ssl-key-file", "ssl_key_file", "ENFORCER_SSL_KEY_FILE", "PEM key of --ssl-cert-file"),
    ("--ssl-key-password-file", "ssl_key_password_file", "ENFORCER_SSL_KEY_PASSWORD_FILE",
     "file holding the password of an encrypted --ssl-key-file (or ENFORCER_SSL_KEY_PASSWORD)"),
    ("--schema-registry-user", "schema_registry_user", "ENFORCER_SCHEMA_REGISTRY_USER",
     "basic authentication user of the schema registry"),
    ("--schema-registry-password-file", "schema_registry_password_file",
     "ENFORCER_SCHEMA_REGISTRY_PASSWORD_FILE",
     "file holding its password (or ENFORCER_SCHEMA_REGISTRY_PASSWORD)"),
    ("--schema-registry-token-file", "schema_registry_token_file",
     "ENFORCER_SCHEMA_REGISTRY_TOKEN_FILE",
     "file holding a bearer token for the schema registry, read for each request"),
    ("--schema-registry-ca-file", "schema_registry_ca_file", "ENFORCER_SCHEMA_REGISTRY_CA_FILE",
     "PEM CA certificates that sign an https schema registry's"),
)  # fmt: skip
# flags that would carry a secret itself: refused, naming the file flag and variable
_REFUSED_SECRET_FLAGS = {
    "--sasl-password": ("--sasl-password-file", "ENFORCER_SASL_PASSWORD"),
    "--ssl-key-password": ("--ssl-key-password-file", "ENFORCER_SSL_KEY_PASSWORD"),
    "--schema-registry-password": (
        "--schema-registry-password-file",
        "ENFORCER_SCHEMA_REGISTRY_PASSWORD",
    ),
    "--schema-registry-token": ("--schema-registry-token-file", "(a file only)"),
}


def add_security_arguments(parser: argparse.ArgumentParser) -> None:
    """The secured-cluster flags (docs/operations.md, "Secured clusters")."""
    g = parser.add_argument_group("secured clusters")
    for flag, attr, env, text in _SECURITY_FLAGS:
        g.add_argument(flag, dest=attr, help=f"{text} [{env}]")
    for flag in _REFUSED_SECRET_FLAGS:  # so that no abbreviation reaches a -file flag
        g.add_argument(flag, dest=f"refused_{flag[2:].replace('-', '_')}", help=argparse.SUPPRESS)


def read_secret_file(path: Path, flag: str) -> str:
    """A secret from a file: one line, its line ending dropped; never in a message."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"cannot read {flag} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{flag} {path} is not UTF-8 text") from None
    value = text.removesuffix("\n").removesuffix("\r")
    if not value:
        raise SettingsError(f"{flag} {path} is empty")
    if "\n" in value or "\r" in value:
        raise SettingsError(f"{flag} {path} must hold one line")
    return value


def _security_fields(args: argparse.Namespace) -> dict[str, Any]:
    """``security`` and ``registry_security`` of ``Settings`` (``_security_from_args``)."""
    security, registry_security = _security_from_args(args)
    return {"security": security, "registry_security": registry_security}


def _security_from_args(args: argparse.Namespace) -> tuple[KafkaSecurity, RegistrySecurity]:
    """The secured-cluster settings: flag over environment; each secret from its file
    (flag or variable) or else from its variable."""
    env = os.environ
    for flag, (file_flag, variable) in _REFUSED_SECRET_FLAGS.items():
        if getattr(args, f"refused_{flag[2:].replace('-', '_')}", None) is not None:
            raise SettingsError(
                f"{flag} is not accepted (a command line shows in the process list): use "
                f"{file_flag} or {variable}"
            )
    value: dict[str, str | None] = {}
    for _flag, attr, variable, _ in _SECURITY_FLAGS:
        given = getattr(args, attr, None)
        value[attr] = given if given not in (None, "") else (env.get(variable) or None)

    def path(attr: str) -> Path | None:
        return Path(value[attr]) if value[attr] else None

    def secret(attr: str, flag: str, variable: str) -> Secret | None:
        if value[attr]:
            return Secret(read_secret_file(Path(value[attr]), flag))
        raw = env.get(variable)
        return Secret(raw) if raw else None

    protocol = (value["security_protocol"] or "PLAINTEXT").upper()
    mechanism = value["sasl_mechanism"]
    kafka = KafkaSecurity(
        protocol=protocol,
        sasl_mechanism=mechanism.upper() if mechanism else None,
        sasl_username=value["sasl_username"],
        sasl_password=secret(
            "sasl_password_file", "--sasl-password-file", "ENFORCER_SASL_PASSWORD"
        ),
        sasl_password_file=path("sasl_password_file"),
        ssl_ca_file=path("ssl_ca_file"),
        ssl_cert_file=path("ssl_cert_file"),
        ssl_key_file=path("ssl_key_file"),
        ssl_key_password=secret(
            "ssl_key_password_file", "--ssl-key-password-file", "ENFORCER_SSL_KEY_PASSWORD"
        ),
        ssl_key_password_file=path("ssl_key_password_file"),
    )
    registry = RegistrySecurity(
        user=value["schema_registry_user"],
        password=secret(
            "schema_registry_password_file",
            "--schema-registry-password-file",
            "ENFORCER_SCHEMA_REGISTRY_PASSWORD",
        ),
        password_file=path("schema_registry_password_file"),
        token_file=path("schema_registry_token_file"),
        ca_file=path("schema_registry_ca_file"),
    )
    return kafka, registry


def from_args(args: argparse.Namespace) -> Settings:
    """Resolve flags over environment over defaults, and validate."""
    env = os.environ

    def pick(value: object, env_name: str, default: object) -> object:
        if value is not None:
            return value
        raw = env.get(env_name)
        return raw if raw not in (None, "") else default

    partitions = args.partitions if args.partitions is not None else _env_int("ENFORCER_PARTITIONS")
    web_port = args.web_port if args.web_port is not None else _env_int("ENFORCER_WEB_PORT")
    rf = (
        args.replication_factor
        if args.replication_factor is not None
        else _env_int("ENFORCER_REPLICATION_FACTOR")
    )
    linger = getattr(args, "linger_ms", None)
    linger = linger if linger is not None else _env_int("ENFORCER_LINGER_MS")
    min_bytes = getattr(args, "fetch_min_bytes", None)
    min_bytes = min_bytes if min_bytes is not None else _env_int("ENFORCER_FETCH_MIN_BYTES")

    def seconds(attr: str, env_name: str) -> float:
        """The flag ``attr``, else ``env_name`` as seconds, else the default."""
        value = getattr(args, attr, None)
        if value is not None:
            return float(value)
        raw = env.get(env_name, "")
        try:
            return float(raw) if raw else float(getattr(Settings, attr))
        except ValueError:
            raise SettingsError(f"{env_name} must be a number of seconds, got {raw!r}") from None

    registry_timeout = seconds("registry_timeout", "ENFORCER_REGISTRY_TIMEOUT")

    def number(attr: str, env_name: str) -> int:
        value = getattr(args, attr, None)
        value = value if value is not None else _env_int(env_name)
        return getattr(Settings, attr) if value is None else value

    accept = getattr(args, "accept_data_loss", None)
    if accept is None:
        raw = env.get("ENFORCER_ACCEPT_DATA_LOSS", "")
        if raw not in ("", "0", "1"):
            raise SettingsError(f"ENFORCER_ACCEPT_DATA_LOSS must be 0 or 1, got {raw!r}")
        accept = raw == "1"
    fencing = getattr(args, "fencing", None) or env.get("ENFORCER_FENCING", "")
    if fencing not in ("", "on", "off"):
        raise SettingsError(f"ENFORCER_FENCING must be on or off, got {fencing!r}")
    fencing = Settings.fencing if fencing == "" else fencing == "on"
    txn_interval = seconds("txn_commit_interval", "ENFORCER_TXN_COMMIT_INTERVAL")
    app_id = str(pick(args.app_id, "ENFORCER_APP_ID", DEFAULT_APP_ID))
    data_dir = pick(args.data_dir, "ENFORCER_DATA_DIR", None)
    policy = pick(args.policy, "ENFORCER_POLICY", None)
    lookup_token = pick(
        getattr(args, "consent_lookup_token_file", None), "ENFORCER_CONSENT_LOOKUP_TOKEN_FILE", None
    )
    advertised = pick(getattr(args, "advertised_url", None), "ENFORCER_ADVERTISED_URL", None)
    topics: dict[str, Any] = {
        attr: str(pick(getattr(args, attr), env_name, default))
        for attr, (_, env_name, default) in TOPIC_FLAGS.items()
    }
    settings = Settings(
        bootstrap_servers=str(
            pick(args.bootstrap_servers, "KAFKA_BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP)
        ),
        app_id=app_id,
        data_dir=Path(str(data_dir)) if data_dir else Path(f"./enforcer-data/{app_id}"),
        policy_path=Path(str(policy)) if policy else None,
        web_host=str(pick(args.web_host, "ENFORCER_WEB_HOST", "127.0.0.1")),
        web_port=DEFAULT_WEB_PORT if web_port is None else web_port,
        partitions=DEFAULT_PARTITIONS if partitions is None else partitions,
        replication_factor=rf,
        schema_registry_url=cast(
            "str | None", pick(args.schema_registry_url, "ENFORCER_SCHEMA_REGISTRY_URL", None)
        ),
        log_level=str(pick(args.log_level, "ENFORCER_LOG_LEVEL", "info")),
        linger_ms=Settings.linger_ms if linger is None else linger,
        fetch_min_bytes=Settings.fetch_min_bytes if min_bytes is None else min_bytes,
        registry_timeout=registry_timeout,
        max_record_bytes=number("max_record_bytes", "ENFORCER_MAX_RECORD_BYTES"),
        max_clock_skew_ms=number("max_clock_skew_ms", "ENFORCER_MAX_CLOCK_SKEW_MS"),
        accept_data_loss=accept,
        fencing=fencing,
        txn_commit_interval=txn_interval,
        standby_replicas=number("standby_replicas", "ENFORCER_STANDBY_REPLICAS"),
        session_timeout_s=number("session_timeout_s", "ENFORCER_SESSION_TIMEOUT"),
        tombstone_retention_ms=number("tombstone_retention_ms", "ENFORCER_TOMBSTONE_RETENTION_MS"),
        dlq_retention_ms=number("dlq_retention_ms", "ENFORCER_DLQ_RETENTION_MS"),
        audit_retention_ms=number("audit_retention_ms", "ENFORCER_AUDIT_RETENTION_MS"),
        consent_lookup_token_file=Path(str(lookup_token)) if lookup_token else None,
        advertised_url=str(advertised) if advertised else None,
        **topics,
        **_security_fields(args),
    )
    validate(settings)
    return settings


def validate(s: Settings) -> None:
    """Raise ``SettingsError`` for anything that cannot work."""
    if not s.bootstrap_servers.strip():
        raise SettingsError("--bootstrap-servers is empty")
    if not 1 <= s.partitions <= 1024:
        raise SettingsError(f"--partitions must be between 1 and 1024, got {s.partitions}")
    if not 0 <= s.web_port <= 65535:
        raise SettingsError(f"--web-port must be between 0 and 65535, got {s.web_port}")
    if not 0 <= s.linger_ms <= 1000:
        raise SettingsError(f"--linger-ms must be between 0 and 1000, got {s.linger_ms}")
    if not 1 <= s.fetch_min_bytes <= 16 * 1024 * 1024:
        raise SettingsError(
            f"--fetch-min-bytes must be between 1 and 16 MiB, got {s.fetch_min_bytes}"
        )
    if not 1 <= s.registry_timeout <= 240:
        raise SettingsError(
            f"--registry-timeout must be between 1 and 240 seconds, got {s.registry_timeout:g}"
        )
    if not 64 * 1024 <= s.max_record_bytes <= 1_000_000_000:
        raise SettingsError(
            f"--max-record-bytes must be between 65536 and 1000000000, got {s.max_record_bytes}"
        )
    if not 0 <= s.max_clock_skew_ms <= 366 * 86_400_000:
        raise SettingsError(
            f"--max-clock-skew-ms must be between 0 and a year, got {s.max_clock_skew_ms}"
        )
    if not 0.01 <= s.txn_commit_interval <= 30:  # nan too: the transactions time out at 60 s
        raise SettingsError(
            "--txn-commit-interval must be between 0.01 and 30 seconds, "
            f"got {s.txn_commit_interval:g}"
        )
    if not 0 <= s.standby_replicas <= 3:
        raise SettingsError(f"--standby-replicas must be between 0 and 3, got {s.standby_replicas}")
    if not 6 <= s.session_timeout_s <= 300:  # the broker's default group session bounds
        raise SettingsError(
            f"--session-timeout must be between 6 and 300 seconds, got {s.session_timeout_s}"
        )
    if s.tombstone_retention_ms < 0:
        raise SettingsError("--tombstone-retention-ms must not be negative")
    if s.audit_retention_ms < -1 or 0 <= s.audit_retention_ms < 3_600_000:
        raise SettingsError("--audit-retention-ms must be -1 (forever) or at least an hour")
    if s.dlq_retention_ms < -1:
        raise SettingsError("--dlq-retention-ms must be -1 (forever) or more")
    if s.replication_factor is not None and s.replication_factor < 1:
        raise SettingsError("--replication-factor must be at least 1")
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", s.app_id):
        raise SettingsError(f"--app-id may use letters, digits, '.', '_' and '-': {s.app_id!r}")
    names = [getattr(s, attr) for attr in TOPIC_FLAGS]
    for attr, name in zip(TOPIC_FLAGS, names, strict=True):
        if not _TOPIC_NAME.fullmatch(name):
            raise SettingsError(f"{TOPIC_FLAGS[attr][0]} is not a valid topic name: {name!r}")
    if len(set(names)) != len(names):
        raise SettingsError("every topic flag must name a different topic")
    if s.advertised_url is not None and not ADVERTISED_URL.fullmatch(s.advertised_url):
        raise SettingsError(
            f"--advertised-url must be http(s)://host:port, got {s.advertised_url[:200]!r}"
        )
    if s.log_level not in ("debug", "info", "warn", "error"):
        raise SettingsError(f"ENFORCER_LOG_LEVEL must be debug, info, warn or error: {s.log_level}")
    validate_security(s)


def _readable(path: Path | None, flag: str) -> None:
    if path is None:
        return
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise SettingsError(f"cannot read {flag} {path}: {exc.strerror or exc}") from None


def validate_security(s: Settings) -> None:
    """Raise ``SettingsError`` for secured-cluster settings that cannot work: a missing
    or unreadable file, a combination that makes no sense, TLS files that do not load."""
    k = s.security
    if k.protocol not in SECURITY_PROTOCOLS:
        raise SettingsError(
            f"--security-protocol must be one of {', '.join(SECURITY_PROTOCOLS)}, "
            f"got {k.protocol[:40]!r}"
        )
    if k.sasl:
        if k.mechanism not in SASL_MECHANISMS:
            raise SettingsError(
                f"--sasl-mechanism must be one of {', '.join(SASL_MECHANISMS)}, "
                f"got {k.mechanism[:40]!r}"
            )
        if not k.sasl_username:
            raise SettingsError(f"--security-protocol {k.protocol} needs --sasl-username")
        if k.sasl_password is None:
            raise SettingsError(
                f"--security-protocol {k.protocol} needs a password: --sasl-password-file "
                "or ENFORCER_SASL_PASSWORD"
            )
    else:
        for given, what in (
            (k.sasl_mechanism, "--sasl-mechanism"),
            (k.sasl_username, "--sasl-username"),
            (k.sasl_password, "a SASL password"),
        ):
            if given:
                raise SettingsError(
                    f"{what} needs --security-protocol SASL_SSL or SASL_PLAINTEXT "
                    f"(it is {k.protocol})"
                )
    tls_files = (
        (k.ssl_ca_file, "--ssl-ca-file"),
        (k.ssl_cert_file, "--ssl-cert-file"),
        (k.ssl_key_file, "--ssl-key-file"),
        (k.ssl_key_password, "a key password"),
    )
    for tls_file, what in tls_files:
        if tls_file and not k.tls:
            raise SettingsError(
                f"{what} needs --security-protocol SSL or SASL_SSL (it is {k.protocol})"
            )
    if bool(k.ssl_cert_file) != bool(k.ssl_key_file):
        raise SettingsError("--ssl-cert-file and --ssl-key-file go together (mutual TLS)")
    if k.ssl_key_password and not k.ssl_key_file:
        raise SettingsError("a key password needs --ssl-key-file")
    for path, flag in tls_files[:3]:
        _readable(path, flag)
    if k.tls:
        try:
            k.ssl_context()
        except ssl.SSLError as exc:
            raise SettingsError(
                f"the TLS files do not load: {exc.reason or exc} ("
                + (
                    "is --ssl-key-file the key of --ssl-cert-file, and its password right?)"
                    if k.ssl_cert_file
                    else "does --ssl-ca-file hold PEM certificates?)"
                )
            ) from None
    r = s.registry_security
    if r.configured and not s.schema_registry_url:
        raise SettingsError(
            "the schema registry's authentication and CA need --schema-registry-url"
        )
    if bool(r.user) != bool(r.password):
        raise SettingsError(
            "--schema-registry-user needs a password (--schema-registry-password-file or "
            "ENFORCER_SCHEMA_REGISTRY_PASSWORD), and a password needs the user"
        )
    if r.user and ":" in r.user:
        raise SettingsError("--schema-registry-user must not contain ':'")
    if r.user and r.token_file:
        raise SettingsError(
            "the schema registry takes basic (user) or bearer (token) authentication, not both"
        )
    if r.token_file:
        read_secret_file(r.token_file, "--schema-registry-token-file")
    if r.ca_file:
        if not str(s.schema_registry_url).startswith("https://"):
            raise SettingsError("--schema-registry-ca-file needs an https:// --schema-registry-url")
        _readable(r.ca_file, "--schema-registry-ca-file")
        try:
            ssl.create_default_context(cafile=str(r.ca_file))
        except ssl.SSLError as exc:
            raise SettingsError(
                f"--schema-registry-ca-file {r.ca_file} holds no usable PEM certificate: "
                f"{exc.reason or exc}"
            ) from None
