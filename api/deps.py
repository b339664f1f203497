"""The API's shared state and the dependencies routes declare: the state, and an API key with a scope."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import redis.asyncio as aioredis
from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from api.auth import ANONYMOUS, KeyRing, Principal
from api.log_throttle import LogThrottle
from api.model_holder import ModelHolder
from api.problems import Problem
from api.producer import EventProducer
from api.rate_limit import RateLimiter
from api.redis_breaker import RedisBreaker
from api.seen_cache import SeenCache
from learner.gate.gate import QualityGate
from recstream import metrics
from recstream.settings import Scope, Settings
from store.hidden_items import HiddenItems
from store.model_store import ModelStore

log = logging.getLogger(__name__)


@dataclass
class ApiState:
    settings: Settings
    redis: aioredis.Redis
    store: ModelStore
    models: ModelHolder
    producer: EventProducer
    keys: KeyRing
    limiter: RateLimiter
    seen: SeenCache
    hidden_items: HiddenItems
    #: The quality gate's rules that read only the event and the time: ingest says which events the worker will hold
    ingest_gate: QualityGate
    #: Optional Redis reads on the request path (seen sets) go through it, so a Redis outage degrades
    #: them at once instead of costing every request a timeout.
    redis_breaker: RedisBreaker = field(default_factory=RedisBreaker)


async def get_state(request: Request) -> ApiState:
    # async on purpose: FastAPI runs sync dependencies in a thread pool, which costs a thread hop per request.
    return request.app.state.recstream


# Declared as security schemes so the OpenAPI page documents them and offers "Authorize";
# auto_error=False because the 401 below explains what to send.
bearer_scheme = HTTPBearer(
    auto_error=False, scheme_name="BearerKey", description="An API key: `Authorization: Bearer <key>`."
)
header_scheme = APIKeyHeader(
    name="X-API-Key", auto_error=False, scheme_name="HeaderKey", description="The same API key in `X-API-Key`."
)

HOW_TO_SEND = "send `Authorization: Bearer <key>` or `X-API-Key: <key>`"
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "model": Problem,
        "description": "No API key, or one the service does not know (`WWW-Authenticate` says which).",
    },
    403: {"model": Problem, "description": "The API key lacks the scope this endpoint needs."},
    429: {"model": Problem, "description": "This key's rate limit is spent; retry after `Retry-After` seconds."},
}


#: The 503 of a route that reads or writes Redis (the app's handler answers it when Redis does not).
REDIS_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {
        "model": Problem,
        "description": "Redis did not answer, answered read-only (a failover), is out of memory or refused the "
        "command; retry after `Retry-After` seconds (for a change, `GET /v1/models` or `GET /v1/gate` says whether it "
        "took effect). Without `Retry-After`, Redis refused the API's credentials or their rights: an operator must "
        "fix them.",
    },
}


def _unauthorized(detail: str, error: str | None = None) -> HTTPException:
    challenge = 'Bearer realm="recstream"' + (f', error="{error}"' if error else "")
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": challenge})


def _where(request: Request) -> str:
    """``GET /v1/...`` for a refusal's message (built only then: ``request.url`` parses the URL)."""
    return f"{request.method} {request.url.path}"


def presented_key(request: Request) -> str | None:
    """The API key a request carries, read as the two security schemes read it: ``Authorization: Bearer <key>``,
    else ``X-API-Key``."""
    scheme, credentials = get_authorization_scheme_param(request.headers.get("authorization"))
    if credentials and scheme.lower() == "bearer":
        return credentials
    return request.headers.get("x-api-key") or None


_unknown_key_log, _scope_log = LogThrottle(), LogThrottle()


def _since(held_back: int) -> str:
    return f" ({held_back} more refused so since the last line)" if held_back else ""


async def authorise(request: Request, state: ApiState, scope: Scope, presented: str | None) -> Principal:
    """The principal of the key ``presented`` if it has ``scope`` and is within its rate limit; else the 401, 403
    or 429 that says what to do."""
    if not state.settings.auth_enabled:
        return ANONYMOUS
    if not presented:
        metrics.AUTH_REFUSALS.labels("missing").inc()
        if request.headers.get("authorization"):
            raise _unauthorized(f"the Authorization header must be `Bearer <key>`; {HOW_TO_SEND}", "invalid_request")
        raise _unauthorized(f"{_where(request)} needs an API key with scope '{scope}': {HOW_TO_SEND}")
    principal = state.keys.identify(presented)
    if principal is None:
        metrics.AUTH_REFUSALS.labels("unknown").inc()
        if (held := _unknown_key_log.ready()) is not None:  # (anyone can send these: a line a minute at most)
            client = request.client.host if request.client else "?"
            log.info("refused %s from %s: unknown API key%s", _where(request), client, _since(held))
        raise _unauthorized(
            "this API key is not recognised (revoked, mistyped, or for another deployment); "
            "ask the operator for a valid key",
            "invalid_token",
        )
    if scope not in principal.scopes:
        where = _where(request)
        metrics.AUTH_REFUSALS.labels("scope").inc()
        if (held := _scope_log.ready()) is not None:
            log.info("refused %s for key '%s': scope '%s' missing%s", where, principal.name, scope, _since(held))
        raise HTTPException(
            status_code=403,
            detail=f"API key '{principal.name}' has scopes {sorted(principal.scopes)}; {where} needs scope "
            f"'{scope}'. Ask the operator for a key with that scope (`recstream keys create --scopes {scope}`).",
        )
    wait = await state.limiter.retry_after(principal.name, scope)
    if wait is not None:
        raise HTTPException(
            status_code=429,
            detail=f"API key '{principal.name}' is over its '{scope}' rate limit; retry after {wait} s "
            f"(RECSTREAM_RATE_LIMIT_{scope.upper()}_PER_SECOND / _BURST)",
            headers={"Retry-After": str(wait)},
        )
    return principal


def require_scope(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the request carries a known API key with ``scope``, within the key's rate limit."""

    async def authorised_principal(
        request: Request,
        state: Annotated[ApiState, Depends(get_state)],
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
        header_key: Annotated[str | None, Security(header_scheme)],
    ) -> Principal:
        return await authorise(request, state, scope, bearer.credentials if bearer is not None else header_key)

    return authorised_principal


#: The admin scope's dependency, one object for the admin routers and their routes: FastAPI runs a dependency once a
#: request only when it is the same callable (else the key's check, and its rate limit, ran twice).
ADMIN = require_scope("admin")
#: A route parameter: the principal of the request's admin key (its name is recorded with what the route changes).
Admin = Annotated[Principal, Depends(ADMIN)]


#: The ``security`` the two schemes give a route that depends on :func:`require_scope`: the ``openapi_extra`` of a route
#: that calls :func:`authorise` itself (the recommendations route).
KEY_SCHEMES = {"security": [{bearer_scheme.scheme_name: []}, {header_scheme.scheme_name: []}]}
