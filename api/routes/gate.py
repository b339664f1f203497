"""``GET /v1/gate`` (what the quality gate held, by reason, and the model guard) and ``POST /v1/gate/resume``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from api.deps import ADMIN, AUTH_RESPONSES, REDIS_RESPONSES, ApiState, get_state
from api.problems import Problem
from store.model_store import guard_report

router = APIRouter(
    tags=["quality gate"],
    dependencies=[Depends(ADMIN)],
    responses={**AUTH_RESPONSES, **REDIS_RESPONSES},
)


class GuardReport(BaseModel):
    state: str | None = Field(description='"learning" or "paused"; null before any worker reported.')
    since: float | None = Field(description="When learning was paused (Unix seconds); null while learning.")
    reference: float | None = Field(description="The loss the guard compares recent losses with; null until known.")
    reference_count: int | None = Field(description="The labelled events behind that reference.")


class GateStatus(BaseModel):
    counts: dict[str, int] = Field(description="Events held or dropped since the start, by reason code.")
    guard: GuardReport = Field(description="The model guard, as the worker's last checkpoint reported it.")


@router.get("/v1/gate", response_model=GateStatus)
async def gate_status(state: Annotated[ApiState, Depends(get_state)]) -> GateStatus:
    guard = GuardReport(**guard_report(await state.store.guard_status()))
    return GateStatus(counts=await state.store.gate_counts(), guard=guard)


@router.post(
    "/v1/gate/resume",
    status_code=202,
    responses={
        409: {
            "model": Problem,
            "description": "Learning is not paused (as last reported by the worker): nothing to resume.",
        }
    },
)
async def resume_learning(state: Annotated[ApiState, Depends(get_state)]) -> dict[str, str]:
    """Ask the worker to resume learning after the model guard paused it (applied at its next checkpoint).

    Refused (409) unless the worker's last checkpoint reported the guard paused: a request made
    while it learns would otherwise wait in Redis and cancel the next pause the moment it began.
    """
    guard = await state.store.guard_status()
    if guard.get("state") != "paused":
        reported = guard.get("state")
        raise HTTPException(
            status_code=409,
            detail=(
                f"learning is not paused: the model guard's state at the worker's last checkpoint is {reported!r}"
                if reported
                else "learning is not paused: no worker has reported the model guard's state yet"
            )
            + "; nothing to resume (GET /v1/gate shows it; a pause shows there from the checkpoint after it)",
        )
    since = guard.get("since", "")
    await state.store.request_resume(since)  # names this pause: a later one is not ended by it
    return {"status": "resume requested", "paused_since": since}
