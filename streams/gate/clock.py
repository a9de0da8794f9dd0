"""The gate's two clocks, in one place (the tests replace them here): the wall clock a
decision is dated by, in epoch milliseconds, and the monotonic clock of repositioning."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Now, in milliseconds since the epoch."""
    return int(time.time() * 1000)


def monotonic() -> float:
    """Seconds of a clock that never goes back."""
    return time.monotonic()
