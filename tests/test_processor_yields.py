"""A long batch does not hold the event loop: the worker's consumer fetches, heartbeats and Redis
replies get their turn while the processor learns (real Redis; Kafka plays no part here)."""

from __future__ import annotations

import asyncio
import gc
import time
import uuid

import pytest
import redis.asyncio as aioredis

from store.keys import Keys
from store.model_store import ModelStore
from store.signing import SnapshotSigner
from stream.processor import YIELD_EVERY_EVENTS
from tests.clock import iso
from tests.conftest import Endpoint
from tests.transport import Transport

pytestmark = pytest.mark.integration


async def test_other_tasks_run_while_a_long_batch_is_learned(redis_endpoint: Endpoint) -> None:
    client = aioredis.Redis.from_url(redis_endpoint.url)
    try:
        store = ModelStore(client, SnapshotSigner(b"k"), Keys(f"y-{uuid.uuid4().hex[:8]}"))
        transport = Transport()
        processor = transport.processor(store)
        await processor.start()
        n = 20 * YIELD_EVERY_EVENTS
        events = [
            {"event_id": f"e{k}", "user_id": f"u{k % 50}", "item_id": f"v{k % 70}", "type": "like", "ts": iso(k)}
            for k in range(n)
        ]
        records = transport.records(events)
        longest = 0.0
        done = False

        async def ticker() -> None:  # stands for the consumer's fetch loop and heartbeats
            nonlocal longest
            last = time.perf_counter()
            while not done:
                await asyncio.sleep(0)
                now = time.perf_counter()
                longest, last = max(longest, now - last), now

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        gc.disable()  # a full collection is a pause of its own (the worker raises the GC thresholds)
        try:
            started = time.perf_counter()
            await processor.process(records)
            took = time.perf_counter() - started
        finally:
            gc.enable()
        done = True
        await task
        assert processor.learner is not None and processor.learner.events_learned == n
        # Yielding every YIELD_EVERY_EVENTS of the 20 x YIELD_EVERY_EVENTS events, the loop is never
        # held for more than a small part of the batch (without the yields: for nearly all of it).
        assert longest < took / 4, (longest, took)
    finally:
        await client.aclose()
