"""The pure parts of the benchmark (bench/stats.py, bench/report.py, bench/capacity.py):
statistics, the order of runs, the equal-outputs comparison, the latency search, the
README table and the capacity document."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench import report, stats
from bench.ceiling_pipeline import sized, spread
from bench.stats import Comparison, Outputs


def test_summary_is_median_min_max() -> None:
    assert stats.summarize([3.0, 1.0, 2.0, 10.0]) == {
        "n": 4,
        "median": 2.5,
        "min": 1.0,
        "max": 10.0,
    }
    assert stats.summarize([])["n"] == 0


def test_quantile_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert stats.quantile(values, 0.5) == 50
    assert stats.quantile(values, 0.99) == 99
    assert stats.quantile(values, 0.999) == 100
    assert math.isnan(stats.quantile([], 0.5))


def test_never_decided_posts_count_as_infinitely_late() -> None:
    figures = stats.latency_figures([10.0] * 98, sent=100)
    assert figures["never_decided"] == 2
    assert figures["p50_ms"] == 10.0
    assert figures["p99_ms"] == math.inf
    assert stats.latency_figures([10.0] * 100, sent=100)["p99_ms"] == 10.0


def test_order_interleaves_and_rotates_the_first_system() -> None:
    runs = stats.order(["E", "S", "Q"], 4)
    assert [s for _, s in runs] == list("ESQSQEQESESQ")
    assert [r for r, _ in runs] == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3


def test_final_keys_last_value_wins_and_tombstones_remove() -> None:
    records = [(b"a", b"1"), (b"b", b"1"), (b"a", None), (b"c", b"1"), (b"c", None), (b"c", b"2")]
    assert stats.final_keys(records) == {b"b", b"c"}


def _outputs(label: str, **decisions: tuple[tuple[str, str], ...]) -> Outputs:
    return Outputs(dict(decisions), frozenset({b"p1"}), label)


PUB = (("PUBLISHED", "ELIGIBLE"),)


def test_equal_outputs_pass() -> None:
    c = Comparison()
    c.add(_outputs("enforcer#0", p1=PUB, p2=(("BLOCKED", "OBJECTED"),)))
    assert c.add(_outputs("quix#0", p1=PUB, p2=(("BLOCKED", "OBJECTED"),))) == []
    assert c.as_dict()["equal"] is True


def test_a_different_outcome_or_reason_is_named() -> None:
    c = Comparison()
    c.add(_outputs("enforcer#0", p1=PUB, p2=(("BLOCKED", "OBJECTED"),)))
    found = c.add(_outputs("streams#0", p1=PUB, p2=(("BLOCKED", "MINOR"),)))
    assert len(found) == 1 and "p2" in found[0] and "BLOCKED/MINOR" in found[0]
    assert "streams#0 vs enforcer#0" in found[0]
    assert c.as_dict()["equal"] is False


def test_missing_posts_and_a_retraction_are_differences() -> None:
    ref = _outputs("e", p1=PUB, p2=PUB)
    assert any("without a decision" in d for d in stats.compare(ref, _outputs("x", p1=PUB)))
    retracted = _outputs("x", p1=PUB, p2=(*PUB, ("RETRACTED", "OBJECTED")))
    assert any(
        "PUBLISHED/ELIGIBLE then RETRACTED/OBJECTED" in d for d in stats.compare(ref, retracted)
    )


def test_a_different_final_training_ingest_is_named() -> None:
    ref = _outputs("e", p1=PUB)
    other = Outputs(ref.decisions, frozenset({b"p1", b"p9"}), "x")
    [diff] = stats.compare(ref, other)
    assert "training-ingest" in diff and "p9" in diff


def test_redelivered_decisions_collapse() -> None:
    assert stats.collapse([("P", "E"), ("P", "E"), ("R", "O")]) == (("P", "E"), ("R", "O"))


@pytest.mark.parametrize(
    ("p99", "expected"),
    [
        ({2000: 40.0, 10000: 60.0}, 20000),  # both pass: double
        ({2000: 40.0, 10000: 600.0}, 6000),  # bisect the gap
        ({2000: 400.0, 10000: 600.0}, 1000),  # nothing passes: halve
        ({2000: 40.0, 2200: 600.0}, None),  # gap within 15%
        ({}, None),
    ],
)
def test_latency_search(p99: dict[int, float], expected: int | None) -> None:
    assert stats.next_rate(p99) == expected


def test_highest_passing_bracket() -> None:
    assert stats.highest_passing({2000: 40.0, 6000: 80.0, 10000: 300.0}) == {
        "highest_under": 6000,
        "lowest_over": 10000,
    }


def test_ceiling_spreads_exactly_the_enforcers_count() -> None:
    assert sum(spread(k, 331, 1000) for k in range(1, 1001)) == 331
    assert sum(spread(k, 2500, 1000) for k in range(1, 1001)) == 2500
    assert sized(b"abc", 7) == b"abcabca" and sized(b"abcdef", 2) == b"ab"


def _result() -> dict:
    runs = []
    for rep in range(3):
        for system, rate, cpu in (
            ("enforcer", 30000, 0.02),
            ("streams", 20000, 0.05),
            ("quix", 9000, 0.07),
        ):
            runs.append(
                {
                    "system": system,
                    "rep": rep,
                    "posts_per_second": rate + rep * 100,
                    "worker_cpu_seconds_per_1000": cpu,
                    "broker_cpu_seconds_per_1000": 0.01,
                    "total_cpu_seconds_per_1000": cpu + 0.01,
                    "peak_rss_mb": 200.0,
                }
            )
    summ = stats.summary(runs)
    return {
        "started": "20261202T140000Z",
        "git": {"commit": "abcdef1234", "uncommitted_in_measured_code": ""},
        "config": {
            "posts": 1000,
            "users": 100,
            "objector_share": 0.1,
            "latency_rates": [2000, 10000],
            "latency_seconds": 20.0,
            "search_seconds": 15.0,
            "broker_warmup_seconds": 30.0,
        },
        "machine": {"cores": 2, "cpu_model": "test"},
        "versions": {"kafka": "Apache Kafka 4.1.1"},
        "data": {"post": 1000, "objection": 10},
        "runs": runs,
        "summary": summ,
        "ratios": stats.ratios(summ),
        "equal_outputs": {
            "equal": True,
            "distinct_posts_decided": 1000,
            "training_keys": 300,
            "runs_compared": 9,
            "reference": "enforcer#0",
            "differences": [],
        },
        "latency": {
            "enforcer": {
                "points": [
                    {
                        "rate": 2000,
                        "p50_ms": 20.0,
                        "p99_ms": 45.0,
                        "p999_ms": 70.0,
                        "never_decided": 0,
                    },
                    {
                        "rate": 10000,
                        "p50_ms": 30.0,
                        "p99_ms": 80.0,
                        "p999_ms": math.inf,
                        "never_decided": 3,
                    },
                ],
                "search": {"highest_under": 10000, "lowest_over": None},
            }
        },
    }


def test_ratios_are_from_medians_per_cpu_and_wall_second() -> None:
    r = _result()["ratios"]
    assert r["streams"]["per_worker_cpu_second"] == pytest.approx(2.5)
    assert r["streams"]["per_wall_second"] == pytest.approx(30100 / 20100)
    assert r["quix"]["per_cpu_second_with_broker"] == pytest.approx(0.08 / 0.03)


def test_report_table_has_every_figure_from_the_file(tmp_path: Path) -> None:
    result = _result()
    text = report.table(result, "matrix-x.json")
    assert "`matrix-x.json` (commit `abcdef1`" in text
    assert "| Kafka Streams, at-least-once | 20,100 (20,000-20,200) | 0.050 (0.050-0.050)" in text
    assert "**2.50x** per worker CPU-second" in text
    assert "missed by 30 ms" in text  # p99 80 ms against 50 ms at 10,000/s
    assert "3 never decided" in text and "never" in text
    assert "at least 3 times the Quix peer per CPU-second: **3.50x**, met" in text
    per = [{"second": i, "p99_ms": 500.0 if i < 2 else 20.0 + i} for i in range(10)]
    result["latency"]["enforcer"]["points"][0]["per_second"] = per
    notes = report.startup_notes(result["latency"])
    assert notes == [
        "enforcer (fencing on, as shipped) at 2,000/s: worst second's p99 500 ms in the "
        "first 5 s, 29 ms after (median second 27 ms)"
    ]
    assert notes[0] in report.table(result, "matrix-x.json")
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{report.BEGIN}\nold\n{report.END}\nb\n")
    assert report.write_between(readme, text)
    content = readme.read_text()
    assert "old" not in content and content.startswith("a\n") and content.endswith("b\n")
    assert "20,100" in content
    report.chart(result, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").stat().st_size > 10_000


def test_capacity_document_from_a_results_file(tmp_path: Path) -> None:
    from bench import capacity

    result = _result()
    for run in result["runs"]:
        if run["system"] == "enforcer":
            run["thread_cpu_seconds_per_1000"] = {"main": 0.01}
    result["runs"][0]["records_written"] = {
        "records_per_post": 2.7,
        "topics": {
            "x-app-user-events-repartition": {
                "records": 1010,
                "value_bytes": 170_000,
                "key_bytes": 0,
            },
            "x-decisions": {"records": 1000, "value_bytes": 100_000, "key_bytes": 10_000},
            "x-training": {"records": 300, "value_bytes": 60_000, "key_bytes": 3_000},
            "x-app-consent-changelog": {"records": 10, "value_bytes": 900, "key_bytes": 100},
            "x-app-ledger-changelog": {"records": 300, "value_bytes": 3_000, "key_bytes": 6_000},
        },
    }
    path = tmp_path / "matrix-x.json"
    path.write_text(__import__("json").dumps(result))
    m = capacity.measured(result, None)
    assert m["worker_cpu_us_per_post"] == pytest.approx(20.0)
    assert m["main_thread_cpu_us_per_post"] == pytest.approx(10.0)
    assert m["ledger_entry_bytes"] == pytest.approx(30.0)
    assert m["published_share"] == pytest.approx(0.3)
    p = capacity.plan({**m, "restore_records_per_s": 3000.0}, 1_000_000)
    # 1,000,000 posts/s at 10 us of main thread per post, half used: 50,000 per worker
    assert p["workers_by_cpu"] == 20
    assert p["ledger_entries"] == pytest.approx(1e6 * 0.3 * 365 * 86400)
    assert p["workers"] >= p["workers_by_cpu"] and p["partitions"] >= 4 * p["workers"]
    text = capacity.document(path, None)
    assert "matrix-x.json" in text and "## Where it breaks first" in text
    assert all(f"`{name}`" in text for name in capacity.ASSUMPTIONS)
