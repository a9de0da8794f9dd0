"""The deploy/ files against the code: every metric the Grafana dashboard and the
Prometheus rules use is one the worker serves (or ``enforcer verify --follow``)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import yaml
from prometheus_client.parser import text_string_to_metric_families

from streams.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

# Served by `enforcer verify --follow` (issue 18, streams/verify.py, written separately):
# the name and label agreed for it. The alert EnforcerVerifyViolation and the dashboard's
# "Verify violations" panel read it.
VERIFY_METRICS = {"enforcer_verify_violations_total": {"kind"}}

# labels Prometheus adds to every scraped series
TARGET_LABELS = {"instance", "job", "pod", "namespace", "container", "service"}

_FUNCTIONS_AND_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan",
    # aggregation operators, which may be followed by a grouping before their "("
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}  # fmt: skip


def served() -> dict[str, set[str]]:
    """Each sample name the worker's /metrics serves -> its label names."""
    m = Metrics()
    m.decisions[("published", "eligible")] += 1
    m.dlq["posts"] += 1
    m.inputs["post"] += 1
    m.objections["OBJECT"] += 1
    m.skipped_records["posts"] += 1
    m.stage = SimpleNamespace(
        inputs=dict, dlq=dict, skipped=dict, lags=lambda: [("rekey", "posts", 0, 1)]
    )
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(m.render(True, [("gate", "t", 0, 1)])):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
        if family.type == "histogram":  # every family's series, whatever was observed
            for suffix in ("_bucket", "_sum", "_count"):
                out.setdefault(family.name + suffix, set())
            out[family.name + "_bucket"].add("le")
    return out


def metrics_of(expr: str) -> dict[str, set[str]]:
    """The metric names a PromQL expression selects, and the label names its
    matchers use, per metric."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\$\{?\w+\}?", "1m", expr)  # Grafana variables
    found: dict[str, set[str]] = {}
    for match in re.finditer(r"(?<![\w:.])([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?", expr):
        name, matchers = match.group(1), match.group(2) or ""
        rest = expr[match.end() :].lstrip()
        before = expr[: match.start()].rstrip()
        if name in _FUNCTIONS_AND_KEYWORDS or rest.startswith("("):
            continue  # a function or a keyword
        if re.search(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*$", before):
            continue  # a label name in a grouping list
        found.setdefault(name, set()).update(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
    return found


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/enforcer.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return exprs


def rule_exprs() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def test_the_extractor_finds_metrics_and_only_metrics():
    expr = (
        'histogram_quantile(0.99, sum by (le, kind) (rate(a_bucket{x="1", y=~"$v"}'
        "[$__rate_interval]))) > 0.5 * sum without (z) (b offset 5m) and on (i) c"
    )
    assert metrics_of(expr) == {"a_bucket": {"x", "y"}, "b": set(), "c": set()}
    assert metrics_of("label_values(enforcer_ready, instance)") == {
        "enforcer_ready": set(),
        "instance": set(),  # a label_values() argument: dropped by the caller
    }


def test_every_metric_the_dashboard_and_the_rules_use_is_served():
    serves = {**served(), **VERIFY_METRICS}
    exprs = dashboard_exprs() + rule_exprs()
    assert len(exprs) > 10
    used: dict[str, set[str]] = {}
    for expr in exprs:
        if expr.startswith("label_values("):
            expr = expr.split(",")[0] + ")"
        for name, labels in metrics_of(expr).items():
            used.setdefault(name, set()).update(labels)
    unknown = sorted(set(used) - set(serves))
    assert not unknown, f"not served by the worker or verify --follow: {unknown}"
    for name, labels in used.items():
        assert labels <= serves[name] | TARGET_LABELS, (name, labels - serves[name])
    # what the issue asks the dashboard and the rules to show
    for needed in (
        "enforcer_decisions_total",
        "enforcer_inputs_total",
        "enforcer_consumer_lag_records",
        "enforcer_dlq_total",
        "enforcer_retraction_latency_seconds_bucket",
        "enforcer_ready",
        "enforcer_verify_violations_total",
    ):
        assert needed in used, needed


def test_the_rules_and_the_provisioning_parse():
    rules = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {"EnforcerNotReady", "EnforcerLagGrowing", "EnforcerDeadLetters"} <= names
    assert "EnforcerVerifyViolation" in names
    prometheus = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yml"]
    for path in (DEPLOY / "grafana/provisioning").rglob("*.yml"):
        assert yaml.safe_load(path.read_text())["apiVersion"] == 1
