"""The FastAPI application factory: wires settings, Redis, the model holder and the producer."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from redis.exceptions import AuthenticationError as RedisAuthenticationError
from redis.exceptions import AuthorizationError as RedisAuthorizationError
from redis.exceptions import ClusterDownError as RedisClusterDownError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError as RedisNoPermissionError
from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError
from redis.exceptions import ReadOnlyError as RedisReadOnlyError
from redis.exceptions import RedisError
from redis.exceptions import ResponseError as RedisResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import TryAgainError as RedisTryAgainError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import processes
from api.auth import key_ring_from_settings
from api.deps import ApiState
from api.hidden_items import HiddenItemsHeld
from api.hygiene import BodyLimitMiddleware, SecurityHeadersMiddleware, add_docs_route
from api.model_holder import ModelHolder
from api.problems import document_invalid_requests, explain_http_error, explain_validation_error
from api.producer import EventProducer
from api.rate_limit import RateLimiter
from api.routes import dashboard, events, gate, health, items, models, recommendations, stats, users
from api.seen_cache import SeenCache
from recstream import components, metrics
from recstream.events import Event
from recstream.gc_tuning import freeze_startup_objects
from recstream.settings import Settings, get_settings
from store.hidden_items import HiddenItems
from store.keys import Keys
from store.rate_limit import TokenBuckets

log = logging.getLogger(__name__)


class LatencyMiddleware:
    """Records request latency by route template, method and status (plain ASGI: no per-request task)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            metrics.REQUEST_SECONDS.labels(route, scope["method"], str(status)).observe(time.perf_counter() - started)


#: Operators watch recstream through Prometheus (recstream.metrics). FastAPI >= 0.16x also has
#: native OpenTelemetry, which asks the global providers whether it is configured on every request
#: (about 4% of a recommendation's CPU under load, measured with py-spy); switched off where the
#: installed FastAPI has it.
_NO_OPENTELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


#: The most each step of the API's shutdown may take (the model holder, the Kafka producer, the Redis client): a
#: step stuck on a peer that stopped answering (a paused broker) is abandoned, and the process exits. Three steps
#: stay within the 10 s a container runtime waits after SIGTERM by default.
SHUTDOWN_STEP_SECONDS = 3.0


async def _stop_within(seconds: float, *steps: Callable[[], Awaitable[Any]]) -> None:
    """Run the shutdown ``steps`` in order, each for at most ``seconds``; a step that fails or overruns is logged and
    the next one runs (none holds anything an accepted request still needs: an event is answered 202 only once the
    broker took it)."""
    for step in steps:
        name = getattr(step, "__qualname__", repr(step))
        try:
            await asyncio.wait_for(step(), seconds)
        except TimeoutError:
            log.warning("shutdown: %s did not finish within %.0f s; left to the process exit", name, seconds)
        except Exception as exc:  # noqa: BLE001 - stopping anyway
            log.warning("shutdown: %s failed (%s: %s)", name, type(exc).__name__, exc)


#: Redis errors that pass by themselves (a 503 to retry): unreachable, timed out, loading its data (a
#: ConnectionError), not writable now (out of memory, a replica), a cluster moving. redis-py makes these classes of
#: the replies' codes, and leaves the code at the start of the message of a reply it has no class for: among those,
#: REDIS_PASSING_CODES pass too (cannot persist, a script running, too few replicas).
REDIS_PASSING_ERRORS = (
    RedisConnectionError,
    RedisTimeoutError,
    RedisReadOnlyError,
    RedisOutOfMemoryError,
    RedisTryAgainError,
    RedisClusterDownError,
)
REDIS_PASSING_CODES = ("MISCONF", "BUSY", "NOREPLICAS")


def _redis_reason(exc: Exception) -> str:
    """What Redis said, without what redis-py adds for a command of a transaction (``Command # N (the command and
    its arguments: key names, values) of pipeline caused error: ...``), which is not for a client's eyes.

    >>> from redis.exceptions import ResponseError
    >>> _redis_reason(ResponseError('Command # 2 (HSET p:items:hidden v4 ...) of pipeline caused error: MISCONF no'))
    'MISCONF no'
    """
    said = str(exc)
    return said.rsplit("caused error: ", 1)[-1].strip()


def _internal_error(exc: Exception) -> JSONResponse:
    """A defect's answer: a JSON body with a ``detail``, as every other refusal has, naming only the error's type."""
    detail = f"internal error ({type(exc).__name__}); the API process logged it"
    return JSONResponse({"detail": detail}, status_code=500)


def app_from_environment() -> FastAPI:
    """The API for the settings of this process's environment: what each of several API processes runs
    (``recstream api --workers N``: uvicorn imports it by name in every process it starts)."""
    components.configure_logging("api", pid=True)
    processes.follow_supervisor()
    return create_app(get_settings())


def create_app(settings: Settings) -> FastAPI:
    """The API for ``settings``; raises :class:`api.auth.AuthNotConfigured` when auth is on without keys, and
    :class:`store.signing.KeyMissing` without a snapshot key."""
    components.require_hmac_key(settings)
    keys = key_ring_from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = components.redis_client(settings)
        store = components.model_store(settings, redis)
        seen = SeenCache(store, settings.api_seen_cache_items)
        hidden_items = HiddenItems(redis, store.keys)
        models = ModelHolder(
            store,
            poll_seconds=settings.model_poll_seconds,
            load_share=settings.model_load_share,
            seen=seen,
            hidden=HiddenItemsHeld(hidden_items),
        )
        producer = EventProducer(
            components.bootstrap_servers(settings),
            settings.topic_events,
            timeout=settings.produce_timeout_seconds,
            client_kwargs=components.kafka_client_kwargs(settings),
        )
        limiter = RateLimiter(TokenBuckets(redis, Keys(settings.redis_prefix)), settings)
        app.state.recstream = ApiState(
            settings=settings,
            redis=redis,
            store=store,
            models=models,
            producer=producer,
            keys=keys,
            limiter=limiter,
            seen=seen,
            hidden_items=hidden_items,
            ingest_gate=components.ingest_gate(settings),
        )
        components.start_process(settings, log)
        metrics.forget_dead_processes()  # one of several API processes, started in place of one that died
        freeze_startup_objects()  # before the first model: full collections then skip the imports (gc_tuning)
        await models.start()
        # one of several API processes: its garbage collections published to the shared metrics
        gc_counts = asyncio.create_task(metrics.gc_counts().run()) if metrics.multiprocess() else None
        try:
            yield
        finally:
            await _stop_within(SHUTDOWN_STEP_SECONDS, models.stop, producer.stop, redis.aclose)
            if gc_counts is not None:
                gc_counts.cancel()  # (it publishes once more as it ends)
                await asyncio.gather(gc_counts, return_exceptions=True)
            metrics.process_stopping()

    app = FastAPI(
        title="recstream",
        version="0.1.0",
        summary="Streaming online-learning recommender: publish events, get live recommendations.",
        lifespan=lifespan,
        docs_url=None,  # served by add_docs_route with an exact Content-Security-Policy
        redoc_url=None,  # one docs page is enough
        **_NO_OPENTELEMETRY,
    )
    add_docs_route(app)
    app.include_router(events.router)
    app.include_router(recommendations.router)
    app.include_router(gate.router)
    app.include_router(models.router)
    app.include_router(items.router)
    app.include_router(users.router)
    app.include_router(stats.router)
    app.include_router(dashboard.router)
    app.include_router(health.router)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return explain_validation_error(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return explain_http_error(request, exc)

    document_invalid_requests(app)  # the OpenAPI page's 422s: what the handler above answers

    async def redis_failed(request: Request, exc: Exception) -> JSONResponse:
        # a route that needs Redis (admin, stats) while it is unreachable or refuses the command: a 503, not a bare 500
        said = _redis_reason(exc)
        transient = isinstance(exc, REDIS_PASSING_ERRORS) or (
            isinstance(exc, RedisResponseError) and said.startswith(REDIS_PASSING_CODES)
        )
        if not transient and not isinstance(exc, RedisNoPermissionError):
            # a defect (WRONGTYPE, an unknown command, a script's error; WatchError, DataError on this side): answered
            # here, so logged here with its traceback
            log.error("%s %s: internal error", request.method, request.url.path, exc_info=exc)
            return _internal_error(exc)
        metrics.REDIS_ERRORS.labels("api").inc()
        what = type(exc).__name__
        if isinstance(exc, (RedisAuthenticationError, RedisAuthorizationError, RedisNoPermissionError)):
            # not going away by itself: an operator must act
            detail = (
                f"Redis refused this API process's credentials or their rights ({what}): RECSTREAM_REDIS_URL "
                "or the Redis user's ACL must be fixed"
            )
            log.error("%s %s: %s (%s)", request.method, request.url.path, detail, exc)
            return JSONResponse({"detail": detail}, status_code=503)
        log.warning("%s %s: Redis unavailable (%s: %s)", request.method, request.url.path, what, exc)
        retry = settings.retry_after_seconds
        if isinstance(exc, RedisReadOnlyError):  # a replica (a failover under way): the primary answers soon
            detail = f"Redis is read-only ({what}: this API process reaches a replica); retry in {retry} s"
        elif isinstance(exc, RedisOutOfMemoryError):  # its maxmemory reached: writes refused until memory is freed
            detail = f"Redis is out of memory ({what}: it refuses writes past its maxmemory); retry in {retry} s"
        elif isinstance(exc, RedisResponseError):  # MISCONF (cannot persist), BUSY (a script running), TRYAGAIN, ...
            detail = f"Redis refused the command ({what}: {said[:200]}); retry in {retry} s"
        else:
            detail = f"Redis is unavailable ({what}); retry in {retry} s"
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": str(retry)})

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:  # noqa: ARG001 - a handler's form
        # a defect: a JSON body like every other answer's (Starlette raises it again, and the server logs its traceback)
        return _internal_error(exc)

    app.add_exception_handler(RedisError, redis_failed)
    app.add_exception_handler(Exception, internal_error)

    # Added innermost first: latency and security headers see every answer, including 413s and CORS preflights.
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
            expose_headers=["Retry-After", "WWW-Authenticate"],  # a browser's script reads them on a 429, 503, 401
            max_age=600,
        )
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(LatencyMiddleware)

    # Publish the event contract in the OpenAPI document (the ingest body is parsed by hand).
    original_openapi = app.openapi

    def openapi_with_event_schema() -> dict:
        if app.openapi_schema is None:
            schema = original_openapi()
            schema.setdefault("components", {}).setdefault("schemas", {})["Event"] = Event.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi_with_event_schema  # type: ignore[method-assign]
    return app
