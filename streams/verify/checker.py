"""``enforcer verify``: an independent check of what the enforcer wrote, from the topics.

It reads the inputs (``posts``, ``objections``) and every output (``training-ingest``,
``enforcer-decisions``, ``enforcer-consent-receipts``, ``training-retractions``,
``enforcer-dlq``) and re-derives what must hold with its own small code: its own Avro
decoding (fastavro and the schema files), its own consent rule (``_Consent``, the
contract's words) and its own reading of the policy files (``_Rules``). It imports
nothing of the worker's decision code (``consent``, ``enforcement``, ``policy``,
``agents``), so a bug there is not repeated here.

What must hold (each failure is a ``Violation`` naming the record):

* ``unaccounted``: every offset of both inputs is exactly one Decision (a post), one
  ConsentReceipt (an objection event) or one DLQ record; a repeat (an input processed
  again after a crash) must name the same post or event.
* ``published_while_objected``: no post of a user is on ``training-ingest`` with a
  ``decided_at`` after the receipt of an objection then in force (by the receipts, in
  the order they were applied) on its platform; ``published_without_decision``: every
  post on ``training-ingest`` has a PUBLISHED decision (a copy whose own Decision a
  crash lost, its input decided again, is counted as ``published_copy_decision_lost``).
* ``still_live``: every post whose user now objects on its platform is retracted (its
  last record on ``training-ingest`` is a tombstone).
* ``not_retracted``: for every receipt that put an objection in force on a platform,
  every post of the user on it that was live on ``training-ingest`` at that moment has a
  tombstone after it, before a later receipt (a withdrawal) allowed the platform again.
  For each (objection event, post) retracted, the objection-to-retraction latency (the
  objection record's timestamp to its first RETRACTED decision's broker timestamp) is
  measured once.
* ``receipt_count``: a receipt's ``posts_retracted`` is the number of posts with a
  RETRACTED decision naming its event (a note instead when at-least-once repeats of the
  event make the count ambiguous).
* ``ineligible_published``: every PUBLISHED decision's post (read at the input offset the
  decision names) passes the checks of the policy version the decision names.
* ``receipt_state``: the platforms a receipt says are objected after it are those its
  user's receipts imply.

A DLQ record that is a replay request's (``enforcer replay``) names the post's input
offset too: one of an offset that has a decision is not a second record of that input
(``replay_request_dlq``).

Inputs younger than ``grace`` seconds are ``pending``, not violations (the worker may not
have reached them yet). ``Checker`` is incremental: ``--follow`` keeps reading.
"""

from __future__ import annotations

import json
import signal
import struct
import time
import tomllib
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.kafka.connection import VERIFY_GROUP, command_config, raise_if_denied, registry_config
from streams.kafka.topics import preflight

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"
DEFAULT_POLICY = Path(__file__).resolve().parents[1] / "core" / "default_policy.toml"
PLATFORMS = ("FACEBOOK", "INSTAGRAM")
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
CHECKS = (
    "unaccounted",
    "published_while_objected",
    "published_without_decision",
    "still_live",
    "not_retracted",
    "ineligible_published",
    "receipt_state",
    "receipt_count",
    "bad_output",
)
# the headers of the DLQ record of a replay request the worker could not decide: it has
# none of an input's own, only the reason and the post's input coordinates
# (gate/dlq.py); the second form replaces a record too large to copy
_REPLAY_DLQ_HEADERS = ("error", "source.topic", "source.partition", "source.offset")
_REPLAY_DLQ_REFERENCE = (
    "error",
    "source.topic",
    "source.partition",
    "source.offset",
    "dlq.reference.bytes",
)


# -- decoding, with fastavro and the schema files only ----------------------------------
class Decoder:
    """Reads single-object encoded records (and the Confluent wire format through a
    registry client, if given) into the current schema of their name."""

    def __init__(self, registry: Any = None, directory: Path = SCHEMA_DIR) -> None:
        import fastavro
        from fastavro.schema import fingerprint, to_parsing_canonical_form

        def strip(node: Any) -> Any:  # timestamps stay epoch millis
            if isinstance(node, dict):
                return {k: strip(v) for k, v in node.items() if k != "logicalType"}
            if isinstance(node, list):
                return [strip(v) for v in node]
            return node

        self._strip, self._fastavro = strip, fastavro
        self.current: dict[str, Any] = {}
        self.writers: dict[bytes, tuple[str, Any]] = {}
        paths = sorted(directory.glob("*.avsc")) + sorted(directory.glob("history/*.avsc"))
        for path in paths:
            parsed: Any = fastavro.parse_schema(strip(json.loads(path.read_text())))
            name = parsed["name"].rsplit(".", 1)[-1]
            canonical = to_parsing_canonical_form(parsed)
            fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
            self.writers[fp] = (name, parsed)
            if path.parent == directory:
                self.current[name] = parsed
        self.registry = registry
        self._by_id: dict[int, tuple[str, Any]] = {}

    def decode(self, data: bytes | None, expect: str) -> dict | None:
        """The record, or None when it is not a valid ``expect`` record."""
        import io

        if not data:
            return None
        try:
            if data[:2] == b"\xc3\x01":
                writer, start = self.writers.get(bytes(data[2:10])), 10
            elif data[:1] == b"\x00" and self.registry is not None:
                writer, start = self._registered(struct.unpack_from(">I", data, 1)[0]), 5
            else:
                return None
            if writer is None or writer[0] != expect:
                return None
            buf = io.BytesIO(data)
            buf.seek(start)
            record: Any = self._fastavro.schemaless_reader(buf, writer[1], self.current[expect])
            return record if buf.tell() == len(data) else None
        except Exception:
            return None

    def _registered(self, schema_id: int) -> tuple[str, Any] | None:
        if schema_id not in self._by_id:
            text = self.registry.get_schema(schema_id).schema_str
            parsed: Any = self._fastavro.parse_schema(self._strip(json.loads(text)))
            self._by_id[schema_id] = (parsed["name"].rsplit(".", 1)[-1], parsed)
        return self._by_id[schema_id]


# -- consent, as the contract states it, in this module's own words ---------------------
class _Consent:
    """One user's consent: per slot (a platform, or None for every platform) the event
    with the greatest (occurred_at, OBJECT over WITHDRAW, event_id) wins; a platform is
    objected when the greater of its own winner and the every-platform winner is an
    OBJECT. An event id seen before changes nothing."""

    def __init__(self) -> None:
        self.best: dict[str | None, tuple[int, bool, str]] = {}
        self.ids: set[str] = set()

    def add(self, event_id: str, action: str, platform: str | None, occurred_at: int) -> None:
        if event_id in self.ids:
            return
        self.ids.add(event_id)
        mark = (occurred_at, action == "OBJECT", event_id)
        if platform not in self.best or mark > self.best[platform]:
            self.best[platform] = mark

    def objects(self, platform: str) -> bool:
        every, own = self.best.get(None), self.best.get(platform)
        if own is None:
            return every is not None and every[1]
        if every is None or own > every:
            return own[1]
        return every[1]


# -- the policy files, read here ---------------------------------------------------------
@dataclass(frozen=True)
class _Rules:
    version: str
    countries: frozenset
    visibilities: frozenset
    platforms: frozenset
    adults_only: bool

    @classmethod
    def load(cls, path: Path) -> _Rules:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
        return cls(
            str(raw["version"]),
            frozenset(raw["countries"]),
            frozenset(raw["visibilities"]),
            frozenset(raw["platforms"]),
            bool(raw.get("adults_only", True)),
        )

    def failed(self, post: dict) -> str | None:
        """The first check the post fails, or None (consent is checked elsewhere)."""
        if post["visibility"] not in self.visibilities:
            return "NOT_PUBLIC"
        if self.adults_only and not post["author_is_adult"]:
            return "MINOR"
        if post["author_country"] not in self.countries:
            return "COUNTRY_EXCLUDED"
        if post["platform"] not in self.platforms:
            return "PLATFORM_EXCLUDED"
        return None


# -- the check --------------------------------------------------------------------------
@dataclass
class Violation:
    check: str
    text: str

    def __str__(self) -> str:
        return f"{self.check}: {self.text}"


@dataclass
class Topics:
    posts: str
    objections: str
    training: str
    decisions: str
    receipts: str
    retractions: str
    dlq: str

    @classmethod
    def of(cls, settings: Any) -> Topics:
        s = settings
        return cls(
            s.posts_topic,
            s.objections_topic,
            s.training_topic,
            s.decisions_topic,
            s.receipts_topic,
            s.retractions_topic,
            s.dlq_topic,
        )


def _ms(ms: int | None) -> str:
    if ms is None:
        return "?"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


@dataclass
class Result:
    """What one pass found."""

    counts: Counter = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)
    # (event id, post id, objection record time, retraction time, seconds)
    latencies: list[tuple[str, str, int, int, float]] = field(default_factory=list)
    # (time ms, series) of every decision outcome and receipt outcome, for the report
    timeline: list[tuple[int, str]] = field(default_factory=list)
    # what looks wrong but the records cannot tell (at-least-once repeats): not violations
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


class Checker:
    """Feed it records (``add``), then ``evaluate``; feeding more later is fine."""

    def __init__(
        self,
        topics: Topics,
        rules: Iterable[_Rules],
        decoder: Decoder,
        start_ms: int = 0,
        end_ms: int | None = None,
        grace_ms: int = 60_000,
    ) -> None:
        self.t = topics
        self.rules = {r.version: r for r in rules}
        self.dec = decoder
        self.start_ms, self.end_ms, self.grace_ms = start_ms, end_ms, grace_ms
        # inputs: (topic, partition, offset) -> (timestamp, record or None)
        self.inputs: dict[tuple[str, int, int], tuple[int, dict | None]] = {}
        # what accounts for an input: source -> [(kind, identity)]
        self.accounted: dict[tuple[str, int, int], list[tuple[str, str]]] = defaultdict(list)
        # DLQ records laid out as a replay request's (``_replay_request``), by input offset
        self.replay_like_dlq: Counter = Counter()
        self.published: list[tuple[dict, int]] = []  # PUBLISHED decisions, broker time
        self.retracted: list[tuple[dict, int]] = []  # RETRACTED decisions, broker time
        self.receipts: dict[str, list[dict]] = defaultdict(list)  # user -> receipts
        self.training: dict[str, list[tuple[int, dict | None]]] = defaultdict(list)
        self.timeline: list[tuple[int, str]] = []
        self.bad_outputs: list[Violation] = []

    # -- feeding ----------------------------------------------------------------------
    def add(self, topic: str, partition: int, offset: int, ts: int, key, value, headers) -> None:
        t = self.t
        if topic in (t.posts, t.objections):
            kind = "Post" if topic == t.posts else "ObjectionEvent"
            self.inputs[(topic, partition, offset)] = (ts, self.dec.decode(value, kind))
        elif topic == t.decisions:
            d = self.dec.decode(value, "Decision")
            if d is None:
                self.bad_outputs.append(Violation("bad_output", f"{topic}[{partition}]@{offset}"))
                return
            self.timeline.append((ts, d["outcome"]))
            src = (d["source_topic"], d["source_partition"], d["source_offset"])
            if d["replay_id"] is None and d["source_topic"] == t.posts:
                self.accounted[src].append(("decision", d["post_id"]))
            if d["outcome"] == "PUBLISHED":
                self.published.append((d, ts))
            elif d["outcome"] == "RETRACTED":
                self.retracted.append((d, ts))
        elif topic == t.receipts:
            r = self.dec.decode(value, "ConsentReceipt")
            if r is None:
                self.bad_outputs.append(Violation("bad_output", f"{topic}[{partition}]@{offset}"))
                return
            r["_ts"] = ts
            self.timeline.append((ts, f"receipt {r['outcome']}"))
            src = (r["source_topic"], r["source_partition"], r["source_offset"])
            self.accounted[src].append(("receipt", r["event_id"]))
            self.receipts[r["user_id"]].append(r)
        elif topic == t.dlq:
            h = dict(headers or ())
            try:
                src = (
                    h["source.topic"].decode(),
                    int(h["source.partition"]),
                    int(h["source.offset"]),
                )
            except (KeyError, ValueError, AttributeError):
                self.bad_outputs.append(Violation("bad_output", f"DLQ record @{offset}: no source"))
                return
            self.timeline.append((ts, "DLQ"))
            if self._replay_request(src[0], key, value, headers):
                self.replay_like_dlq[src] += 1
            else:
                self.accounted[src].append(("dlq", ""))
        elif topic == t.training:
            post_id = (key or b"").decode("utf-8", "replace")
            record = None if value is None else self.dec.decode(value, "TrainingRecord")
            if value is not None and record is None:
                self.bad_outputs.append(Violation("bad_output", f"{topic}: post {post_id}"))
                return
            self.training[post_id].append((ts, record))

    def _replay_request(self, source_topic: str, key, value, headers) -> bool:
        """Whether a DLQ record may be that of a replay request: a post's input offset, no
        headers of an input's own, keyed by the user id of the post it holds (or too large
        to copy). An input without headers of its own, keyed by its user, looks the same."""
        if source_topic != self.t.posts:
            return False
        names = tuple(name for name, _ in headers or ())
        if names == _REPLAY_DLQ_REFERENCE:
            return key is None and value is None
        if names != _REPLAY_DLQ_HEADERS or key is None:
            return False
        post = self.dec.decode(value, "Post")
        return post is not None and key == post["user_id"].encode("utf-8")

    # -- checking ---------------------------------------------------------------------
    def _in_window(self, ms: int) -> bool:
        return ms >= self.start_ms and (self.end_ms is None or ms <= self.end_ms)

    def evaluate(self, now_ms: int | None = None) -> Result:
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        settled = now_ms - self.grace_ms
        res = Result(timeline=list(self.timeline))
        res.violations += self.bad_outputs
        v = res.violations.append
        c = res.counts

        # 1. every input offset accounted for exactly once
        for src, (ts, record) in sorted(self.inputs.items()):
            if not self._in_window(ts):
                continue
            topic, partition, offset = src
            kinds = self.accounted.get(src, [])
            replay_like = self.replay_like_dlq.get(src, 0)
            if replay_like and kinds:
                # the input has its own record: these are replay requests of its post that
                # went to the DLQ (a replay selects only posts that decode), not repeats
                c["replay_request_dlq"] += replay_like
            elif replay_like:
                kinds = [("dlq", "")] * replay_like
            what = ""
            if record is not None:
                what = f" (post {record['post_id']})" if "post_id" in record else ""
                what = what or f" (event {record.get('event_id')})"
            if not kinds:
                if ts > settled:
                    c["pending"] += 1
                else:
                    v(
                        Violation(
                            "unaccounted",
                            f"{topic}[{partition}]@{offset}{what} has no "
                            "decision, receipt or DLQ record",
                        )
                    )
                continue
            distinct = set(kinds)
            if len({k for k, _ in distinct}) > 1 or len(distinct) > 1:
                v(
                    Violation(
                        "unaccounted",
                        f"{topic}[{partition}]@{offset}{what} is accounted "
                        f"for more than once, differently: {sorted(distinct)}",
                    )
                )
                continue
            kind, identity = kinds[0]
            c[f"input_{kind}"] += 1
            if len(kinds) > 1:
                c["input_repeated"] += 1
            own = None if record is None else record.get("post_id", record.get("event_id"))
            if kind != "dlq" and own != identity:
                v(
                    Violation(
                        "unaccounted",
                        f"{topic}[{partition}]@{offset}{what} has a {kind} naming {identity!r}",
                    )
                )

        # 2. consent by the receipts: each user's states over time (in the order applied)
        timelines: dict[str, list[tuple[int, dict, frozenset]]] = {}
        for user, receipts in self.receipts.items():
            first: dict[str, dict] = {}
            for r in sorted(receipts, key=lambda r: (r["applied_at"], r["_ts"])):
                first.setdefault(r["event_id"], r)  # a repeat processed again: the first
            consent, steps = _Consent(), []
            for r in sorted(first.values(), key=lambda r: (r["applied_at"], r["_ts"])):
                consent.add(r["event_id"], r["action"], r["platform"], r["applied_occurred_at"])
                objected = frozenset(p for p in PLATFORMS if consent.objects(p))
                steps.append((r["applied_at"], r, objected))
                c[f"receipt_{r['outcome']}"] += 1
                if set(r["objected_platforms"]) != objected:
                    v(
                        Violation(
                            "receipt_state",
                            f"receipt of event {r['event_id']} (user {user})"
                            f" says objected on {sorted(r['objected_platforms'])}, its "
                            f"receipts imply {sorted(objected)}",
                        )
                    )
            timelines[user] = steps

        def in_force(user: str, platform: str, at: int) -> dict | None:
            """The receipt after which the user objects on ``platform`` at ``at``, if any.

            Times are milliseconds, and a worker applies many records in one: a receipt
            applied in the same millisecond as the decision may have come before it or
            after it (the records do not say which). The decision is a violation only if
            the user objected in every state it may have seen: after the receipts
            applied before ``at``, and after each one of the same millisecond."""
            cause = None
            for applied_at, r, objected in timelines.get(user, ()):
                if applied_at > at:
                    break
                if applied_at == at and cause is None:
                    return None  # the state before this receipt allowed the post
                cause = r if platform in objected else None
            return cause

        # 3. nothing published while an objection was in force; nothing without a decision
        decided = {(d["post_id"], d["decided_at"]) for d, _ in self.published}
        # posts with a decision of their own (not a replay's): a copy on training-ingest
        # without its own decision is then one whose Decision a crash lost before it was
        # sent (the TrainingRecord goes first); the input was processed again and decided
        # anew, so it is counted, not a violation
        has_decision = {d["post_id"] for d, _ in self.published} | {
            d["post_id"] for d, _ in self.retracted
        }
        for post_id, history in self.training.items():
            for _, record in history:
                if record is None:
                    continue
                at = record["decided_at"]
                if not self._in_window(at):
                    continue
                c["training_records"] += 1
                if (post_id, at) not in decided and post_id in has_decision:
                    c["published_copy_decision_lost"] += 1
                elif (post_id, at) not in decided:
                    v(
                        Violation(
                            "published_without_decision",
                            f"post {post_id} of user "
                            f"{record['user_id']} is on {self.t.training} (decided_at "
                            f"{_ms(at)}) without a PUBLISHED decision",
                        )
                    )
                cause = in_force(record["user_id"], record["platform"], at)
                if cause is not None:
                    v(
                        Violation(
                            "published_while_objected",
                            f"post {post_id} of user "
                            f"{record['user_id']} ({record['platform']}) published at "
                            f"{_ms(at)} while objection {cause['event_id']} (applied at "
                            f"{_ms(cause['applied_at'])}) was in force",
                        )
                    )

        # 4. retracted once objected: now (still_live), and at every objection put in force
        # (not_retracted); the receipts' counts; the latency of each retraction
        for post_id, history in self.training.items():
            ts, record = history[-1]
            if record is None:
                continue
            c["live_posts"] += 1
            steps = timelines.get(record["user_id"])
            if steps and record["platform"] in steps[-1][2]:
                last = [s for s in steps if record["platform"] in s[2]][-1]
                if last[0] > settled:
                    c["pending"] += 1
                    continue
                v(
                    Violation(
                        "still_live",
                        f"post {post_id} of user {record['user_id']} "
                        f"({record['platform']}) is live on {self.t.training} although "
                        f"objection {last[1]['event_id']} is in force since "
                        f"{_ms(last[0])}",
                    )
                )
        self._retractions(timelines, settled, res)

        # 5. every published post eligible under the policy version it names
        for d, _ in self.published:
            if not self._in_window(d["decided_at"]):
                continue
            c["published_decisions"] += 1
            src = (d["source_topic"], d["source_partition"], d["source_offset"])
            entry = self.inputs.get(src)
            if entry is None or entry[1] is None:
                c["published_input_not_read"] += 1  # deleted by retention, or outside reads
                continue
            post = entry[1]
            if post.get("post_id") != d["post_id"]:
                v(
                    Violation(
                        "ineligible_published",
                        f"PUBLISHED decision of post {d['post_id']}"
                        f" names {src}, which holds post {post.get('post_id')}",
                    )
                )
                continue
            rules = self.rules.get(d["policy_version"])
            if rules is None:
                v(
                    Violation(
                        "ineligible_published",
                        f"post {d['post_id']} published under "
                        f"policy version {d['policy_version']!r}, which verify was not "
                        "given (--policy / --known-policy)",
                    )
                )
                continue
            failed = rules.failed(post)
            if failed is not None:
                v(
                    Violation(
                        "ineligible_published",
                        f"post {d['post_id']} published under "
                        f"{d['policy_version']} although it fails {failed}",
                    )
                )
        c["violations"] = len(res.violations)
        return res

    def _retractions(
        self, timelines: dict[str, list[tuple[int, dict, frozenset]]], settled: int, res: Result
    ) -> None:
        """``not_retracted``, ``receipt_count`` and the objection-to-retraction latency.

        A receipt puts an objection in force on the platforms objected after it and not
        before it. Each post of the user on one of them that is live on training-ingest
        at that moment (its last TrainingRecord decided at or before it, no tombstone
        after that record dated before it) must have a tombstone after that record, before
        any publication decided after the next receipt that allows the platform again, and
        not sent after that receipt was applied unless a RETRACTED decision of the post
        was made before it (the tombstone's timestamp is the producer's clock, the
        decision's the worker's: late only if both say so). A post with no tombstone while
        the objection still holds is ``still_live``."""
        v, c = res.violations.append, res.counts
        # (user, event id) -> the time of the objection's record on the objections topic
        event_time: dict[tuple[str, str], int] = {}
        for user, steps in timelines.items():
            for _, r, _ in steps:
                read = self.inputs.get(
                    (r["source_topic"], r["source_partition"], r["source_offset"])
                )
                event_time[(user, r["event_id"])] = read[0] if read else r["_ts"]
        # when a post's RETRACTED decisions were made; each (user, cause, post) once,
        # at its first broker time: a repeat after a crash is not another retraction
        retractions_of: dict[str, list[int]] = defaultdict(list)
        first: dict[tuple[str, str, str], int] = {}
        repeated: set[tuple[str, str]] = set()  # (user, cause) with a decision repeated
        for d, ts in self.retracted:
            c["retracted_decisions"] += 1
            retractions_of[d["post_id"]].append(d["decided_at"])
            pair = (d["user_id"], d.get("cause") or "", d["post_id"])
            if pair in first:
                repeated.add(pair[:2])
            if pair not in first or ts < first[pair]:
                first[pair] = ts
        retracted_by: dict[tuple[str, str], set[str]] = defaultdict(set)
        for (user, cause, post_id), ts in sorted(first.items()):
            retracted_by[(user, cause)].add(post_id)
            if (user, cause) in event_time and self._in_window(ts):
                at = event_time[(user, cause)]
                seconds = max(0.0, (ts - at) / 1000.0)
                res.latencies.append((cause, post_id, at, ts, seconds))

        posts_of: dict[str, set[str]] = defaultdict(set)
        for post_id, history in self.training.items():
            for _, record in history:
                if record is not None:
                    posts_of[record["user_id"]].add(post_id)
        for user, steps in timelines.items():
            posts = sorted(posts_of.get(user, ()))
            for i, (at, receipt, objected) in enumerate(steps):
                new = objected - steps[i - 1][2] if i else objected
                if not new or not posts or not self._in_window(at):
                    continue
                for platform in sorted(new):
                    allow = next((s for s in steps[i + 1 :] if platform not in s[2]), None)
                    for post_id in posts:
                        self._retracted_after(
                            post_id,
                            user,
                            platform,
                            at,
                            receipt,
                            allow,
                            retractions_of,
                            settled,
                            res,
                        )

        # each receipt's posts_retracted against the RETRACTED decisions naming its event
        by_event: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for user, receipts in self.receipts.items():
            for r in receipts:
                by_event[(user, r["event_id"])].append(r)
        for (user, event_id), receipts in sorted(by_event.items()):
            receipts.sort(key=lambda r: (r["applied_at"], r["_ts"]))
            if not any(self._in_window(r["applied_at"]) for r in receipts):
                continue
            claimed = sum(r["posts_retracted"] for r in receipts)
            seen = len(retracted_by.get((user, event_id), ()))
            if claimed == seen:
                continue
            if max(r["applied_at"] for r in receipts) > settled:
                c["pending"] += 1
                continue
            sources = Counter(
                (r["source_topic"], r["source_partition"], r["source_offset"]) for r in receipts
            )
            text = (
                f"receipt(s) of event {event_id} (user {user}) say {claimed} post(s) "
                f"retracted; {seen} post(s) have a RETRACTED decision naming it"
            )
            if (
                max(sources.values()) > 1
                or receipts[0]["outcome"] == "IGNORED_REPEATED_EVENT_ID"
                or (user, event_id) in repeated
            ):
                # processed again after a crash (a receipt or a RETRACTED decision
                # repeated, or the first receipt lost): each pass counts what it
                # retracted, and the records do not say which pass made which
                c["receipt_count_ambiguous"] += 1
                res.notes.append(f"receipt_count (at-least-once repeat, not a violation): {text}")
            else:
                v(Violation("receipt_count", text))

    def _retracted_after(
        self,
        post_id: str,
        user: str,
        platform: str,
        at: int,
        receipt: dict,
        allow: tuple[int, dict, frozenset] | None,
        retractions_of: dict[str, list[int]],
        settled: int,
        res: Result,
    ) -> None:
        """One post against one objection put in force at ``at`` (``_retractions``)."""
        history = self.training[post_id]
        live = None
        for k, (_, record) in enumerate(history):
            if record is not None and record["decided_at"] <= at:
                live = k
        if live is None:
            return
        record = history[live][1]
        if record is None or record["user_id"] != user or record["platform"] != platform:
            return
        after = history[live + 1 :]
        if any(value is None and ts < at for ts, value in after):
            return  # retracted before (its tombstone is dated before the receipt)
        if record["decided_at"] == at and allow is not None and allow[0] == at:
            return  # of the same millisecond as both: may have been decided after `allow`
        res.counts["objection_retractions_required"] += 1
        gone = next((j for j, (_, value) in enumerate(after) if value is None), None)
        # when the post's RETRACTED decisions were made after this publication (the
        # worker's clock, as the receipts' applied_at)
        retracted = [t for t in retractions_of.get(post_id, ()) if t >= record["decided_at"]]
        if gone is not None and not retracted:
            res.counts["retraction_without_decision"] += 1
        if allow is None:
            return  # retracted, or still live while the objection holds: still_live
        until = len(after) if gone is None else gone
        republished = any(
            value is not None and value["decided_at"] > allow[0] for _, value in after[:until]
        )
        # late: its tombstone sent after the withdrawal was applied, and no RETRACTED
        # decision made before then either
        late = (
            gone is not None
            and after[gone][0] > allow[0]
            and not any(t <= allow[0] for t in retracted)
        )
        if gone is not None and not republished and not late:
            return
        if at > settled:
            res.counts["pending"] += 1
            return
        res.counts["objection_retractions_missing"] += 1
        how = (
            "was not retracted"
            if gone is None or republished
            else f"was retracted only at {_ms(after[gone][0])}"
        )
        allowed = f" before event {allow[1]['event_id']} allowed it again at {_ms(allow[0])}"
        res.violations.append(
            Violation(
                "not_retracted",
                f"post {post_id} of user {user} ({platform}), live on {self.t.training} "
                f"(decided_at {_ms(record['decided_at'])}) when objection "
                f"{receipt['event_id']} was applied at {_ms(at)}, {how}{allowed}",
            )
        )


# -- reading the topics -----------------------------------------------------------------
class Tail:
    """Every partition of some topics from the beginning; ``catch_up`` reads up to the
    ends as they are when it is called, and feeds each record to a ``Checker``."""

    def __init__(self, settings: Any, topics: list[str], config: dict | None = None) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self._tp = TopicPartition
        self.settings = settings
        self.consumer = Consumer(
            command_config(
                settings,
                {
                    "group.id": VERIFY_GROUP,
                    "enable.auto.commit": False,
                    "enable.partition.eof": False,
                    "isolation.level": "read_committed",
                    **(config or {}),
                },
            )
        )
        self.topics = topics
        self.positions: dict[tuple[str, int], int] = {}
        self._assigned: set[tuple[str, int]] = set()

    def _assign_new(self) -> None:
        md = self.consumer.list_topics(timeout=30)
        new = []
        for topic in self.topics:
            t = md.topics.get(topic)
            if t is None or t.error is not None:
                continue
            for p in t.partitions:
                if (topic, p) not in self._assigned:
                    self._assigned.add((topic, p))
                    self.positions[(topic, p)] = 0
                    new.append(self._tp(topic, p, -2))  # earliest
        if new:
            self.consumer.incremental_assign(new)

    def catch_up(self, checker: Checker, timeout: float = 300.0) -> int:
        self._assign_new()
        ends = {}
        for topic, p in self._assigned:
            low, high = self.consumer.get_watermark_offsets(self._tp(topic, p), timeout=30)
            if high > max(low, self.positions[(topic, p)]):
                ends[(topic, p)] = high
        n = 0
        deadline = time.monotonic() + timeout
        while ends and time.monotonic() < deadline:
            for m in self.consumer.consume(10000, timeout=0.5):
                if m.error():
                    raise_if_denied(m.error(), self.settings)
                    continue
                tp = (m.topic(), m.partition())
                self.positions[tp] = m.offset() + 1
                checker.add(
                    m.topic(),
                    m.partition(),
                    m.offset(),
                    m.timestamp()[1],
                    m.key(),
                    m.value(),
                    m.headers(),
                )
                n += 1
                if tp in ends and m.offset() + 1 >= ends[tp]:
                    del ends[tp]
            for tp in [tp for tp in ends if self._caught_up(tp, ends[tp])]:
                del ends[tp]
        if ends:
            raise TimeoutError(f"could not read {sorted(ends)} to their end in {timeout:.0f} s")
        return n

    def _caught_up(self, tp: tuple[str, int], end: int) -> bool:
        """Also true when the records before ``end`` are gone (compaction, retention)
        or are transaction markers: the position is at or past the end."""
        pos = self.consumer.position([self._tp(*tp)])[0].offset
        return pos >= end

    def close(self) -> None:
        self.consumer.close()


def order_of_reading(t: Topics) -> list[str]:
    """Inputs first, then the outputs: what accounts for an input read is then read."""
    return [t.posts, t.objections, t.receipts, t.decisions, t.dlq, t.retractions, t.training]


# -- metrics for --follow ---------------------------------------------------------------
def render_metrics(res: Result, passes: int) -> str:
    out = [
        "# HELP enforcer_verify_passes_total Passes of enforcer verify --follow.",
        "# TYPE enforcer_verify_passes_total counter",
        f"enforcer_verify_passes_total {passes}",
        "# HELP enforcer_verify_violations Violations found by the last pass, by check.",
        "# TYPE enforcer_verify_violations gauge",
    ]
    by_check = Counter(x.check for x in res.violations)
    for check in CHECKS:
        out.append(f'enforcer_verify_violations{{check="{check}"}} {by_check.get(check, 0)}')
    out += [
        "# HELP enforcer_verify_records Counts of the last pass.",
        "# TYPE enforcer_verify_records gauge",
    ]
    for name, n in sorted(res.counts.items()):
        out.append(f'enforcer_verify_records{{what="{name}"}} {n}')
    out += [
        "# HELP enforcer_verify_retraction_latency_seconds Objection record to RETRACTED "
        "decision, per retracted post.",
        "# TYPE enforcer_verify_retraction_latency_seconds histogram",
    ]
    values = sorted(x[4] for x in res.latencies)
    import bisect

    for bound in LATENCY_BUCKETS:
        out.append(
            f'enforcer_verify_retraction_latency_seconds_bucket{{le="{bound}"}} '
            f"{bisect.bisect_right(values, bound)}"
        )
    out.append(f'enforcer_verify_retraction_latency_seconds_bucket{{le="+Inf"}} {len(values)}')
    out.append(f"enforcer_verify_retraction_latency_seconds_sum {sum(values)}")
    out.append(f"enforcer_verify_retraction_latency_seconds_count {len(values)}")
    return "\n".join(out) + "\n"


def summary(res: Result, limit: int = 200) -> str:
    """The readable text: counts, latency, then the violations."""
    lines = ["enforcer verify:"]
    for name, n in sorted(res.counts.items()):
        lines.append(f"  {name:34s} {n:>10}")
    if res.latencies:
        vals = sorted(x[4] for x in res.latencies)
        pick = [vals[min(len(vals) - 1, int(q * len(vals)))] for q in (0.5, 0.99)]
        lines.append(
            f"  objection-to-retraction latency: n={len(vals)} p50={pick[0]:.3f}s "
            f"p99={pick[1]:.3f}s max={vals[-1]:.3f}s"
        )
    notes = getattr(res, "notes", ())
    if notes:
        lines.append(f"{len(notes)} note(s), not violations:")
        lines += [f"  {x}" for x in notes[:limit]]
    if res.violations:
        lines.append(f"{len(res.violations)} violation(s):")
        lines += [f"  {x}" for x in res.violations[:limit]]
        if len(res.violations) > limit:
            lines.append(f"  ... and {len(res.violations) - limit} more")
    else:
        lines.append("no violations")
    return "\n".join(lines)


# -- the command ------------------------------------------------------------------------
def load_rules(policy_path: Path | None, known: Iterable[str] = ()) -> list[_Rules]:
    """The policy versions verify knows: the worker's (``--policy``, or the packaged
    default) and any earlier ones (``--known-policy``)."""
    return [_Rules.load(policy_path or DEFAULT_POLICY), *(_Rules.load(Path(p)) for p in known)]


def run(
    settings: Any,
    start_ms: int = 0,
    end_ms: int | None = None,
    grace_s: float = 60.0,
    known_policies: Iterable[str] = (),
    report: str | None = None,
    follow: bool = False,
    interval: float = 10.0,
    out: Any = None,
) -> int:
    """One pass (exit 0 when nothing is violated, 1 otherwise), or with ``follow`` a
    pass every ``interval`` seconds, serving /metrics, until interrupted."""
    import sys

    out = out or sys.stdout
    preflight(settings, "verify")
    registry = None
    if settings.schema_registry_url:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        registry = SchemaRegistryClient(registry_config(settings))
    topics = Topics.of(settings)
    checker = Checker(
        topics,
        load_rules(settings.policy_path, known_policies),
        Decoder(registry),
        start_ms,
        end_ms,
        int(grace_s * 1000),
    )
    tail = Tail(settings, order_of_reading(topics))
    try:
        if not follow:
            tail.catch_up(checker)
            res = checker.evaluate()
            print(summary(res), file=out, flush=True)
            if report:
                from streams.verify.report import write_report

                write_report(Path(report), res)
                print(f"report written to {report}", file=out, flush=True)
            return 0 if res.ok else 1
        return _follow(settings, checker, tail, interval, report, out)
    finally:
        tail.close()


def _follow(settings: Any, checker: Checker, tail: Tail, interval: float, report, out) -> int:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    state = {"text": render_metrics(Result(), 0)}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/metrics":
                self.send_error(404)
                return
            body = state["text"].encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((settings.web_host, settings.web_port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(
        f"enforcer verify --follow: http://{settings.web_host}:{server.server_port}/metrics",
        file=out,
        flush=True,
    )
    passes, worst = 0, 0

    # stop on SIGINT even when started with it ignored (a shell's background job, nohup),
    # and on SIGTERM (a pod stopping) the same way
    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            tail.catch_up(checker)
            res = checker.evaluate()
            passes += 1
            state["text"] = render_metrics(res, passes)
            line = ", ".join(f"{k}={n}" for k, n in sorted(res.counts.items()))
            print(f"[{_ms(int(time.time() * 1000))}] pass {passes}: {line}", file=out, flush=True)
            for x in res.violations[:20]:
                print(f"  {x}", file=out, flush=True)
            if report:
                from streams.verify.report import write_report

                write_report(Path(report), res)
            worst = max(worst, len(res.violations))
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0 if worst == 0 else 1
    finally:
        server.shutdown()
