"""Builds the service's parts from the settings, so the worker, the API and the tests wire them the same way."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from learner import kernels
from learner.challenger import PromotionRule
from learner.event_weights import EventWeights
from learner.gate.gate import QualityGate, default_gate, default_model_guard, stateless_gate
from learner.gate.model_guard import ModelGuard
from learner.online_learner import OnlineLearner
from learner.registry import build_model
from learner.target import TargetRule
from recstream.settings import MISSING_HMAC_KEY, Settings, gate_config
from store.keys import Keys
from store.model_store import ModelStore, bulk_client
from store.signing import KeyMissing, SnapshotSigner


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


def contestants(settings: Settings) -> dict[str, Callable[[], OnlineLearner]]:
    """Every model the worker may serve, by name: the configured champion (named after its kind) and
    each challenger. Which of them is champion now is recorded with the current version."""

    def factory(kind: str, params: dict[str, Any]) -> Callable[[], OnlineLearner]:
        return lambda: OnlineLearner(
            model=build_model(kind, **params), rule=target_rule(settings), weights=event_weights(settings)
        )

    named = {settings.model: factory(settings.model, settings.model_params)}
    for spec in settings.challengers:
        named[spec.name] = factory(spec.model, spec.params)
    return named


def promotion_rule(settings: Settings) -> PromotionRule:
    return PromotionRule(
        window=settings.promote_window,
        margin=settings.promote_margin,
        min_z=settings.promote_min_z,
        sample_every=settings.promote_sample_every,
        auto=settings.promote_auto,
        hold_windows=settings.promote_hold_windows,
    )


def learner_from_bytes(settings: Settings, blob: bytes) -> OnlineLearner:
    return OnlineLearner.from_bytes(blob, rule=target_rule(settings), weights=event_weights(settings))


def quality_gate(settings: Settings) -> QualityGate:
    """The gate's pure rules (duplicates are handled by the worker with Redis)."""
    return default_gate(gate_config(settings))


def ingest_gate(settings: Settings) -> QualityGate:
    """The gate's rules that read only the event and the time, for the API to say which events the worker will hold."""
    return stateless_gate(gate_config(settings))


def model_guard(settings: Settings) -> ModelGuard:
    return default_model_guard(gate_config(settings))


def redis_client(settings: Settings) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        settings.redis_url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=10
    )


def require_hmac_key(settings: Settings) -> None:
    """:class:`store.signing.KeyMissing` (naming the setting) unless ``RECSTREAM_HMAC_KEY`` is set: a worker or an API
    process does not start without it."""
    if settings.hmac_key is None:
        raise KeyMissing(MISSING_HMAC_KEY)


def snapshot_signer(settings: Settings) -> SnapshotSigner:
    """Signs with ``hmac_key``; also accepts ``hmac_previous_keys`` when verifying (key rotation). Without
    ``hmac_key`` it signs and verifies nothing (:class:`store.signing.KeyMissing`, naming the setting)."""
    key = settings.hmac_key
    return SnapshotSigner(
        None if key is None else key.get_secret_value().encode(),
        previous=[key.get_secret_value().encode() for key in settings.hmac_previous_keys],
        missing=MISSING_HMAC_KEY,
    )


def model_store(settings: Settings, redis: aioredis.Redis, bulk: bool = False) -> ModelStore:
    """The model store over ``redis``; with ``bulk`` (the worker's) it can also write whole snapshots in the
    background (:meth:`store.model_store.ModelStore.consolidate`)."""
    signer = snapshot_signer(settings)
    return ModelStore(
        redis,
        signer,
        Keys(settings.redis_prefix),
        retention=settings.model_retention,
        keep_every_seconds=settings.model_keep_every_seconds,
        keep_spaced=settings.model_keep_spaced,
        dedupe_retention_seconds=settings.dedupe_retention_seconds,
        dedupe_bucket_seconds=settings.dedupe_bucket_seconds,
        bulk=bulk_client(settings.redis_url) if bulk else None,
    )


def bootstrap_servers(settings: Settings) -> str:
    """``kafka://a:1,b:2`` -> ``a:1,b:2`` for aiokafka clients."""
    return ",".join(part.split("://", 1)[-1] for part in settings.broker_url.split(","))


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    from aiokafka.helpers import create_ssl_context

    return create_ssl_context(cafile=settings.kafka_ssl_cafile)


def kafka_client_kwargs(settings: Settings) -> dict[str, Any]:
    """Security keyword arguments for every aiokafka client (producer, consumer, admin).

    ``PLAINTEXT`` adds nothing; ``SSL`` adds a verifying TLS context (``kafka_ssl_cafile`` or the
    system CAs); ``SASL_*`` add the mechanism, user name and password (and the TLS context for
    ``SASL_SSL``). A SASL protocol without user name or password is refused here, at start.
    """
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    kwargs: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = _ssl_context(settings)
    if protocol.startswith("SASL_"):
        if not settings.kafka_sasl_username or settings.kafka_sasl_password is None:
            raise ValueError(
                f"RECSTREAM_KAFKA_SECURITY_PROTOCOL={protocol} needs RECSTREAM_KAFKA_SASL_USERNAME "
                "and RECSTREAM_KAFKA_SASL_PASSWORD"
            )
        kwargs["sasl_mechanism"] = settings.kafka_sasl_mechanism
        kwargs["sasl_plain_username"] = settings.kafka_sasl_username
        kwargs["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return kwargs


def faust_broker_credentials(settings: Settings) -> Any:
    """The same security for the Faust worker, as ``faust.App(broker_credentials=...)`` (None for PLAINTEXT)."""
    import faust

    kwargs = kafka_client_kwargs(settings)
    if not kwargs:
        return None
    if settings.kafka_security_protocol == "SSL":
        return faust.SSLCredentials(kwargs["ssl_context"])
    return faust.SASLCredentials(
        username=kwargs["sasl_plain_username"],
        password=kwargs["sasl_plain_password"],
        mechanism=kwargs["sasl_mechanism"],
        ssl_context=kwargs.get("ssl_context"),
    )


def configure_logging(command: str, pid: bool = False) -> None:
    """Log lines of INFO and above to stderr with their time, level and logger, for ``recstream COMMAND``; with
    ``pid``, the process's id after the time (each API process of ``recstream api --workers N``, where uvicorn
    configures only its own loggers)."""
    process = " [%(process)d]" if pid else ""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s{process} %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if command != "worker":  # a command's output, not the client library's connection chatter
        logging.getLogger("aiokafka").setLevel(logging.WARNING)


def start_process(settings: Settings, log: logging.Logger) -> None:
    """What a worker or API process does at start: say whether it ranks with the compiled loops (a warning when it
    cannot), and give numpy's matrix products ``RECSTREAM_BLAS_THREADS`` threads (:func:`limit_blas_threads`)."""
    (log.info if kernels.compiled() is not None else log.warning)(kernels.describe())
    log.info(limit_blas_threads(settings.blas_threads))


def limit_blas_threads(threads: int) -> str:
    """Have the BLAS libraries loaded in this process (numpy's and scipy's OpenBLAS) use ``threads`` threads (0: as
    they are); a line for the log. OpenBLAS starts a thread per core, and its threads spin on a core for a while after
    each product: with two API processes on two cores, four threads took turns (docs/performance-history.md)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    if threads:
        threadpool_limits(limits=threads, user_api="blas")
    libraries = [f"{i['internal_api']} {i['num_threads']}" for i in threadpool_info() if i["user_api"] == "blas"]
    return f"matrix products: threads per BLAS library: {', '.join(libraries) or 'no BLAS library loaded'}"
