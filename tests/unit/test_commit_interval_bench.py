"""bench/commit_interval.py's bookkeeping (interleaving, medians) and the tables its
figures script writes between the documents' markers; no Kafka."""

from __future__ import annotations

from pathlib import Path

from bench.commit_interval import VARIANTS, order, parse_variant, summarise
from bench.commit_interval_figures import BEGIN, BEGIN_ALL, END, END_ALL, table, write


def test_each_repetition_rotates_the_order_and_keeps_every_variant() -> None:
    names = list(VARIANTS)
    orders = [order(names, rep) for rep in range(3)]
    assert orders[0] == names and orders[1][0] == names[1] and orders[2][0] == names[2]
    assert all(sorted(o) == sorted(names) for o in orders)
    assert parse_variant("x:ENFORCER_FENCING=off") == ("x", {"ENFORCER_FENCING": "off"})


def _runs() -> list[dict]:
    runs = []
    for rep, (off, on) in enumerate([(10.0, 20.0), (30.0, 25.0), (20.0, 15.0)]):
        for name, p50 in (("off", off), ("on", on)):
            latency = {"p50_ms": p50, "p99_ms": 2 * p50, "p999_ms": 3 * p50, "max_ms": 4 * p50}
            runs.append({"kind": "latency", "variant": name, "rep": rep, "rate": 2000,
                         "figures": latency})  # fmt: skip
            runs.append({"kind": "throughput", "variant": name, "rep": rep, "rate": None,
                         "figures": {"per_second": 100 * p50, "cpu_seconds_per_1000": 0.02,
                                     "main_thread_busy": 0.5}})  # fmt: skip
    runs.append({"kind": "throughput", "variant": "on", "rep": 3, "error": "worker exited"})
    return runs


def test_medians_ranges_and_failed_runs_reach_the_table(tmp_path: Path) -> None:
    summary = summarise(_runs(), ["off", "on"])
    assert summary["on"]["latency_2000"]["p50_ms"] == {"median": 20.0, "min": 15.0, "max": 25.0}
    assert summary["off"]["throughput"]["per_second"]["median"] == 2000.0
    assert summary["on"]["failed_runs"] == 1
    result = {
        "file": "commit-interval-x.json",
        "plan": {"rates": [2000], "latency_seconds": 20, "warmup_seconds": 5, "posts": 1000},
        "variants": {
            "off": {"ENFORCER_FENCING": "off"},
            "on": {"ENFORCER_FENCING": "on", "ENFORCER_TXN_COMMIT_INTERVAL": "0.1"},
        },
        "summary": summary,
        "runs": _runs(),
        "machine": {"cores": 2},
        "versions": {"kafka": "Apache Kafka 4.1.1"},
        "load_average_1min": {"min": 1.0, "max": 9.0},
    }
    text = table(result)
    assert "| fencing off | 20 (10-30) / 40 (20-60) / 60 (30-90) |" in text
    assert "| on, 0.1 s |" in text and "Failed runs (not counted): on 1" in text
    doc, other = tmp_path / "doc.md", tmp_path / "other.md"
    doc.write_text(f"head\n{BEGIN}\nold\n{END}\ntail\n")
    other.write_text("no markers\n")
    assert write(text, (doc, other)) == [doc]
    assert doc.read_text() == f"head\n{BEGIN}\n{text}{END}\ntail\n"
    assert write(text, (doc,), markers=(BEGIN_ALL, END_ALL)) == []  # its own markers only
    assert other.read_text() == "no markers\n"
