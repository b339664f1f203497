"""Per-key rate limits: Redis token buckets shared by every API process; 429 + Retry-After; fail-open."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest
import redis.asyncio as aioredis

from api.auth import hash_key, new_key
from recstream import local_services
from store.keys import Keys
from store.rate_limit import TokenBuckets
from tests.clock import iso
from tests.conftest import Endpoint, api_client, make_env, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_a_bucket_allows_its_burst_then_says_how_long_to_wait(redis_endpoint: Endpoint) -> None:
    async def scenario() -> None:
        redis = aioredis.Redis.from_url(redis_endpoint.url)
        keys = Keys(f"test-{uuid.uuid4().hex[:8]}")
        buckets = TokenBuckets(redis, keys)
        try:
            decisions = [await buckets.take("k", "read", rate=0.5, burst=3) for _ in range(4)]
            assert [d.allowed for d in decisions] == [True, True, True, False]
            assert 1.5 < decisions[-1].retry_after_seconds <= 2.0  # one token at 0.5/s
            assert (await buckets.take("other", "read", rate=0.5, burst=3)).allowed  # per key
            assert (await buckets.take("k", "admin", rate=0.5, burst=3)).allowed  # per scope
            ttl = await redis.pttl(keys.rate_limit("k", "read"))
            assert 0 < ttl <= 7_000  # gone once it would be full again (3 tokens at 0.5/s, + 1 s)
        finally:
            await redis.aclose()

    asyncio.run(scenario())


def test_two_api_processes_share_one_bucket_per_key(
    redis_endpoint: Endpoint, broker_endpoint: Endpoint, processes: list[local_services.LocalService]
) -> None:
    limited, other = new_key(), new_key()
    env = {
        **make_env(redis_endpoint, broker_endpoint),
        "RECSTREAM_API_KEYS": json.dumps(
            [
                {"name": "ops", "scopes": ["admin"], "hash": hash_key(limited)},
                {"name": "ops-2", "scopes": ["admin"], "hash": hash_key(other)},
            ]
        ),
        # A token every 5 s: the six requests below need only fit in 5 s, however slow the two fresh processes.
        "RECSTREAM_RATE_LIMIT_ADMIN_PER_SECOND": "0.2",
        "RECSTREAM_RATE_LIMIT_ADMIN_BURST": "4",
    }
    processes.append(first := local_services.start_api(env))  # (each kept at once: stopped even if the next fails)
    processes.append(second := local_services.start_api(env))
    with api_client(first, limited) as a, api_client(second, limited) as b:
        statuses = [client.get("/v1/gate").status_code for client in (a, b, a, b)]
        assert statuses == [200] * 4  # the burst, spent across both processes
        refused = b.get("/v1/gate")
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["retry-after"]) <= 5  # until the next token, in whole seconds
        assert "'ops' is over its 'admin' rate limit" in refused.json()["detail"]
        assert a.get("/v1/gate").status_code == 429  # the other process sees the same empty bucket
        # Another scope of the same key (admin implies read) and another key have their own buckets.
        assert a.get("/v1/users/u1/recommendations").status_code != 429
        with api_client(second, other) as c:
            assert c.get("/v1/gate").status_code == 200
        # Some seconds later a token is back.
        wait_for(lambda: a.get("/v1/gate").status_code == 200, 15, "a token after Retry-After", interval=0.3)


def test_when_redis_is_unreachable_the_limiter_fails_open(
    redis_endpoint: Endpoint, broker_endpoint: Endpoint, processes: list[local_services.LocalService]
) -> None:
    env = {
        **make_env(redis_endpoint, broker_endpoint),
        "RECSTREAM_REDIS_URL": f"redis://127.0.0.1:{local_services.free_port()}/0",  # nothing listens
        "RECSTREAM_RATE_LIMIT_INGEST_BURST": "1",
    }
    api = local_services.start_api(env)
    processes.append(api)
    event = {"event_id": "r1", "user_id": "u1", "item_id": "v1", "type": "like", "ts": iso()}
    with api_client(api, timeout=30) as client:
        for n in range(3):  # more than the burst: nothing can count them, so none is refused
            assert client.post("/v1/events", json=[{**event, "event_id": f"r{n}"}]).status_code == 202
        assert httpx.get(f"{api.url}/healthz").status_code == 200
    assert api.log_path is not None
    wait_for(lambda: "rate limiter cannot reach Redis" in api.log_path.read_text(), 10, "the fail-open warning")
