"""``/v1/models``: list, inspect, promote, roll back and pin model versions (admin scope)."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.deps import ADMIN, AUTH_RESPONSES, REDIS_RESPONSES, Admin, ApiState, get_state
from api.problems import Problem
from store.model_store import PROMOTIONS_KEPT, BeforeErasure, CheckpointConflict, SnapshotRefused

router = APIRouter(tags=["models"], dependencies=[Depends(ADMIN)], responses={**AUTH_RESPONSES, **REDIS_RESPONSES})

Version = Annotated[int, Path(ge=1, description="A model version number.")]


class Reason(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is refused, naming it, as events' are

    reason: str = Field(min_length=1, max_length=500, description="Why (recorded with the change, in its history).")


class Serving(BaseModel):
    current: int | None = Field(description="The version now current in Redis.")
    serving: int | None = Field(description="The version this API process serves (swaps within a second).")


@router.get("/v1/models")
async def list_models(
    state: Annotated[ApiState, Depends(get_state)],
    history: Annotated[
        int, Query(ge=0, le=PROMOTIONS_KEPT, description="How many of the latest promotion records to list.")
    ] = 100,
) -> dict[str, Any]:
    """Retained versions (oldest first) with their metadata, which one is current and served, and the latest
    promotions and rollbacks (oldest first; `recstream models history` lists every one kept)."""
    served = state.models.model.version if state.models.model else None
    return {
        "current": await state.store.current_version(),
        "serving": served,
        "versions": await state.store.versions(),
        "promotions": await state.store.promotions(history),
        "contest": await state.store.contest(),
    }


@router.get("/v1/models/challengers")
async def show_contest(state: Annotated[ApiState, Depends(get_state)]) -> dict[str, Any]:
    """The champion's name, the promotion rule and each challenger's standing (as of the last checkpoint), and an
    operator's request to promote one still pending (``requested``, else null)."""
    contest = await state.store.contest() or {"champion": None, "challengers": {}}
    return {**contest, "requested": await state.store.challenger_request()}


@router.post(
    "/v1/models/challengers/{name}/promote",
    status_code=202,
    responses={404: {"model": Problem, "description": "No challenger of that name runs now (the detail lists them)."}},
)
async def promote_challenger(
    name: Annotated[str, Path(min_length=1, max_length=64, description="A challenger's name.")],
    body: Reason,
    state: Annotated[ApiState, Depends(get_state)],
    principal: Admin,
) -> dict[str, Any]:
    """Ask the worker to make challenger ``name`` the champion at its next checkpoint (about a second
    while events flow; longer with a large model, see RECSTREAM_CHECKPOINT_SHARE); the new version is then
    served like any other."""
    contest = await state.store.contest() or {}
    known = sorted(contest.get("challengers", {}))
    if name not in known:
        raise HTTPException(
            status_code=404,
            detail=f"no challenger named {name!r} runs now (challengers: {', '.join(known) or 'none'}; "
            "configure them with RECSTREAM_CHALLENGERS)",
        )
    await state.store.request_challenger_promotion(name, reason=body.reason, actor=f"api:{principal.name}")
    return {"requested": name, "detail": "the worker promotes it at its next checkpoint; see GET /v1/models"}


@router.get("/v1/models/{version}", responses={404: {"model": Problem, "description": "Not a retained version."}})
async def show_model(version: Version, state: Annotated[ApiState, Depends(get_state)]) -> dict[str, Any]:
    for meta in await state.store.versions():
        if meta["version"] == version:
            return meta
    raise HTTPException(status_code=404, detail=f"model version {version} is not retained (see GET /v1/models)")


@router.post(
    "/v1/models/{version}/promote",
    response_model=Serving,
    responses={
        404: {"model": Problem, "description": "Not a retained version."},
        409: {"model": Problem, "description": "The version's snapshot is refused, or another change came first."},
    },
)
async def promote_model(
    version: Version, body: Reason, state: Annotated[ApiState, Depends(get_state)], principal: Admin
) -> Serving:
    """Make ``version`` current: every API process serves it within a second; the worker continues from it."""
    try:
        await state.store.promote(version, reason=body.reason, actor=f"api:{principal.name}")
    except KeyError as exc:
        raise HTTPException(status_code=404, detail=exc.args[0]) from exc
    except (SnapshotRefused, CheckpointConflict, BeforeErasure) as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    return await _serving(state, version)


@router.post(
    "/v1/models/rollback",
    response_model=Serving,
    responses={
        409: {
            "model": Problem,
            "description": "The current version has no retained parent, its snapshot is refused, or another change "
            "came first.",
        }
    },
)
async def rollback_model(body: Reason, state: Annotated[ApiState, Depends(get_state)], principal: Admin) -> Serving:
    """Undo the latest promotion if no version was written since it (promote the version it replaced); else promote
    the current version's parent (the version it grew from). A promotion or rollback by someone else meanwhile is a
    409, and nothing is changed."""
    try:
        version = await state.store.rollback(reason=body.reason, actor=f"api:{principal.name}")
    except KeyError as exc:
        raise HTTPException(status_code=409, detail=exc.args[0]) from exc
    except (SnapshotRefused, CheckpointConflict, BeforeErasure) as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    return await _serving(state, version)


async def _serving(state: ApiState, current: int) -> Serving:
    """What a change answers once Redis took it: this process loads the new current version now if it can (else its
    refresh does within a second or so, as every other API process's)."""
    with contextlib.suppress(RedisConnectionError, RedisTimeoutError):  # the change is done: not an error
        await state.models.refresh()
    return Serving(current=current, serving=state.models.model.version if state.models.model else None)


@router.post(
    "/v1/models/{version}/pin",
    responses={
        404: {"model": Problem, "description": "Not a retained version."},
        409: {"model": Problem, "description": "Checkpoints kept changing the versions meanwhile; try again."},
    },
)
async def pin_model(version: Version, state: Annotated[ApiState, Depends(get_state)], pinned: bool = True) -> dict:
    """Keep a version beyond retention (``?pinned=false`` to unpin)."""
    try:
        await state.store.pin(version, pinned=pinned)
    except KeyError as exc:
        raise HTTPException(status_code=404, detail=exc.args[0]) from exc
    except CheckpointConflict as exc:  # checkpoints kept changing the versions: try again
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    return {"version": version, "pinned": pinned}
