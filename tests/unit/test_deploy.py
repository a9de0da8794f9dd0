"""The deploy/ files against the code: every metric the Grafana dashboard and the
Prometheus rules use is one the worker serves (or ``enforcer verify --follow``)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from types import SimpleNamespace

import yaml
from prometheus_client.parser import text_string_to_metric_families

from streams.gate.metrics import Metrics
from streams.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

# Served by `enforcer verify --follow` (issue 18): streams/verify/checker.py's render_metrics.
# The alert EnforcerVerifyViolation and the dashboard's "Verify violations" panel read
# enforcer_verify_violations{check}.
VERIFY_METRICS = {"enforcer_verify_violations": {"check"}}


def served_by_verify() -> dict[str, set[str]]:
    """Each sample name `enforcer verify --follow` serves -> its label names."""
    from streams.verify.checker import render_metrics

    result = SimpleNamespace(violations=[], counts={"posts": 1}, latencies=[])
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(render_metrics(result, 1)):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


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
    by_verify = served_by_verify()
    for name, labels in VERIFY_METRICS.items():
        assert labels <= by_verify[name], name
    serves = {**served(), **by_verify}
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
        "enforcer_verify_violations",
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


# --- containers and Kubernetes (deploy/docker, deploy/k8s): no container engine runs
# here, so these check what can be checked without one: the files parse, and their
# ports, paths, probes, environment and arguments agree with the CLI and each other.

ROOT = DEPLOY.parent
SETTINGS_SOURCE = (ROOT / "streams/settings.py").read_text()
ENV_READ = set(re.findall(r'"((?:ENFORCER|KAFKA)_[A-Z0-9_]+)"', SETTINGS_SOURCE))


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/docker/Dockerfile, continuations joined."""
    text = (DEPLOY / "docker/Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def docker_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in dockerfile():
        if word == "ENV":
            env.update(pair.split("=", 1) for pair in rest.split())
    return env


def k8s() -> dict[str, dict]:
    """kind -> the (first) document of that kind in deploy/k8s/."""
    docs: dict[str, dict] = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs.setdefault(doc["kind"], doc)
    return docs


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker/compose.yaml").read_text())


def settings_under(env: dict[str, str], argv: list[str], monkeypatch) -> Settings:
    """What the CLI makes of ``argv`` under exactly the environment ``env``."""
    from streams.cli.main import build_parser
    from streams.settings import from_args

    for name in ENV_READ:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return from_args(build_parser().parse_args(argv))


def test_every_yaml_and_json_file_of_deploy_parses():
    paths = [*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")]
    assert len(paths) >= 8
    for path in paths:
        assert list(yaml.safe_load_all(path.read_text())), path
    for path in DEPLOY.rglob("*.json"):
        json.loads(path.read_text())


def test_the_dockerfile_is_multi_stage_non_root_and_builds_the_fast_path():
    steps = dockerfile()
    assert sum(1 for word, _ in steps if word == "FROM") == 2
    assert ("ENTRYPOINT", '["enforcer"]') in steps
    assert ("CMD", '["worker"]') in steps
    users = [rest for word, rest in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    runs = [rest for word, rest in steps if word == "RUN"]
    assert any("ENFORCER_REQUIRE_NATIVE=1 sh deploy/build.sh" in r for r in runs)
    copied = " ".join(rest for word, rest in steps if word == "COPY")
    needed_files = ("pyproject.toml", "constraints.txt", "setup.py", "streams", "schemas")
    for needed in (*needed_files, "deploy/build.sh"):
        assert needed in copied
        assert (ROOT / needed).exists()


def test_the_image_and_make_setup_install_through_the_same_script():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("$(STAMP): ", 1)[1].split("\n\n", 1)[0]
    assert "deploy/build.sh" in recipe.splitlines()[0]  # a prerequisite: a change rebuilds
    assert 'sh deploy/build.sh $(PYTHON) $(VENV) -e ".[dev]"' in recipe
    assert "constraints.txt" in recipe.splitlines()[0]  # a new pin rebuilds too
    assert "make test" in (ROOT / ".ci/run").read_text()  # and CI runs make setup's recipe
    assert "test: setup" in makefile


def test_the_image_environment_is_read_by_the_cli(monkeypatch):
    env = docker_env()
    assert {k for k in env if k.startswith(("ENFORCER_", "KAFKA_"))} <= ENV_READ
    s = settings_under(env, ["worker"], monkeypatch)
    assert s.web_host == "0.0.0.0"  # the probe and the scrape come from outside
    port = s.web_port
    assert ("EXPOSE", str(port)) in dockerfile()
    assert str(s.data_dir) == env["ENFORCER_DATA_DIR"]
    assert ("VOLUME", f'["{env["ENFORCER_DATA_DIR"]}"]') in dockerfile()
    health = next(rest for word, rest in dockerfile() if word == "HEALTHCHECK")
    assert f"127.0.0.1:{port}/ready" in health


def test_the_statefulset_agrees_with_the_cli_and_the_image(monkeypatch):
    from streams.cli.main import build_parser

    docs = k8s()
    sts = docs["StatefulSet"]
    pod = sts["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    # the pod's own name (the downward API) serves only to build the advertised URL
    pod_name = {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    assert container["env"][0] == pod_name
    env = {
        e["name"]: e["value"].replace("$(POD_NAME)", "objection-enforcer-0")
        for e in container["env"][1:]
    }
    assert set(env) <= ENV_READ, set(env) - ENV_READ
    s = settings_under(env, container["args"], monkeypatch)
    # the consent lookup reaches each worker by its name under the headless service
    assert s.lookup_url == "http://objection-enforcer-0.objection-enforcer:6066"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == s.web_port and s.web_host == "0.0.0.0"
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == "/ready" and probe["port"] == "http"
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == s.web_port
    assert annotations["prometheus.io/path"] == "/metrics"
    app_source = (ROOT / "streams/runtime/app.py").read_text()
    assert '@app.page("/ready")' in app_source and '@app.page("/metrics")' in app_source
    # a volume per pod for the RocksDB data dir, where the worker keeps it
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == str(s.data_dir)
    # the image's user, and the resources of the sizing rule
    uid = next(rest for word, rest in reversed(dockerfile()) if word == "USER").split(":")[0]
    assert pod["spec"]["securityContext"]["runAsUser"] == int(uid)
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]
    service = docs["Service"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["metadata"]["name"] == "objection-enforcer"  # in the advertised URL
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    labels = pod["metadata"]["labels"]
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    job = docs["Job"]["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"] for e in job["env"]} <= ENV_READ
    build_parser().parse_args(job["args"])  # `enforcer topics create`
    assert job["image"] == container["image"]
    kustomized = yaml.safe_load((DEPLOY / "k8s/kustomization.yaml").read_text())["resources"]
    assert sorted(kustomized) == sorted(p.name for p in (DEPLOY / "k8s").glob("*.yaml")
                                        if p.name != "kustomization.yaml")  # fmt: skip


def test_the_compose_file_agrees_with_the_cli_prometheus_and_grafana(monkeypatch):
    from streams.cli.main import build_parser

    services = compose()["services"]
    assert {"kafka", "enforcer", "prometheus", "grafana"} <= set(services)
    worker = services["enforcer"]
    env = {k: str(v) for k, v in worker["environment"].items()}
    assert set(env) <= ENV_READ, set(env) - ENV_READ
    s = settings_under(env, worker["command"], monkeypatch)
    assert s.bootstrap_servers == "kafka:9092" and s.web_host == "0.0.0.0"
    assert [p.rsplit(":", 1)[1] for p in worker["ports"]] == [str(s.web_port)]
    assert worker["volumes"][0].split(":")[1] == str(s.data_dir)
    build_parser().parse_args(services["topics"]["command"])
    assert worker["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert (DEPLOY / "docker" / worker["build"]["context"] / "deploy/docker/Dockerfile").exists()
    # Prometheus scrapes the worker's service and port, and reads the rules mounted
    scrape = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "enforcer")
    assert job["static_configs"][0]["targets"] == [f"enforcer:{s.web_port}"]
    mounts = {}
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source, target = volume.split(":")[:2]
            assert (DEPLOY / "docker" / source).exists(), source
            mounts[target] = source
    assert scrape["rule_files"][0] in mounts
    provider = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/enforcer.yml").read_text()
    )["providers"][0]
    assert provider["options"]["path"] in mounts


def _pins(lines: list[str]) -> dict[str, str]:
    """name (normalised, without extras) -> version of each ``name==version``."""
    pins = {}
    for line in lines:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)(\[[^]]*\])?==([^\s;#]+)\s*", line)
        if match:
            pins[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[3]
    return pins


def test_a_fresh_install_is_the_tested_one():
    """Faust, mode and aiokafka pinned exactly in pyproject.toml (the worker relies on
    their internals), every package pinned by constraints.txt, which deploy/build.sh
    (make setup, CI, the image) always installs with, and the two agree."""
    root = DEPLOY.parent
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    exact = _pins(deps)
    assert set(exact) >= {"faust-streaming", "mode-streaming", "aiokafka"}
    lines = [
        line
        for line in (root / "constraints.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    constraints = _pins(lines)
    assert len(constraints) == len(lines)  # every line an exact pin
    assert {name: constraints.get(name) for name in exact} == exact
    build = (DEPLOY / "build.sh").read_text()
    assert '-m pip install -q -c "$(dirname "$0")/../constraints.txt" "$@"' in build
