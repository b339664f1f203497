"""The worker's own costs stay bounded (real Redis; Kafka plays no part here): a long batch does not
hold the event loop, and the live hit rate's samples keep to their share of the worker's time."""

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
from stream.processor import HIT_SAMPLE_EVERY, HIT_TIME_SHARE, YIELD_EVERY_EVENTS
from stream.share_budget import ShareBudget
from tests.clock import iso
from tests.conftest import Endpoint
from tests.transport import Transport

pytestmark = pytest.mark.integration


def _likes(n: int) -> list[dict]:
    return [
        {"event_id": f"e{k}", "user_id": f"u{k % 50}", "item_id": f"v{k % 70}", "type": "like", "ts": iso(k)}
        for k in range(n)
    ]


async def test_other_tasks_run_while_a_long_batch_is_learned(redis_endpoint: Endpoint) -> None:
    client = aioredis.Redis.from_url(redis_endpoint.url)
    try:
        store = ModelStore(client, SnapshotSigner(b"k"), Keys(f"y-{uuid.uuid4().hex[:8]}"))
        transport = Transport()
        processor = transport.processor(store)
        await processor.start()
        n = 20 * YIELD_EVERY_EVENTS
        records = transport.records(_likes(n))
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


async def test_live_hit_rate_samples_keep_to_their_share_of_the_time(redis_endpoint: Endpoint) -> None:
    client = aioredis.Redis.from_url(redis_endpoint.url)
    try:
        store = ModelStore(client, SnapshotSigner(b"k"), Keys(f"h-{uuid.uuid4().hex[:8]}"))
        transport = Transport()
        processor = transport.processor(store)
        await processor.start()
        # A catalogue so large that ranking it takes 10 ms; everything else takes no time.
        clock = [0.0]

        def tick() -> float:
            clock[0] += 0.005  # read twice around a ranking: 10 ms per sample
            return clock[0]

        processor.hit_budget = ShareBudget(HIT_TIME_SHARE, cap_seconds=0.05, clock=tick)
        start = clock[0]
        n = 40 * HIT_SAMPLE_EVERY * 10
        await processor.process(transport.records(_likes(n)))
        budget = processor.hit_budget
        samples = round(budget.spent / 0.01)
        assert 0 < samples < n // HIT_SAMPLE_EVERY  # sampled, but less often than every 20th positive
        assert budget.spent <= HIT_TIME_SHARE * (clock[0] - start) + budget.cap_seconds + 0.01
    finally:
        await client.aclose()


async def test_a_cheap_catalogue_is_sampled_at_every_20th_positive(redis_endpoint: Endpoint) -> None:
    client = aioredis.Redis.from_url(redis_endpoint.url)
    try:
        store = ModelStore(client, SnapshotSigner(b"k"), Keys(f"c-{uuid.uuid4().hex[:8]}"))
        transport = Transport()
        processor = transport.processor(store)
        await processor.start()
        n = 100 * HIT_SAMPLE_EVERY
        await processor.process(transport.records(_likes(n)))
        assert processor.hit_budget.spent > 0
        assert len(processor._hits) == n // HIT_SAMPLE_EVERY  # every like is a positive
    finally:
        await client.aclose()
