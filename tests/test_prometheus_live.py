"""A real Prometheus server scrapes a real worker and API and loads the shipped alert rules.

Prometheus runs as a local process (Debian's ``prometheus`` package; CI installs it) on 127.0.0.1 with a
temporary config and data directory, and is stopped by its PID whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from recstream import local_services
from tests.clock import iso
from tests.conftest import api_client, require_tool, wait_for
from tests.kafka_io import produce_events

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
LOOPBACK = "127.0.0.1"


def _prometheus_binary() -> str:
    return require_tool("prometheus", "prometheus")


@contextlib.contextmanager
def run_prometheus(workdir: Path, targets: dict[str, str]) -> Iterator[httpx.Client]:
    """Start Prometheus scraping ``job -> host:port`` every second with a copy of alerts.yml; stop it by PID."""
    binary = _prometheus_binary()
    shutil.copy(ALERTS, workdir / "alerts.yml")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [
            {"job_name": job, "metrics_path": "/metrics", "static_configs": [{"targets": [target]}]}
            for job, target in targets.items()
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = local_services.free_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={LOOPBACK}:{port}",
            ],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    client = httpx.Client(base_url=f"http://{LOOPBACK}:{port}", timeout=5)
    try:

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"prometheus exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            return client.get("/-/ready").status_code == 200

        try:
            wait_for(ready, 30, "prometheus to be ready", interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- prometheus.log ---\n{log_path.read_text()[-3000:]}") from None
        yield client
    finally:
        client.close()
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def query(prometheus: httpx.Client, promql: str) -> list[dict[str, Any]]:
    """The instant vector ``promql`` evaluates to now (empty when no series matches)."""
    body = prometheus.get("/api/v1/query", params={"query": promql}).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_scrapes_worker_and_api_and_loads_the_alert_rules(
    service_env: dict[str, str], processes: list[local_services.LocalService], tmp_path: Path
) -> None:
    _prometheus_binary()  # skip (or fail in CI) before starting anything
    metrics_port = local_services.free_port()
    env = {**service_env, "RECSTREAM_WORKER_METRICS_PORT": str(metrics_port)}
    worker = local_services.start_worker(env)
    processes.append(worker)
    api = local_services.start_api(env)
    processes.append(api)
    wait_for(lambda: httpx.get(worker.url).status_code == 200, 30, "the worker's metrics endpoint")

    events = [
        {"event_id": f"p{i}", "user_id": f"u{i % 5}", "item_id": f"v{i % 9}", "type": "like", "ts": iso(i)}
        for i in range(40)
    ]
    produce_events(env["RECSTREAM_BROKER_URL"], env["RECSTREAM_TOPIC_EVENTS"], events)
    with api_client(api) as client:
        client.get("/v1/users/u1/recommendations")  # 200 or 503 (no model yet): either way a counted request

    targets = {"recstream-worker": f"{LOOPBACK}:{metrics_port}", "recstream-api": f"{LOOPBACK}:{api.port}"}
    with run_prometheus(tmp_path, targets) as prometheus:
        for job in targets:
            wait_for(lambda job=job: query(prometheus, f'up{{job="{job}"}} == 1'), 30, f"{job} to be up", interval=0.5)

        learned = wait_for(
            lambda: query(prometheus, 'recstream_events_learned_total{job="recstream-worker"} > 0'),
            60,
            "recstream_events_learned_total > 0 from the worker job",
            interval=0.5,
        )
        assert isinstance(learned, list) and float(learned[0]["value"][1]) > 0

        requests = wait_for(
            lambda: query(
                prometheus,
                'sum by (route) (recstream_http_request_duration_seconds_count{job="recstream-api"}) > 0',
            ),
            30,
            "recstream_http_request_duration_seconds_count from the API job",
            interval=0.5,
        )
        assert isinstance(requests, list)
        routes = {sample["metric"]["route"] for sample in requests}
        assert "/v1/users/{user_id}/recommendations" in routes, routes

        def rules_loaded() -> list[dict[str, Any]] | None:
            body = prometheus.get("/api/v1/rules").json()
            assert body["status"] == "success", body
            groups = [g for g in body["data"]["groups"] if g["name"] == "recstream"]
            if not groups or not all(rule["health"] == "ok" for rule in groups[0]["rules"]):
                return None  # not evaluated yet ("unknown")
            return groups[0]["rules"]

        rules = wait_for(rules_loaded, 30, "the recstream rule group to load and evaluate", interval=0.5)
        assert isinstance(rules, list)
        expected = {rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]}
        assert len(rules) == len(expected) and {rule["name"] for rule in rules} == expected
        assert all(rule["type"] == "alerting" and not rule.get("lastError") for rule in rules), rules
