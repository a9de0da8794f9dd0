"""The consent lookup: ``GET /consent/{user_id}`` on the worker's HTTP port.

Off unless a bearer token file is configured (``--consent-lookup-token-file``); the
route does not exist otherwise (404). The answer is the user's consent state per
platform, from the consent table of the worker that owns the user's partition
(``records.partition_for_user``), with the event that set it and when it was applied,
and no post content (docs/contract.md, "Consent lookup").

Routing. The owner of a partition is the group member Faust's assignor made active for
it: every member receives, with its assignment, each member's ``canonical_url`` and its
active partitions (``assignor.external_topics_metadata()``). The canonical URL is only a
member's name here (``http://<instance id>.invalid``: with static membership it must
never change, see ``app.faust_settings``), so each worker publishes its real address
(``Settings.lookup_url``) on a small compacted topic (``Settings.endpoints_topic``),
keyed by its canonical URL, and reads every other worker's from it
(``EndpointDirectory``). A restarted worker publishes its new address at once, without a
rebalance, which a URL carried in the assignment would need. The asked worker answers
itself when it owns the partition (active, not a standby copy, recovered), forwards the
request once with the same bearer token otherwise, and answers 503 with Retry-After when
nobody owns the partition, the owner is unknown or does not answer, or the state is not
recovered: never a guess.

The pure parts (``parse_user_id``, ``read_token``, ``authorized``, ``consent_view``,
``route``, ``parse_endpoint``) have no Kafka and no HTTP in them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from faust.types import TP

from streams.core.consent import ALL, ConsentState, decode_state
from streams.core.enforcement import RECEIPT_PLATFORMS
from streams.core.records import check_user_id, partition_for_user
from streams.kafka.connection import librdkafka_config
from streams.serde.codec import DecodeError
from streams.settings import ADVERTISED_URL, Settings, SettingsError
from streams.state.ledger import StateNotReady

log = logging.getLogger("streams.lookup")

PREFIX = "/consent/"
ROUTE = PREFIX + "{user_id}"
RETRY_AFTER = 2  # seconds, on every 503
FORWARD_TIMEOUT = 5.0  # seconds a forwarded lookup may take
MAX_BODY = 256 * 1024  # bytes of an owner's answer, at most
# on a forwarded request: the receiver answers it itself (or 503), never forwards again
FORWARDED = "X-Enforcer-Forwarded"
# on every answer from consent state (and a 503 of the owner): the instance that gave it
ANSWERED_BY = "X-Enforcer-Answered-By"
PASSED_ON = (200, 400, 401, 503)  # an owner's statuses a forwarding worker passes on
TOKEN = re.compile(rb"[A-Za-z0-9._~+/-]{16,4096}=*")  # RFC 6750 b64token, 16 or more
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


class BadUserId(ValueError):
    """The user id of a lookup cannot be a user id (400)."""


# -- pure parts ------------------------------------------------------------------------
def parse_user_id(raw_path: str) -> str:
    """The user id of a lookup from the request's raw (still percent-encoded) path, as
    the contract allows one (``records.check_user_id``: not blank, at most
    ``MAX_ID_BYTES`` of UTF-8); ``BadUserId`` for anything else: malformed escapes,
    bytes that are not UTF-8, an unescaped ``/``."""
    path = raw_path.split("?", 1)[0]
    if not path.startswith(PREFIX):
        raise BadUserId("not a consent lookup path")
    segment = path[len(PREFIX) :]
    if "/" in segment or _BAD_PERCENT.search(segment):
        raise BadUserId("user_id is not a well-formed path segment")
    try:
        user_id = unquote(segment, errors="strict")
        user_id.encode("utf-8")
    except UnicodeError:
        raise BadUserId("user_id is not UTF-8") from None
    try:
        check_user_id(user_id, "the lookup")
    except DecodeError as exc:
        raise BadUserId(str(exc)) from None
    return user_id


def read_token(path: Path) -> bytes:
    """The bearer token from its file (surrounding whitespace dropped): 16 to 4096
    characters of RFC 6750's token alphabet. ``SettingsError`` names the file and the
    reason, never the content."""
    try:
        token = path.read_bytes().strip()
    except OSError as exc:
        raise SettingsError(
            f"cannot read the consent lookup token file {path}: {exc.strerror or exc}"
        ) from None
    if not TOKEN.fullmatch(token):
        raise SettingsError(
            f"the consent lookup token file {path} must hold one token of 16 to 4096 "
            "characters (letters, digits, -._~+/ and trailing =)"
        )
    return token


def authorized(header: str | None, token: bytes) -> bool:
    """Whether an ``Authorization`` header carries the bearer token. The comparison
    takes the same time whatever was presented (digests of equal length)."""
    scheme, _, presented = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    given = hashlib.sha256(presented.strip().encode("utf-8", "replace")).digest()
    return hmac.compare_digest(given, hashlib.sha256(token).digest())


def consent_view(user_id: str, partition: int, state: ConsentState) -> dict[str, Any]:
    """The lookup's answer from a user's consent state (``consent.decode_state``): per
    platform whether the user objects and the event in force for it (``set_by``; null
    when no event concerns the platform). No post content: the state holds none."""
    platforms = list(RECEIPT_PLATFORMS)
    platforms += sorted(k for k in state.marks if k != ALL and k not in platforms)
    view: dict[str, Any] = {}
    for platform in platforms:
        slot = state.deciding_slot(platform)
        mark = None if slot is None else state.marks[slot]
        view[platform] = {
            "objected": state.objected(platform),
            "set_by": None
            if mark is None
            else {
                "event_id": mark.event_id,
                "action": "OBJECT" if mark.objected else "WITHDRAW",
                "platform": None if slot == ALL else slot,  # null: every platform
                "occurred_at": mark.occurred_at,  # as applied (clamped if dated ahead)
                "applied_at": mark.applied_at,
            },
        }
    return {
        "user_id": user_id,
        "partition": partition,
        "objected_platforms": [p for p in platforms if view[p]["objected"]],
        "platforms": view,
    }


def owner_of(
    distribution: Mapping[str, Mapping[str, Sequence[int]]], topic: str, partition: int
) -> str | None:
    """The member (canonical URL) whose active partitions of ``topic`` include
    ``partition`` in an assignment's distribution; None when no member has it."""
    owners = [m for m, topics in distribution.items() if partition in topics.get(topic, ())]
    return owners[0] if len(owners) == 1 else None


@dataclass(frozen=True)
class Route:
    """Where a lookup is answered: ``local``, ``forward`` to ``owner``, or
    ``unavailable`` (503) for ``reason``."""

    how: str
    owner: str | None = None
    reason: str = ""


def route(
    distribution: Mapping[str, Mapping[str, Sequence[int]]],
    topic: str,
    partition: int,
    me: str,
    rebalancing: bool,
    forwarded: bool,
) -> Route:
    """Who answers a lookup of ``partition``, by the last assignment's distribution."""
    if rebalancing:
        return Route("unavailable", reason="the group is rebalancing")
    owner = owner_of(distribution, topic, partition)
    if owner is None:
        return Route("unavailable", reason="no worker owns the user's partition now")
    if owner == me:
        return Route("local", owner)
    if forwarded:  # the asking worker's view of the assignment differs from this one's
        return Route("unavailable", owner, "the user's partition is not owned here")
    return Route("forward", owner)


def endpoint_value(url: str) -> bytes:
    """The value of a worker's record on the endpoints topic."""
    return json.dumps({"url": url}, separators=(",", ":")).encode()


def parse_endpoint(value: bytes | None) -> str | None:
    """The URL of an endpoints record, or None (a tombstone, or anything that is not
    ``{"url": "http(s)://host:port"}``: a forwarded token goes only to such an URL)."""
    try:
        url = json.loads(value)["url"] if value and len(value) <= 4096 else None
    except (ValueError, TypeError, KeyError):
        return None
    if isinstance(url, str) and ADVERTISED_URL.fullmatch(url):
        return url.rstrip("/")
    return None


# -- the shell -------------------------------------------------------------------------
@dataclass
class Reply:
    """An HTTP answer: status, JSON body bytes, extra headers."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _json(status: int, value: Any, **headers: str) -> Reply:
    return Reply(status, json.dumps(value, separators=(",", ":")).encode(), dict(headers))


def unavailable(reason: str, **headers: str) -> Reply:
    """503 with Retry-After: ask again shortly."""
    return _json(503, {"error": reason}, **{"Retry-After": str(RETRY_AFTER), **headers})


def endpoint_consumer_config(settings: Settings) -> dict[str, Any]:
    """The endpoints reader: assigned every partition, never a group member, no commits
    (``group.id`` is only required by the client)."""
    role = {
        "group.id": f"{settings.app_id}-endpoints-reader",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "log_level": 3,
    }
    return librdkafka_config(settings, role)


class EndpointDirectory:
    """Every worker's advertised URL by canonical URL, read from the endpoints topic by a
    thread, which also publishes this worker's own (retried until acknowledged)."""

    def __init__(self, settings: Settings, me: str) -> None:
        self.settings = settings
        self.me = me
        self.endpoints: dict[str, str] = {}
        self.published = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="endpoints", daemon=True)

    def get(self, member: str) -> str | None:
        """The advertised URL of a member, if known."""
        return self.endpoints.get(member)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        from confluent_kafka import Consumer, Producer

        from streams.kafka.outputs import producer_config

        topic = self.settings.endpoints_topic
        producer = Producer(producer_config(self.settings))
        consumer = Consumer(endpoint_consumer_config(self.settings))
        assigned, next_publish = False, 0.0
        try:
            while not self._stopping.is_set():
                if not self.published.is_set() and time.monotonic() >= next_publish:
                    self._publish(producer)
                    next_publish = time.monotonic() + 5.0
                if not assigned:
                    assigned = self._assign(consumer, topic)
                    if not assigned:
                        self._stopping.wait(1.0)
                        continue
                message = consumer.poll(0.5)
                if message is not None and not message.error():
                    self._read(message.key(), message.value())
        except Exception as exc:  # lookups answer 503 for other owners from now on
            log.error("consent lookup: the endpoints reader stopped: %s", exc)
        finally:
            consumer.close()

    def _publish(self, producer: Any) -> None:
        errors: list[Any] = []
        url = self.settings.lookup_url
        producer.produce(
            self.settings.endpoints_topic,
            endpoint_value(url),
            self.me.encode(),
            on_delivery=lambda err, msg: errors.append(err),
        )
        producer.flush(10)
        if errors and errors[0] is None:
            self.published.set()
            log.info("consent lookup: this worker's address %s is published", url)
        else:
            log.warning("consent lookup: publishing this worker's address failed: %s", errors)

    def _assign(self, consumer: Any, topic: str) -> bool:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        try:
            found = consumer.list_topics(topic, timeout=5).topics.get(topic)
        except Exception as exc:
            log.warning("consent lookup: cannot read %s yet: %s", topic, exc)
            return False
        if found is None or found.error is not None or not found.partitions:
            return False
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in found.partitions])
        return True

    def _read(self, key: bytes | None, value: bytes | None) -> None:
        try:
            member = key.decode("utf-8") if key and len(key) <= 4096 else None
        except UnicodeDecodeError:
            member = None
        if member is None:
            return
        url = parse_endpoint(value)
        if url is None:
            self.endpoints.pop(member, None)
        else:
            self.endpoints[member] = url


class ConsentLookup:
    """Answers lookups: authorises, validates, routes, and answers from the consent
    table or forwards to the owner."""

    def __init__(
        self, app: Any, settings: Settings, processor: Any, token: bytes, directory: Any
    ) -> None:
        self.app = app
        self.settings = settings
        self.processor = processor
        self.token = token
        self.directory = directory
        self.me = str(app.conf.canonical_url)

    async def answer(self, raw_path: str, headers: Mapping[str, str]) -> Reply:
        """The answer to ``GET raw_path`` with the request's ``headers``."""
        authorization = headers.get("Authorization")
        if not authorized(authorization, self.token):
            return _json(
                401,
                {"error": "a bearer token is required"},
                **{"WWW-Authenticate": 'Bearer realm="consent"'},
            )
        try:
            user_id = parse_user_id(raw_path)
        except BadUserId as exc:
            return _json(400, {"error": str(exc)})
        partition = partition_for_user(user_id.encode("utf-8"), self.settings.partitions)
        try:
            distribution = self.app.assignor.external_topics_metadata()
            rebalancing = bool(self.app.rebalancing) or not self.app.started
        except AttributeError:  # not started yet
            distribution, rebalancing = {}, True
        where = route(
            distribution,
            self.settings.user_events_topic,
            partition,
            self.me,
            rebalancing,
            forwarded=FORWARDED in headers,
        )
        if where.how == "local":
            return self.local(user_id, partition)
        if where.how == "unavailable":
            return unavailable(where.reason)
        endpoint = self.directory.get(where.owner)
        if endpoint is None:
            return unavailable("the address of the user's partition's owner is not known yet")
        return await self.forward(endpoint, user_id, partition, authorization or "")

    def local(self, user_id: str, partition: int) -> Reply:
        """The answer from this worker's consent table, if it owns the partition (an
        active assignment, not a standby copy) and its state is recovered."""
        here = {ANSWERED_BY: self.settings.instance_id}
        assignor = self.app.assignor
        tps = (
            TP(self.settings.user_events_topic, partition),
            TP(self.settings.changelog_topic("consent"), partition),
        )
        if not all(assignor.is_active(tp) for tp in tps):
            return unavailable("the user's partition is not owned here", **here)
        if not self.processor.ready():
            return unavailable("the consent state is not recovered yet", **here)
        try:
            stored = self.processor.consent.get(partition, user_id.encode("utf-8"))
        except StateNotReady:
            return unavailable("the consent state is not recovered yet", **here)
        view = consent_view(user_id, partition, decode_state(stored))
        return _json(200, view, **here, **{"Cache-Control": "no-store"})

    async def forward(
        self, endpoint: str, user_id: str, partition: int, authorization: str
    ) -> Reply:
        """The owner's answer, passed on unchanged (503 when it does not answer)."""
        import aiohttp
        from yarl import URL

        url = URL(f"{endpoint}{PREFIX}{quote(user_id, safe='')}", encoded=True)
        timeout = aiohttp.ClientTimeout(total=FORWARD_TIMEOUT)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(
                    url,
                    headers={"Authorization": authorization, FORWARDED: "1"},
                    allow_redirects=False,
                ) as response,
            ):
                status = response.status
                body = await response.content.read(MAX_BODY + 1)
                passed = {
                    k: response.headers[k]
                    for k in ("Retry-After", ANSWERED_BY, "Cache-Control", "WWW-Authenticate")
                    if k in response.headers
                }
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning(
                "consent lookup: the owner of partition %d (%s) did not answer: %s",
                partition,
                endpoint,
                type(exc).__name__,
            )
            return unavailable("the owner of the user's partition did not answer")
        if status not in PASSED_ON or len(body) > MAX_BODY:
            log.warning(
                "consent lookup: the owner of partition %d (%s) answered %d",
                partition,
                endpoint,
                status,
            )
            return _json(502, {"error": f"the owner of the user's partition answered {status}"})
        return Reply(status, body, passed)


def install_consent_lookup(app: Any, settings: Settings, processor: Any) -> None:
    """With a token file configured: the ``/consent/{user_id}`` page and the endpoints
    directory. Without one, nothing (the route does not exist)."""
    if settings.consent_lookup_token_file is None:
        return
    token = read_token(settings.consent_lookup_token_file)
    directory = EndpointDirectory(settings, str(app.conf.canonical_url))
    lookup = ConsentLookup(app, settings, processor, token, directory)

    @app.task
    async def publish_endpoint() -> None:
        directory.start()

    @app.on_before_shutdown.connect
    def stop_endpoints(app: Any, **kwargs: Any) -> None:
        directory.stop()

    @app.page(ROUTE)
    async def consent(web: Any, request: Any, user_id: str = "") -> Any:
        reply = await lookup.answer(request.raw_path, request.headers)
        return web.bytes(
            reply.body, content_type="application/json", status=reply.status, headers=reply.headers
        )

    log.info(
        "consent lookup on at %s, reached by the other workers at %s", ROUTE, settings.lookup_url
    )
