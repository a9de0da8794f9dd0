"""The ledger's held removals: read as done at once, written only when settled."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from streams.state.ledger import Ledger, entry_key


class MemoryTable:
    """A TableState stand-in: partitions of a sorted dict, changelog writes recorded."""

    def __init__(self) -> None:
        self.data: dict[int, dict[bytes, bytes]] = {}
        self.changelog: list[tuple[int, bytes, bytes | None]] = []

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self.data.get(partition, {}).get(key)

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        self.data.setdefault(partition, {})[key] = value
        self.changelog.append((partition, key, value))

    def delete(self, partition: int, key: bytes) -> None:
        self.data.get(partition, {}).pop(key, None)
        self.changelog.append((partition, key, None))

    def scan(self, partition: int, prefix: bytes) -> Any:
        for key in sorted(self.data.get(partition, {})):
            if key.startswith(prefix):
                yield key, self.data[partition][key]


def test_a_removal_reads_as_done_but_is_written_only_when_settled() -> None:
    table = MemoryTable()
    ledger = Ledger(table)
    ledger.add(0, "u1", "p1", "FACEBOOK")
    ledger.add(0, "u1", "p2", "INSTAGRAM")
    ledger.remove(0, "u1", "p1")
    assert not ledger.is_live(0, "u1", "p1")
    assert ledger.live_posts(0, "u1") == {"p2": "INSTAGRAM"}
    assert table.get(0, entry_key("u1", "p1")) == b"FACEBOOK"  # a crash now: still listed
    assert ledger.settle() == 1
    assert table.get(0, entry_key("u1", "p1")) is None
    assert table.changelog[-1] == (0, entry_key("u1", "p1"), None)
    assert ledger.settle() == 0


def test_adding_a_held_post_again_cancels_its_removal() -> None:
    table = MemoryTable()
    ledger = Ledger(table)
    ledger.add(1, "u1", "p1", "FACEBOOK")
    ledger.remove(1, "u1", "p1")
    ledger.add(1, "u1", "p1", "FACEBOOK")
    assert ledger.is_live(1, "u1", "p1")
    assert ledger.settle() == 0
    assert table.get(1, entry_key("u1", "p1")) == b"FACEBOOK"


def test_forget_drops_held_removals_of_revoked_partitions() -> None:
    table = MemoryTable()
    ledger = Ledger(table)
    for partition in (1, 2):
        ledger.add(partition, "u", "p", "FACEBOOK")
        ledger.remove(partition, "u", "p")
    ledger.forget([1])  # revoked: the next owner re-processes the input
    assert ledger.is_live(1, "u", "p")
    assert not ledger.is_live(2, "u", "p")
    assert ledger.settle() == 1  # partition 2 only
    assert table.get(1, entry_key("u", "p")) == b"FACEBOOK"
    assert table.get(2, entry_key("u", "p")) is None


ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "settle"]),
        st.integers(0, 1),
        st.sampled_from(["u1", "u2"]),
        st.sampled_from(["p1", "p2", "p3"]),
    ),
    max_size=40,
)


@given(ops)
def test_reads_match_a_plain_set_of_live_posts_whenever_settled(steps: list) -> None:
    table = MemoryTable()
    ledger = Ledger(table)
    live: dict[tuple[int, str, str], str] = {}
    for op, partition, user, post in steps:
        if op == "add":
            ledger.add(partition, user, post, "FACEBOOK")
            live[(partition, user, post)] = "FACEBOOK"
        elif op == "remove":
            ledger.remove(partition, user, post)
            live.pop((partition, user, post), None)
        else:
            ledger.settle()
        for p in (0, 1):
            for u in ("u1", "u2"):
                expected = {pid: plat for (pp, uu, pid), plat in live.items() if (pp, uu) == (p, u)}
                assert ledger.live_posts(p, u) == expected
    ledger.settle()
    on_table = {(p, key): value for p, rows in table.data.items() for key, value in rows.items()}
    assert on_table == {(p, entry_key(u, pid)): plat.encode() for (p, u, pid), plat in live.items()}
