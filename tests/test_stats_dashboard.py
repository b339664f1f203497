"""``/v1/stats`` follows the stream, and ``/dashboard`` serves the live page with a strict CSP."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi.responses import JSONResponse

from api.routes.stats import latency_by_route
from recstream import metrics
from tests.clock import iso
from tests.conftest import Stack, wait_for
from tests.kafka_io import produce_events

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_stats_follow_the_stream_and_the_dashboard_is_served(stack: Stack) -> None:
    broker, topic, client, api = stack.broker, stack.topic, stack.client, stack.api
    assert httpx.get(f"{api.url}/v1/stats").status_code == 401
    empty = client.get("/v1/stats").json()
    assert empty["model"]["current"] is None and empty["gate"] == {}

    kinds = ["like", "skip", "view"]
    events = [
        {"event_id": f"s{i}", "user_id": f"u{i % 4}", "item_id": f"v{i % 9}", "type": kinds[i % 3], "ts": iso(i)}
        for i in range(60)
    ]
    future = {**events[0], "event_id": "future", "ts": (datetime.now(UTC) + timedelta(hours=2)).isoformat()}
    produce_events(broker, topic, [*events, future])
    stats = wait_for(
        lambda: (s := client.get("/v1/stats").json())["model"]["events_learned"] == 60 and s["gate"] and s,
        60,
        "stats to show the 60 learned events and the held one",
        interval=0.6,  # the admin scope is rate-limited (RECSTREAM_RATE_LIMIT_ADMIN_*)
    )
    assert isinstance(stats, dict)
    model = stats["model"]
    assert model["current"] >= 1 and model["kind"] == "item_cooccurrence"
    assert 0 <= model["checkpoint_age_seconds"] < 60
    assert stats["gate"] == {"future_timestamp": 1}
    assert stats["versions"][-1]["version"] == model["current"] and stats["versions"][-1]["current"]
    assert stats["guard"].get("state") == "learning"
    for _ in range(5):
        client.get("/v1/users/u1/recommendations")
    route = client.get("/v1/stats").json()["api"]["/v1/users/{user_id}/recommendations"]
    assert route["requests"] >= 5 and 0 < route["p99_seconds"] < 10 and route["p99_beyond_buckets"] is False

    page = httpx.get(f"{api.url}/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert '<script src="/dashboard/dashboard.js">' in page.text
    script = httpx.get(f"{api.url}/dashboard/dashboard.js")
    assert script.status_code == 200 and "/v1/stats" in script.text and "/v1/models/rollback" in script.text
    assert httpx.get(f"{api.url}/dashboard/dashboard.css").status_code == 200


def test_a_latency_past_the_last_bucket_is_that_bound_marked_not_infinity() -> None:
    # requests that waited out a 5 s broker timeout: p99 past the histogram's last bound (2.5 s); JSON has no
    # infinity, and /v1/stats answered 500 for it
    route = f"/test-slow-{uuid.uuid4().hex[:6]}"
    for seconds in [0.001] * 90 + [5.0] * 10:
        metrics.REQUEST_SECONDS.labels(route, "POST", "503").observe(seconds)
    latency = latency_by_route()[route]
    top = metrics.REQUEST_SECONDS._upper_bounds[-2]  # (the last is +Inf)
    assert latency == {
        "requests": 100.0,
        "p50_seconds": 0.001,
        "p99_seconds": top,
        "p50_beyond_buckets": False,
        "p99_beyond_buckets": True,
    }
    JSONResponse(latency)  # (what FastAPI does with the answer: raises for an infinity)
