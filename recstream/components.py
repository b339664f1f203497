"""Builds the service's parts from the settings, so the worker, the API and the tests wire them the same way."""

from __future__ import annotations

import redis.asyncio as aioredis

from learner.event_weights import EventWeights
from learner.gate.gate import QualityGate, default_gate, default_model_guard
from learner.gate.model_guard import ModelGuard
from learner.online_learner import OnlineLearner
from learner.registry import build_model
from learner.target import TargetRule
from recstream.settings import Settings, gate_config
from store.keys import Keys
from store.model_store import ModelStore
from store.signing import SnapshotSigner


def target_rule(settings: Settings) -> TargetRule:
    return TargetRule(
        positive_types=frozenset(settings.positive_types),
        negative_types=frozenset(settings.negative_types),
        short_watch_fraction=settings.short_watch_fraction,
    )


def event_weights(settings: Settings) -> EventWeights:
    return EventWeights(
        like=settings.weight_like, share=settings.weight_share, view=settings.weight_view, skip=settings.weight_skip
    )


def new_learner(settings: Settings) -> OnlineLearner:
    model = build_model(settings.model, **settings.model_params)
    return OnlineLearner(model=model, rule=target_rule(settings), weights=event_weights(settings))


def learner_from_bytes(settings: Settings, blob: bytes) -> OnlineLearner:
    return OnlineLearner.from_bytes(blob, rule=target_rule(settings), weights=event_weights(settings))


def quality_gate(settings: Settings) -> QualityGate:
    """The gate's pure rules (duplicates are handled by the worker with Redis)."""
    return default_gate(gate_config(settings))


def model_guard(settings: Settings) -> ModelGuard:
    return default_model_guard(gate_config(settings))


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
