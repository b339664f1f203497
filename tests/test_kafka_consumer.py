"""The worker's Kafka consumer asks the broker for a short fetch wait and a minimum fetch size (stream/kafka_consumer.py
says why)."""

from __future__ import annotations

import asyncio

from recstream.settings import Settings
from stream.app import create_app


async def _fetch_limits(settings: Settings) -> tuple[int, int]:
    app, _ = create_app(settings)
    # the aiokafka consumer the worker's consumer thread makes (not started: no broker is needed)
    consumer = app.consumer._thread._create_consumer(loop=asyncio.get_running_loop())
    try:
        return consumer._fetch_max_wait_ms, consumer._fetch_min_bytes
    finally:
        await consumer.stop()


async def test_the_worker_consumer_uses_the_configured_fetch_limits_not_fausts() -> None:
    broker = "kafka://127.0.0.1:1"
    # Faust alone passes a 1,500 ms wait, and aiokafka a minimum of 1 byte
    assert await _fetch_limits(Settings(broker_url=broker)) == (100, 65_536)
    settings = Settings(broker_url=broker, broker_fetch_max_wait_seconds=0.25, broker_fetch_min_bytes=1)
    assert await _fetch_limits(settings) == (250, 1)
