"""Schemathesis against the running API's OpenAPI schema: no generated request may get a 5xx, and every body
answered for a documented status must be the one the schema documents (``response_schema_conformance``).

A real worker and API run (the ``stack`` fixture, with rate limits raised for this test so 429s do
not hide the endpoints); a few events are published first and the test waits until ``/readyz`` is
200 and a recommendation request is 200, so ``/readyz`` (503 when not ready, by design) and the
recommendation endpoints are legitimately healthy while fuzzed. Every operation is fuzzed,
``/readyz`` included. Requests go to 127.0.0.1 only, with the all-scopes test key, bounded in count
(``--max-examples``) and time (``--max-time`` plus a subprocess timeout). Schemathesis 4 runs
hypothesis without a deadline; its CLI has no deadline option.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.clock import iso
from tests.conftest import TEST_API_KEY, Stack, skip_unless_ci, wait_for
from tests.kafka_io import produce_events

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 15
MAX_TIME = 20


@pytest.fixture
def service_env(service_env: dict[str, str]) -> dict[str, str]:
    """The usual environment with rate limits high enough that fuzzing reaches the handlers."""
    return {
        **service_env,
        "RECSTREAM_RATE_LIMIT_INGEST_PER_SECOND": "10000",
        "RECSTREAM_RATE_LIMIT_INGEST_BURST": "10000",
        "RECSTREAM_RATE_LIMIT_READ_PER_SECOND": "10000",
        "RECSTREAM_RATE_LIMIT_READ_BURST": "10000",
        "RECSTREAM_RATE_LIMIT_ADMIN_PER_SECOND": "10000",
        "RECSTREAM_RATE_LIMIT_ADMIN_BURST": "10000",
    }


def _schemathesis() -> str:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if not found:
        skip_unless_ci("schemathesis is not installed (pip install -e '.[dev]')")
    return found


def test_no_generated_request_gets_a_server_error(stack: Stack, tmp_path: Path) -> None:
    binary = _schemathesis()
    api = stack.api.url.rstrip("/")
    assert urlsplit(api).hostname == "127.0.0.1", api

    events = [
        {"event_id": f"fz-{i}", "user_id": f"u{i % 3}", "item_id": f"v{i % 5}", "type": "like", "ts": iso(i)}
        for i in range(20)
    ]
    produce_events(stack.broker, stack.topic, events)
    wait_for(lambda: stack.client.get("/readyz").status_code == 200, 60, "GET /readyz to answer 200")
    wait_for(
        lambda: stack.client.get("/v1/users/u1/recommendations", params={"k": 3}).status_code == 200,
        30,
        "a recommendation request to answer 200",
    )

    report = tmp_path / "report.json"
    argv = [
        binary,
        "--no-color",
        "run",
        f"{api}/openapi.json",
        "--url",
        api,
        "--checks",
        "not_a_server_error,response_schema_conformance",  # and every documented body is the one sent
        "--max-examples",
        str(MAX_EXAMPLES),
        "--max-time",
        str(MAX_TIME),
        "--workers",
        "1",  # schemathesis' threaded workers raced in Python's AST compiler here ("recursion depth mismatch")
        "--header",
        f"Authorization: Bearer {TEST_API_KEY}",
        "--request-timeout",
        "10",
        "--generation-database",
        "none",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        "--report-dir",
        str(tmp_path / "reports"),
    ]
    try:
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=MAX_TIME + 20)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"schemathesis did not finish in {MAX_TIME + 20}s:\n{exc.stdout}")
    output = done.stdout + done.stderr
    api_log = stack.api.log_path.read_text(errors="replace")[-6000:] if stack.api.log_path else ""
    assert done.returncode == 0, f"schemathesis found failures:\n{output}\n--- API log tail ---\n{api_log}"
    summary = json.loads(report.read_text())
    cases = summary["test_cases"]
    print(output[-2500:])
    print("schemathesis test cases:", cases)
    assert cases["generated"] > 0 and cases["with_failures"] == 0 and cases["errored"] == 0, cases
    assert not summary["failures"] and not summary["errors"], (summary["failures"], summary["errors"])
    assert not summary["warnings"].get("rate_limited"), "429s hid operations: raise the limits above"
