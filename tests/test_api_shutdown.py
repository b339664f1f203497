"""The API's shutdown is bounded: a step stuck on a peer that stopped answering is abandoned after
``SHUTDOWN_STEP_SECONDS`` and the steps after it still run (a real Redis and broker; the producer's stop is made to
hang, as aiokafka's did once after the broker had been paused)."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio as aioredis
from fastapi.testclient import TestClient

from api import app as api_app
from api.producer import EventProducer
from tests.conftest import TEST_API_KEY, Endpoint, in_process_app

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_a_stuck_shutdown_step_is_abandoned_and_the_next_ones_run(
    redis_endpoint: Endpoint,
    broker_endpoint: Endpoint,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def stuck(self: EventProducer) -> None:  # noqa: ARG001 - a method
        await asyncio.Event().wait()  # never set: a stop that waits on a peer that does not answer

    closed: list[aioredis.Redis] = []
    close = aioredis.Redis.aclose

    async def recorded_close(self: aioredis.Redis, *args: object, **kwargs: object) -> None:
        closed.append(self)
        await close(self, *args, **kwargs)

    monkeypatch.setattr(EventProducer, "stop", stuck)
    monkeypatch.setattr(aioredis.Redis, "aclose", recorded_close)
    monkeypatch.setattr(api_app, "SHUTDOWN_STEP_SECONDS", 0.5)
    app = in_process_app(redis_endpoint, broker_endpoint)
    headers = {"Authorization": f"Bearer {TEST_API_KEY}"}
    with caplog.at_level(logging.WARNING, logger="api.app"):
        with TestClient(app, base_url="http://127.0.0.1", headers=headers) as client:
            assert client.get("/healthz").status_code == 200
            state = app.state.recstream
        # (leaving the block ran the shutdown: without the bound it would wait for ever, and the timeout fail it)
    assert any("stuck" in r.getMessage() and "did not finish within" in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]
    assert state.redis in closed  # the step after the stuck one ran
