"""Types of the fast path's C extension (``_native.c``; built by setup.py, optional)."""

from typing import Any

class FastGate:
    """The gate's per-post fast path (``native.make_fast_gate``)."""

    fixed_now: int  # decided_at (epoch ms) of every post when >= 0, for tests; -1: the clock
    def __init__(self, *parts: Any) -> None: ...
    def scan(self, value: bytes) -> tuple[int, ...] | None: ...
    def run(
        self, messages: Any, scale: float
    ) -> tuple[int, tuple[int, ...], tuple[int, ...], float, int]: ...

def utf8_valid(data: bytes, /) -> bool: ...
