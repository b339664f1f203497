"""``GET /v1/users/{user_id}/recommendations`` and ``POST /v1/scores``.

Both answer from the model in this process's memory. Recommendations leave out the items an operator hid
(:mod:`api.hidden_items`), and what the user already saw: their seen set, held in memory once read from Redis and
kept current from the seen log (:mod:`api.seen_cache`); when it must be read and Redis cannot be reached (or failed
less than a second ago, see :mod:`api.redis_breaker`) the list is served without that exclusion and marked
``"degraded": true`` instead of failing.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from api.deps import AUTH_RESPONSES, KEY_SCHEMES, ApiState, authorise, get_state, presented_key, require_scope
from api.log_throttle import LogThrottle
from api.params import Parameter, documented, read_all
from api.problems import Problem, refuse
from api.redis_breaker import RedisUnavailable
from learner.serving import ServingModel
from recstream import metrics
from recstream.events import ID_PATTERN, Identifier

log = logging.getLogger(__name__)

_degraded_log = LogThrottle()  # (one line a minute while lists are served degraded)
# the counter's children by source, looked up once (labels() per request was ~2% of a recommendation's CPU)
_SERVED = {source: metrics.RECOMMENDATIONS_SERVED.labels(source) for source in ("model", "popular")}

router = APIRouter(tags=["recommendations"], responses=AUTH_RESPONSES)

UserId = Annotated[str, Path(min_length=1, max_length=128, pattern=ID_PATTERN, description="The user's id.")]
Count = Annotated[
    int | None,
    # (no upper bound here: the route refuses a k over RECSTREAM_K_MAX, naming it, whatever the k)
    Query(ge=1, description="How many items (default RECSTREAM_K_DEFAULT, at most RECSTREAM_K_MAX)."),
]
#: At most this many item ids in a request's ``exclude``: 100 ids of 128 characters stay under the request head's
#: bound (RECSTREAM_MAX_HEADER_BYTES, 64 KiB) even with every character percent-encoded (tests/test_request_params.py).
MAX_EXCLUDE = 100
_ID = ID_PATTERN.removeprefix("^").removesuffix("$")
ItemIds = Annotated[
    str | None,
    Query(
        max_length=MAX_EXCLUDE * 129,  # (the count and each id's length are checked by the route, naming them)
        pattern=rf"^{_ID}(,{_ID})*$",
        description=f"Item ids to leave out of this list, comma-separated, given once (at most {MAX_EXCLUDE} ids of "
        "1-128 characters): those a feed shows already, or showed a moment ago, whose events the model has not "
        "learned yet (the items of learned events are left out anyway).",
    ),
]
# The recommendations route reads these itself (api/params.py): FastAPI's solver cost it ~9% of its CPU.
_USER_ID = Parameter("user_id", "path", UserId)
_K = Parameter("k", "query", Count)
_EXCLUDE = Parameter("exclude", "query", ItemIds)


class ScoredItem(BaseModel):
    item_id: str
    score: float = Field(
        description="Model ranking score, higher is better (source=model), "
        "or the item's share of positive events (source=popular)."
    )


class RecommendationList(BaseModel):
    user_id: str
    recommendation_id: str = Field(
        description="Echo it in the events this list leads to (`context.rec_id`) to measure engagement."
    )
    model_version: int
    source: str = Field(
        description='"model": personalised; "popular": the user is unknown to the model, so popular items.'
    )
    items: list[ScoredItem]
    degraded: bool = Field(
        False,
        description="true: Redis was unreachable (served from the model in memory): the items the user already "
        "saw were left out only as far as this API process held them (as of its last sync), else not at all; the "
        "hidden items as of its last sync.",
    )


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is refused, naming it, as events' are

    user_id: Identifier
    item_ids: list[Identifier] = Field(min_length=1, max_length=1000)


class ScoreResult(BaseModel):
    user_id: str
    model_version: int
    scores: list[float | None] = Field(
        description="Probability-like score of a like, one per requested item in order; "
        "null for items the model has never been given in any event."
    )


def _model(state: ApiState) -> ServingModel:
    model = state.models.model
    if model is None:
        raise HTTPException(
            status_code=503,
            detail="no model is loaded yet: the worker has not written its first checkpoint "
            "(publish events, then retry)",
            headers={"Retry-After": str(state.settings.retry_after_seconds)},
        )
    return model


@router.get(
    "/v1/users/{user_id}/recommendations",
    response_model=RecommendationList,
    responses={503: {"model": Problem, "description": "No model yet."}},
    # the hot path: no dependencies for FastAPI to solve. It checks the key as require_scope("read") does, then reads
    # and validates user_id, k and exclude as FastAPI would (api/params.py); its OpenAPI page documents them, and the
    # key.
    openapi_extra={**KEY_SCHEMES, **documented(_USER_ID, _K, _EXCLUDE)},
)
async def recommendations(request: Request) -> Any:
    state: ApiState = request.app.state.recstream
    await authorise(request, state, "read", presented_key(request))
    user_id, k, excluded = read_all(request, _USER_ID, _K, _EXCLUDE)
    settings = state.settings
    k = settings.k_default if k is None else k
    if k > settings.k_max:
        raise refuse("query", "k", f"k={k} is above the limit of {settings.k_max} (RECSTREAM_K_MAX)")
    asked = _ids_to_exclude(excluded, request) if excluded else None
    model = _model(state)
    degraded = False
    held = state.seen.held(user_id)
    if held is not None:
        seen, rows = held, held.rows_in(model.item_index)
        if not state.models.redis_ok:  # the set is as of the last sync: it may lack what was seen since
            degraded = True
            _degraded(None)
    else:
        rows = None
        try:
            seen = await state.redis_breaker.call(lambda: state.seen.read(user_id))
        except RedisUnavailable as exc:
            seen, degraded = set(), True
            _degraded(exc)
    if asked:  # the request's own, with the seen set (whose rows it keeps, when held)
        seen = seen | asked
        if rows is not None:
            rows = np.concatenate((rows, np.fromiter(model.item_index.rows(asked), np.int64)))
    hidden = state.models.hidden  # items an operator took down (api/hidden_items.py)
    rec = model.recommend(user_id, k, exclude=seen, exclude_rows=rows, hidden=hidden.items if hidden else frozenset())
    (_SERVED.get(rec.source) or metrics.RECOMMENDATIONS_SERVED.labels(rec.source)).inc()
    # Serialised directly (same shape as RecommendationList): this is the hot path.
    body = {
        "user_id": user_id,
        "recommendation_id": new_recommendation_id(),
        "model_version": model.version,
        "source": rec.source,
        "items": [{"item_id": item, "score": score} for item, score in rec.items],
        "degraded": degraded,
    }
    return Response(orjson.dumps(body), media_type="application/json")


def _ids_to_exclude(excluded: str, request: Request) -> set[str]:
    """The ids of a valid ``exclude`` (its pattern checked: ids joined by commas), refused when given more than once
    (as FastAPI takes a parameter, the last would count: the others' ids would be served), past :data:`MAX_EXCLUDE` ids
    or with an id over 128 characters."""
    if len(request.query_params.getlist("exclude")) > 1:
        raise refuse("query", "exclude", "exclude is given more than once: give it once, its item ids comma-separated")
    ids = excluded.split(",")
    if len(ids) > MAX_EXCLUDE:
        raise refuse("query", "exclude", f"exclude has {len(ids)} item ids; at most {MAX_EXCLUDE} are taken")
    long = next((i for i in ids if len(i) > 128), None)
    if long is not None:
        raise refuse("query", "exclude", f"item id {long[:20]}… in exclude is {len(long)} characters; at most 128")
    return set(ids)


def new_recommendation_id() -> str:
    """What ``uuid.uuid4().hex`` gives (16 random bytes, the version-4 and variant bits set), without building a
    ``UUID`` object (which was ~2% of a recommendation's CPU).

    >>> import uuid
    >>> uuid.UUID(new_recommendation_id()).version
    4
    """
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    return raw.hex()


def _degraded(exc: RedisUnavailable | None) -> None:
    """Count a list served degraded; log at most once a minute. ``exc``: the seen set could not be read (none is
    left out); None: a held set was left out while Redis is unreachable (it may lack what was seen since)."""
    metrics.RECOMMENDATIONS_DEGRADED.inc()
    if exc is not None and exc.__cause__ is not None:  # a real failure, not a call skipped by the open breaker
        metrics.REDIS_ERRORS.labels("api").inc()
    if _degraded_log.ready() is not None:
        if exc is None:
            log.warning(
                "Redis is unreachable: recommendations leave out the seen sets this process holds, as of its last "
                'sync, and no others ("degraded": true)'
            )
        else:
            log.warning(
                "cannot read seen sets from Redis (%s); serving recommendations from the model in memory "
                'without excluding seen items ("degraded": true)',
                exc,
            )


@router.post(
    "/v1/scores",
    response_model=ScoreResult,
    responses={503: {"model": Problem, "description": "No model yet."}},
    dependencies=[Depends(require_scope("read"))],
)
async def scores(request: ScoreRequest, state: Annotated[ApiState, Depends(get_state)]) -> Any:
    model = _model(state)
    return ScoreResult(
        user_id=request.user_id, model_version=model.version, scores=model.score(request.user_id, request.item_ids)
    )
