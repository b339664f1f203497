"""The README's settings table and compose.yaml agree with the code."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from recstream.settings import Settings
from recstream.settings_table import markdown_table

ROOT = Path(__file__).resolve().parent.parent


def test_readme_settings_table_is_generated_from_the_settings_class() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- settings-table:start -->")[1].split("<!-- settings-table:end -->")[0].strip()
    assert block == markdown_table(), "run `python -m recstream.settings_table` and paste the table into README.md"


def test_readme_opens_with_the_two_commands_and_they_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.+?)\n```", readme)[:2]
    assert commands == ["scripts/up.sh", "scripts/test.sh"]
    for command in commands:
        path = ROOT / command
        assert path.is_file() and path.stat().st_mode & 0o111, f"{command} must exist and be executable"


def test_compose_runs_the_stack_with_settings_the_code_knows() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {"kafka", "redis", "worker", "api", "prometheus"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "broker,controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    # the broker's log on its volume: the image writes it to /tmp/kraft-combined-logs unless told
    log_dirs = services["kafka"]["environment"]["KAFKA_LOG_DIRS"]
    assert any(volume.split(":")[1] == log_dirs for volume in services["kafka"]["volumes"]), log_dirs
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    known = {f"RECSTREAM_{name.upper()}" for name in Settings.model_fields}
    for name in ("worker", "api"):
        env = services[name]["environment"]
        unknown = {key for key in env if key.startswith("RECSTREAM_")} - known
        assert not unknown, f"{name} sets variables the settings do not read: {unknown}"
        assert env["RECSTREAM_BROKER_URL"] == "kafka://kafka:9092"
        assert env["RECSTREAM_REDIS_URL"].startswith("redis://redis:6379")
        assert "RECSTREAM_HMAC_KEY" in env and "RECSTREAM_API_KEYS" in env
    assert services["worker"]["command"] == ["recstream", "worker"]
    api_command = services["api"]["command"]
    api_port = api_command[api_command.index("--port") + 1]
    assert any(mapping.endswith(f":{api_port}") for mapping in services["api"]["ports"])
    # Prometheus scrapes exactly where the API and the worker export metrics.
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in prometheus["scrape_configs"]}
    assert targets["recstream-api"] == [f"api:{api_port}"]
    worker_env = services["worker"]["environment"]
    assert targets["recstream-worker"] == [f"worker:{worker_env['RECSTREAM_WORKER_METRICS_PORT']}"]
    assert worker_env["RECSTREAM_WORKER_METRICS_HOST"] == "0.0.0.0"
    volume = services["prometheus"]["volumes"][0].split(":")[0]
    assert (ROOT / volume).is_file()


def test_dockerfile_installs_every_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("recstream", "stream", "learner", "store", "api"):
        assert f"COPY {package} ./{package}" in dockerfile


def _tracked_text_files() -> list[Path]:
    skip = {".git", ".venv", "node_modules", "__pycache__", ".ruff_cache", ".pytest_cache"}
    return [
        path
        for path in ROOT.rglob("*")
        if path.suffix in {".md", ".py", ".sh", ".yaml", ".yml", ".toml"}
        and not skip & set(path.relative_to(ROOT).parts)
        and path.is_file()
    ]


def test_links_between_the_docs_resolve() -> None:
    # Markdown links in the README and docs/, and every mention of a docs/*.md file anywhere in the tree.
    broken: list[str] = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if "://" not in target and not target.startswith("mailto:") and not (path.parent / target).exists():
                broken.append(f"{path.relative_to(ROOT)}: ({target})")
    for path in _tracked_text_files():
        for mention in set(re.findall(r"\bdocs/[\w.-]+\.md\b", path.read_text(errors="replace"))):
            if not (ROOT / mention).is_file():
                broken.append(f"{path.relative_to(ROOT)}: {mention}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_the_runbook_names_every_reason_an_event_is_held_for() -> None:
    from stream.quarantine import reason_codes

    runbook = (ROOT / "docs" / "operations.md").read_text()
    missing = [code for code in reason_codes() if f"`{code}`" not in runbook]
    assert not missing, f"docs/operations.md does not name {missing} (Review and replay quarantined events)"
