"""Alert rules and the Grafana dashboard use only metrics the code exports, and a real Prometheus accepts them."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import recstream.metrics  # noqa: F401 - registers every metric
from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
PROMETHEUS = ROOT / "deploy/prometheus/prometheus.yml"
ALERT_TESTS = ROOT / "deploy/prometheus/alerts.test.yml"
DASHBOARD = ROOT / "deploy/grafana/dashboards/recstream.json"
NAME = re.compile(r"\b(?:recstream|process)_[a-z0-9_]+")  # ours, and prometheus_client's of a process


def exported_names() -> set[str]:
    """Every sample name the code can export (labelled metrics included before first use), and the ``process_*``
    ones of prometheus_client (each process's; with ``--workers``, ``recstream.metrics.ApiProcessesCollector``)."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        if not family.name.startswith(("recstream_", "process_")):
            continue
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
        else:
            names.add(family.name)
    return names


def _expressions() -> dict[str, list[str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    alerts = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return {"alerts.yml": alerts, "recstream.json": panels}


def test_every_metric_in_alerts_and_dashboard_is_exported() -> None:
    exported = exported_names()
    assert "recstream_events_consumed_total" in exported and "recstream_event_to_learned_seconds_bucket" in exported
    assert "process_resident_memory_bytes" in exported and "process_cpu_seconds_total" in exported
    for source, expressions in _expressions().items():
        used = {name for expr in expressions for name in NAME.findall(expr)}
        assert used, f"{source} uses no recstream metric"
        missing = used - exported
        assert not missing, f"{source} uses metrics the code does not export: {sorted(missing)}"


def test_alerts_cover_the_runbook_cases() -> None:
    names = {rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]}
    for wanted in (
        "NoEvents",
        "ConsumerLagGrowing",
        "QualityDrop",
        "ModelGuardPaused",
        "CheckpointStale",
        "WorkerStalled",
        "WorkerDown",
        "ApiDown",
        "RejectionSpike",
        "QuarantineSpike",
        "ApiErrorRatio",
        "RecommendationLatencyP99",
    ):
        assert f"Recstream{wanted}" in names


def _promtool() -> str:
    return require_tool("promtool", "prometheus")


def test_a_real_prometheus_accepts_the_rules_and_the_config() -> None:
    promtool = _promtool()
    rules = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    n_rules = sum(len(group["rules"]) for group in yaml.safe_load(ALERTS.read_text())["groups"])
    assert f"SUCCESS: {n_rules} rules found" in rules.stdout
    config = subprocess.run([promtool, "check", "config", str(PROMETHEUS)], capture_output=True, text=True, timeout=60)
    assert config.returncode == 0, config.stdout + config.stderr


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    """alerts.test.yml: tested alerts fire when they should (labels, annotations, `for`) and stay quiet otherwise."""
    promtool = _promtool()
    cases = [case for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    tested = {case["alertname"] for case in cases}
    fires = {case["alertname"] for case in cases if case.get("exp_alerts")}
    assert len(fires) >= 3, f"at least three alerts need a firing case: {sorted(fires)}"
    for name in fires:
        assert any(c["alertname"] == name and not c.get("exp_alerts") for c in cases), f"{name}: no non-firing case"
    names = {rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]}
    assert tested <= names, f"tests for unknown alerts: {sorted(tested - names)}"
    result = subprocess.run(
        [promtool, "test", "rules", str(ALERT_TESTS)], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_grafana_is_provisioned_with_the_dashboard_and_prometheus() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    grafana = compose["services"]["grafana"]
    for mount in grafana["volumes"]:
        assert (ROOT / mount.split(":")[0]).exists(), mount
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    dashboard = json.loads(DASHBOARD.read_text())
    assert all(panel["datasource"]["uid"] == uid for panel in dashboard["panels"])
    prometheus_mounts = compose["services"]["prometheus"]["volumes"]
    assert any(m.startswith("./deploy/prometheus/alerts.yml:") for m in prometheus_mounts)
