"""Builds the service's parts from the settings, so the worker, the API and the tests wire them the same way."""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis.asyncio as aioredis

from learner.implicit_mf import ImplicitMF
from learner.online_learner import OnlineLearner
from learner.target import TargetRule
from recstream.settings import Settings
from store.keys import Keys
from store.model_store import ModelStore
from store.signing import SnapshotSigner

if TYPE_CHECKING:
    from learner.gate.gate import QualityGate
    from learner.gate.model_guard import ModelGuard


def target_rule(settings: Settings) -> TargetRule:
    return TargetRule(
        positive_types=frozenset(settings.positive_types),
        negative_types=frozenset(settings.negative_types),
        short_watch_fraction=settings.short_watch_fraction,
    )


def new_learner(settings: Settings) -> OnlineLearner:
    model = ImplicitMF(
        n_factors=settings.model_factors,
        lr=settings.model_lr,
        l2=settings.model_l2,
        negatives=settings.model_negatives,
        seed=settings.model_seed,
    )
    return OnlineLearner(model=model, rule=target_rule(settings))


def quality_gate(settings: Settings) -> QualityGate | None:
    """The gate's pure rules (duplicates are handled by the worker with Redis), or None if disabled."""
    return None


def model_guard(settings: Settings) -> ModelGuard | None:
    return None


def redis_client(settings: Settings) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        settings.redis_url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=10
    )


def model_store(settings: Settings, redis: aioredis.Redis) -> ModelStore:
    signer = SnapshotSigner(settings.hmac_key.get_secret_value().encode())
    return ModelStore(
        redis,
        signer,
        Keys(settings.redis_prefix),
        retention=settings.model_retention,
        dedupe_retention_seconds=settings.dedupe_retention_seconds,
        dedupe_bucket_seconds=settings.dedupe_bucket_seconds,
    )


def bootstrap_servers(settings: Settings) -> str:
    """``kafka://a:1,b:2`` -> ``a:1,b:2`` for aiokafka clients."""
    return ",".join(part.split("://", 1)[-1] for part in settings.broker_url.split(","))
