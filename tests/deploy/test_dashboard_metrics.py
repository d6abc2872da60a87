"""Every metric the Grafana dashboard and the alert rules query is one a service exports.

The exported names come from the services' own metrics classes (instantiated, then their
registries listed), so a renamed metric fails here rather than as an empty panel."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from gateway.metrics import GatewayMetrics
from inference_service.metrics import Metrics as InferenceMetrics
from trainer_service.job_store import JobStore
from trainer_service.metrics import TrainerMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS_OWN = {"up"}  # written by Prometheus for every target
SUFFIXES = {
    "counter": ["_total", "_created"],
    "histogram": ["_bucket", "_sum", "_count", "_created"],
    "gauge": [""],
    "summary": ["", "_sum", "_count", "_created"],
}


def exported(registry) -> set[str]:
    """Sample names a scrape can return, whether or not a labelled child exists yet."""
    return {
        family.name + suffix
        for family in registry.collect()
        for suffix in SUFFIXES.get(family.type, [""])
    }


@pytest.fixture(scope="module")
def registries(tmp_path_factory) -> list:
    store = JobStore(tmp_path_factory.mktemp("trainer") / "jobs.db")
    gateway, trainer = GatewayMetrics(max_adapter_values=4), TrainerMetrics(store)
    # A sample in each labelled metric, so the exposition shows them all.
    gateway.observe_request("/generate", "POST", 200, 0.2)
    gateway.observe_generation("emails@1", 12, 30, first_token_s=0.05, total_s=0.5)
    trainer.job_finished("ftjob-1", "failed")
    return [gateway.registry, InferenceMetrics().registry, trainer.registry]


@pytest.fixture(scope="module")
def exported_names(registries) -> set[str]:
    return set().union(*(exported(r) for r in registries))


def test_the_exposition_passes_promtool_lint(registries):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (make tools)")
    for registry in registries:
        exposition = generate_latest(registry).decode()
        result = subprocess.run(
            [promtool, "check", "metrics"],
            input=exposition,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def queried(expressions: list[str]) -> set[str]:
    names = set()
    for expr in expressions:
        names |= set(re.findall(r"\btuneyard_[a-z0-9_]+", expr))
        names |= {n for n in PROMETHEUS_OWN if re.search(rf"\b{n}\{{", expr)}
    return names


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "tuneyard.json").read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]


def rule_expressions() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def autoscaler_expressions() -> list[str]:
    docs = yaml.safe_load_all((DEPLOY / "k8s" / "base" / "inference.yaml").read_text())
    return [
        t["metadata"]["query"]
        for d in docs
        if d and d["kind"] == "ScaledObject"
        for t in d["spec"]["triggers"]
    ]


def test_the_services_export_what_the_dashboard_needs(exported_names):
    assert {
        "tuneyard_gateway_requests_total",
        "tuneyard_inference_queue_size",
        "tuneyard_trainer_jobs",
    } <= exported_names


@pytest.mark.parametrize(
    "source",
    [dashboard_expressions, rule_expressions, autoscaler_expressions],
    ids=lambda f: f.__name__,
)
def test_every_queried_metric_is_exported(source, exported_names):
    expressions = source()
    assert expressions
    names = queried(expressions)
    assert names, "no metric found in the queries"
    missing = names - exported_names - PROMETHEUS_OWN
    assert not missing, f"queried but exported by no service: {sorted(missing)}"


def test_a_misspelt_metric_would_be_caught(exported_names):
    assert queried(["rate(tuneyard_gateway_request_total[5m])"]) - exported_names
