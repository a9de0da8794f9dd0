"""``enforcer verify --report FILE.html``: a page an operator can hand over.

The counts and violations of a pass, a chart of decision and receipt outcomes over time
and a histogram of the objection-to-retraction latency, drawn with matplotlib (the
``report`` extra: ``pip install 'objection-enforcer[report]'``) and embedded as PNG.
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def charts(res: Any) -> tuple[str, str]:
    """Outcomes over time and the latency histogram, as base64 PNGs."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the install
        raise SystemExit(
            "enforcer: error: --report needs matplotlib: pip install 'objection-enforcer[report]'"
        ) from None
    points = sorted(res.timeline)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    if points:
        first, last = points[0][0], points[-1][0]
        step = max(1000, (last - first) // 60 or 1000)  # about 60 bins
        series: dict[str, Counter] = defaultdict(Counter)
        for ms, name in points:
            series[name][(ms - first) // step] += 1
        bins = range((last - first) // step + 1)
        xs = [(first + b * step) / 1000.0 for b in bins]
        import datetime as dt

        when = [dt.datetime.fromtimestamp(x, dt.UTC) for x in xs]
        for name in sorted(series):
            counts = [series[name][b] for b in bins]
            # datetimes on the x axis: matplotlib's stubs name numbers only
            ax.plot(when, counts, label=name, linewidth=1.2)  # type: ignore[arg-type]
        ax.set_ylabel(f"records per {step / 1000:g} s")
        ax.legend(fontsize=7, ncol=3)
    ax.set_title("Decisions, consent receipts and DLQ records over time (UTC)")
    fig.autofmt_xdate()
    over_time = _png(fig)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(9, 3.2))
    values = [x[4] for x in res.latencies]
    if values:
        ax.hist(values, bins=40, color="#3b6ea5")
    ax.set_xlabel("seconds from the objection record to the RETRACTED decision")
    ax.set_ylabel("retracted posts")
    ax.set_title(f"Objection-to-retraction latency ({len(values)} retracted posts)")
    latency = _png(fig)
    plt.close(fig)
    return over_time, latency


def write_report(path: Path, res: Any) -> None:
    """The HTML page of a verify pass."""
    over_time, latency = charts(res)
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{n}</td></tr>" for k, n in sorted(res.counts.items())
    )
    verdict = (
        "<p class=ok>No violations.</p>"
        if res.ok
        else f"<p class=bad>{len(res.violations)} violation(s):</p><ul>"
        + "".join(f"<li>{html.escape(str(v))}</li>" for v in res.violations[:1000])
        + "</ul>"
    )
    notes = list(getattr(res, "notes", ()))
    if notes:
        verdict += (
            f"<p>{len(notes)} note(s), not violations (what at-least-once repeats leave "
            "ambiguous):</p><ul>"
            + "".join(f"<li>{html.escape(str(x))}</li>" for x in notes[:1000])
            + "</ul>"
        )
    values = sorted(x[4] for x in res.latencies)
    stats = ""
    if values:
        q = [values[min(len(values) - 1, int(p * len(values)))] for p in (0.5, 0.9, 0.99)]
        stats = (
            f"<p>Latency: n={len(values)}, p50 {q[0]:.3f} s, p90 {q[1]:.3f} s, "
            f"p99 {q[2]:.3f} s, max {values[-1]:.3f} s.</p>"
        )
    made = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    path.write_text(
        f"""<!doctype html><html><head><meta charset="utf-8">
<title>Objection enforcer: verification report</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
td{{padding:2px 12px}} .ok{{color:#176b2c;font-weight:bold}} .bad{{color:#a01818;font-weight:bold}}
</style></head><body>
<h1>Objection enforcer: verification report</h1>
<p>Made {made} by <code>enforcer verify</code>, an independent check that reads only the
topics.</p>
{verdict}
<h2>Counts</h2><table>{rows}</table>
<h2>Outcomes over time</h2><img alt="outcomes over time" src="data:image/png;base64,{over_time}">
<h2>Objection-to-retraction latency</h2>{stats}
<img alt="latency histogram" src="data:image/png;base64,{latency}">
</body></html>
"""
    )
