"""What the scripts that put a results file's figures into the documents share
(``bench.commit_interval_figures``, ``bench.failover_figures``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def median_range(stats: dict[str, float] | None, digits: int = 0, scale: float = 1.0) -> str:
    """``median (min-max)``."""
    if not stats:
        return "-"
    med, lo, hi = (stats[k] * scale for k in ("median", "min", "max"))
    return f"{med:,.{digits}f} ({lo:,.{digits}f}-{hi:,.{digits}f})"


def results(argv: list[str], pattern: str) -> list[dict[str, Any]]:
    """The results files named in ``argv`` (``--write`` aside), else the newest one
    matching ``pattern`` in ``bench/results``; each with its path as ``file``."""
    paths = [Path(a) for a in argv if a != "--write"] or [
        max(RESULTS.glob(pattern), key=lambda p: p.name)
    ]
    out = []
    for path in paths:
        result = json.loads(path.read_text())
        result["file"] = str(path)
        out.append(result)
    return out
