"""The services a benchmark needs, started on loopback and stopped by PID.

:class:`Services` starts the broker and Redis on first use (a part that needs neither, such as
top-K, starts nothing); :func:`run_env` gives each benchmark run its own topics, consumer group,
Redis prefix, HMAC key and API key, so runs never see each other's state.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from dataclasses import dataclass, field

import redis

from api.auth import hash_key, new_key
from bench.common import track
from recstream import local_services


@dataclass
class Services:
    broker_choice: str = "auto"
    _broker: local_services.LocalService | None = None
    _redis: local_services.LocalService | None = None
    started: list[local_services.LocalService] = field(default_factory=list)

    @property
    def broker(self) -> local_services.LocalService:
        if self._broker is None:
            self._broker = local_services.start_broker(self.broker_choice)
            self.started.append(self._broker)
            track(self._broker.pid)
        return self._broker

    @property
    def redis(self) -> local_services.LocalService:
        if self._redis is None:
            self._redis = local_services.start_redis()
            self.started.append(self._redis)
            track(self._redis.pid)
        return self._redis

    def broker_name(self) -> str | None:
        return None if self._broker is None else self._broker.name

    def stop(self) -> None:
        for service in reversed(self.started):
            service.stop(timeout=30)
        self.started.clear()


def start_worker(env: dict[str, str]) -> local_services.LocalService:
    worker = local_services.start_worker(env)
    track(worker.pid)
    return worker


def start_api(env: dict[str, str]) -> local_services.LocalService:
    api = local_services.start_api(env)
    track(api.pid)
    return api


@dataclass
class RunEnv:
    env: dict[str, str]
    api_key: str

    def apply(self) -> None:
        """Also set the variables in this process, so ``Settings()`` here reads the same run."""
        os.environ.update(self.env)


def run_env(services: Services, name: str, partitions: int = 2, **extra: str) -> RunEnv:
    """Environment for one benchmark run: own topics, group, Redis prefix, keys; limits off."""
    run = f"{name}-{uuid.uuid4().hex[:6]}"
    api_key = new_key()  # measured with authentication on, as in production
    entry = {"name": "bench", "scopes": ["ingest", "read", "admin"], "hash": hash_key(api_key)}
    env = {
        "RECSTREAM_BROKER_URL": services.broker.url,
        "RECSTREAM_REDIS_URL": services.redis.url,
        "RECSTREAM_APP_ID": f"bench-{run}",
        "RECSTREAM_REDIS_PREFIX": f"bench-{run}",
        "RECSTREAM_TOPIC_EVENTS": f"bench-{run}",
        "RECSTREAM_TOPIC_REJECTED": f"bench-{run}.rejected",
        "RECSTREAM_TOPIC_QUARANTINED": f"bench-{run}.quarantined",
        "RECSTREAM_TOPIC_PARTITIONS": str(partitions),
        "RECSTREAM_BROKER_SESSION_TIMEOUT": "6",
        "RECSTREAM_HMAC_KEY": f"bench-{run}",
        "RECSTREAM_API_KEYS": json.dumps([entry]),
        # The load must not be throttled: this measures serving and ingest, not the limiter's refusals.
        "RECSTREAM_RATE_LIMIT_READ_PER_SECOND": "10000000",
        "RECSTREAM_RATE_LIMIT_READ_BURST": "10000000",
        "RECSTREAM_RATE_LIMIT_INGEST_PER_SECOND": "10000000",
        "RECSTREAM_RATE_LIMIT_INGEST_BURST": "10000000",
        **extra,
    }
    return RunEnv(env, api_key)


def forget_run(r: redis.Redis, prefix: str) -> None:
    """Delete every Redis key of a run (``RECSTREAM_REDIS_PREFIX`` ``prefix``), e.g. its model versions."""
    for key in r.scan_iter(f"{prefix}:*", count=1000):
        r.unlink(key)


def ensure_topics(run: RunEnv) -> None:
    from recstream.settings import Settings
    from stream.topics import ensure_topics as _ensure

    run.apply()
    asyncio.run(_ensure(Settings()))
