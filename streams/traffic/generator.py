"""Deterministic synthetic traffic: posts, objection events and a few malformed records.

Users have a stable country and age; posts spread over platforms and visibilities;
a share of users object (to every platform or to one), some withdraw later, some
events arrive out of order or twice. The same seed gives the same records. No Kafka.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from streams.serde.codec import Codec

COUNTRIES = (("GB", 0.55), ("IE", 0.1), ("FR", 0.1), ("DE", 0.1), ("US", 0.15))
VISIBILITY = (("PUBLIC", 0.7), ("FRIENDS", 0.2), ("PRIVATE", 0.1))
WORDS = (
    "the quick brown fox jumps over a lazy dog while our garden grows tomatoes and "
    "everyone talks about the weekend match"
).split()
BASE_TIME_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@dataclass(frozen=True)
class Generated:
    """One record to produce."""

    kind: str  # post | objection | bad
    topic_kind: str  # posts | objections
    key: bytes | None
    value: bytes | None
    datum: dict | None = None


def _pick(rnd: random.Random, table: tuple[tuple[str, float], ...]) -> str:
    x = rnd.random()
    for value, weight in table:
        x -= weight
        if x < 0:
            return value
    return table[-1][0]


class TrafficGenerator:
    """Produces a reproducible mix of records for ``users`` users."""

    def __init__(
        self,
        users: int = 1000,
        seed: int = 1,
        *,
        objector_share: float = 0.1,
        objection_rate: float = 0.05,
        bad_ratio: float = 0.0,
        codec: Codec | None = None,
        run_id: str = "",
    ) -> None:
        if users < 1:
            raise ValueError("users must be at least 1")
        self.users = users
        self.rnd = random.Random(seed)
        self.codec = codec or Codec()
        self.objection_rate = objection_rate
        self.bad_ratio = bad_ratio
        self.run = run_id or f"s{seed}"
        self.objectors = max(1, int(users * objector_share)) if objector_share > 0 else 0
        self._objected: dict[int, bool] = {}
        self._posts = 0
        self._events = 0
        self._clock = BASE_TIME_MS

    def user_id(self, n: int) -> str:
        """The id of user number ``n``."""
        return f"user-{n:07d}"

    def _user_traits(self, n: int) -> tuple[str, bool]:
        traits = random.Random(n * 7919 + 17)
        return _pick(traits, COUNTRIES), traits.random() < 0.9

    def post(self, user: int | None = None) -> dict:
        """A post by a random (or given) user."""
        rnd = self.rnd
        n = rnd.randrange(self.users) if user is None else user
        country, adult = self._user_traits(n)
        self._posts += 1
        self._clock += 1
        words = rnd.randint(5, 30)
        return {
            "post_id": f"{self.run}-p{self._posts}",
            "user_id": self.user_id(n),
            "platform": "FACEBOOK" if rnd.random() < 0.6 else "INSTAGRAM",
            "visibility": _pick(rnd, VISIBILITY),
            "author_country": country,
            "author_is_adult": adult,
            "created_at": self._clock,
            "text": " ".join(rnd.choice(WORDS) for _ in range(words)),
            "media_urls": (
                [f"https://cdn.example/{self.run}/{self._posts}.jpg"] if rnd.random() < 0.3 else []
            ),
        }

    def objection(self, user: int | None = None) -> dict:
        """The next objection event of a random (or given) objector."""
        rnd = self.rnd
        n = rnd.randrange(self.objectors) if user is None else user  # objectors: users 0..k-1
        self._events += 1
        self._clock += 1
        objected = self._objected.get(n, False)
        action = "WITHDRAW" if objected and rnd.random() < 0.3 else "OBJECT"
        self._objected[n] = action == "OBJECT"
        occurred = self._clock - (rnd.randint(1, 5000) if rnd.random() < 0.05 else 0)
        r = rnd.random()
        platform = None if r < 0.6 else ("FACEBOOK" if r < 0.8 else "INSTAGRAM")
        return {
            "event_id": f"{self.run}-e{self._events}",
            "user_id": self.user_id(n),
            "action": action,
            "platform": platform,
            "occurred_at": occurred,
            "channel": rnd.choice(("IN_APP", "WEB_FORM", "EMAIL", "SUPPORT")),
        }

    def bad(self) -> Generated:
        """A malformed record, on either input topic."""
        rnd = self.rnd
        topic = "posts" if rnd.random() < 0.7 else "objections"
        good = self.codec.encode("Post", self.post())
        choice = rnd.randrange(4)
        if choice == 0:
            value = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 40)))
        elif choice == 1:
            value = good[: rnd.randint(1, len(good) - 1)]
        elif choice == 2:
            value = b"\xc3\x01" + bytes(8) + good[10:]
        else:
            value = b'{"post_id": "json-is-not-avro"}'
        return Generated("bad", topic, b"bad", value)

    def objections_for_all_objectors(self) -> Iterator[Generated]:
        """One OBJECT event for each objector (a bench prelude)."""
        for n in range(self.objectors):
            event = self.objection(n)
            if event["action"] != "OBJECT":
                event["action"] = "OBJECT"
                self._objected[n] = True
            yield self._encode_objection(event)

    def _encode_objection(self, event: dict) -> Generated:
        return Generated(
            "objection",
            "objections",
            event["event_id"].encode(),
            self.codec.encode("ObjectionEvent", event),
            event,
        )

    def records(self, count: int) -> Iterator[Generated]:
        """``count`` records: posts, objection events and malformed ones, mixed."""
        rnd = self.rnd
        for _ in range(count):
            x = rnd.random()
            if x < self.bad_ratio:
                yield self.bad()
            elif self.objectors and x < self.bad_ratio + self.objection_rate:
                event = self.objection()
                if rnd.random() < 0.02:  # a duplicate delivery of the same event
                    yield self._encode_objection(event)
                yield self._encode_objection(event)
            else:
                p = self.post()
                yield Generated(
                    "post", "posts", p["post_id"].encode(), self.codec.encode("Post", p), p
                )
