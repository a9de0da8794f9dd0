"""The live-post ledger: which posts of a user are live in training-ingest.

Held in a Faust table on RocksDB (so it has a changelog), keyed
``len(user) (2 bytes) + user + post_id`` -> platform, so that one user's posts are
a contiguous key range read by prefix without scanning anyone else's.
"""

from __future__ import annotations

from typing import Any


def user_prefix(user_id: str) -> bytes:
    """The key prefix shared by all of one user's ledger entries."""
    user = user_id.encode("utf-8")
    return len(user).to_bytes(2, "big") + user


def entry_key(user_id: str, post_id: str) -> bytes:
    """The ledger key of one post."""
    return user_prefix(user_id) + post_id.encode("utf-8")


class Ledger:
    """Live post ids per user, over a Faust table whose store is RocksDB."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def is_live(self, user_id: str, post_id: str) -> bool:
        """True when the post is live (read from the current event's partition)."""
        return self.table.get(entry_key(user_id, post_id)) is not None

    def live_posts(self, user_id: str, partition: int) -> dict[str, str]:
        """Every live post of a user as post id -> platform, read by key prefix."""
        prefix = user_prefix(user_id)
        db = self.table.data._db_for_partition(partition)
        found: dict[str, str] = {}
        for key, value in db.items(from_key=prefix):
            if not key.startswith(prefix):
                break
            if value is not None:
                found[key[len(prefix):].decode("utf-8")] = value.decode("utf-8")
        return found

    def add(self, user_id: str, post_id: str, platform: str) -> None:
        """Record a post as live."""
        self.table[entry_key(user_id, post_id)] = platform.encode("utf-8")

    def remove(self, user_id: str, post_id: str) -> None:
        """Record a post as no longer live."""
        key = entry_key(user_id, post_id)
        if self.table.get(key) is not None:
            del self.table[key]
