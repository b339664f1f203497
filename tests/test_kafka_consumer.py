"""The worker's Kafka consumer asks the broker for a short fetch wait (stream/kafka_consumer.py says why)."""

from __future__ import annotations

import asyncio

from recstream.settings import Settings
from stream.app import create_app


async def test_the_worker_consumer_uses_the_configured_fetch_wait_not_fausts() -> None:
    for seconds, expected_ms in ((0.25, 250), (Settings.model_fields["broker_fetch_max_wait_seconds"].default, 100)):
        app, _ = create_app(Settings(broker_url="kafka://127.0.0.1:1", broker_fetch_max_wait_seconds=seconds))
        # the aiokafka consumer the worker's consumer thread makes (not started: no broker is needed)
        consumer = app.consumer._thread._create_consumer(loop=asyncio.get_running_loop())
        try:
            assert consumer._fetch_max_wait_ms == expected_ms  # Faust alone passes 1500
        finally:
            await consumer.stop()
