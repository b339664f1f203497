"""Token leases: a busy key costs one Redis round trip per lease, and the shared limit stays exact to a lease."""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis

from api.rate_limit import RateLimiter
from recstream.settings import Settings
from store.keys import Keys
from store.rate_limit import TokenBuckets
from tests.conftest import Endpoint


class CountingBuckets(TokenBuckets):
    calls = 0

    async def take(self, *args, **kwargs):
        CountingBuckets.calls += 1
        return await super().take(*args, **kwargs)


async def test_two_processes_share_a_bucket_within_one_lease_each(redis_endpoint: Endpoint) -> None:
    client = aioredis.Redis.from_url(redis_endpoint.url)
    keys = Keys(f"lease-{uuid.uuid4().hex[:8]}")
    # A very slow refill, so only the burst matters during the test: 200 tokens, leases of 10.
    settings = Settings(rate_limit_read_per_second=0.001, rate_limit_read_burst=200)
    first = RateLimiter(CountingBuckets(client, keys), settings)
    second = RateLimiter(CountingBuckets(client, keys), settings)
    try:
        allowed = 0
        calls_while_allowed = None
        for n in range(300):
            limiter = first if n % 2 else second
            if await limiter.retry_after("k", "read") is None:
                allowed += 1
            elif calls_while_allowed is None:
                calls_while_allowed = CountingBuckets.calls
        assert 200 - 2 * 10 <= allowed <= 200, allowed  # never more than the bucket; exact to one lease per process
        assert calls_while_allowed is not None and calls_while_allowed <= 200 // 10 + 2  # one round trip per lease
    finally:
        await client.aclose()
