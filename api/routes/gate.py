"""``GET /v1/gate`` (what the quality gate held, by reason, and the model guard) and ``POST /v1/gate/resume``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from api.deps import AUTH_RESPONSES, ApiState, get_state, require_scope

router = APIRouter(tags=["quality gate"], dependencies=[Depends(require_scope("admin"))], responses=AUTH_RESPONSES)


class GateStatus(BaseModel):
    counts: dict[str, int] = Field(description="Events held or dropped since the start, by reason code.")
    guard: dict[str, str] = Field(description='Model guard: state "learning" or "paused", and since when.')


@router.get("/v1/gate", response_model=GateStatus)
async def gate_status(state: Annotated[ApiState, Depends(get_state)]) -> GateStatus:
    return GateStatus(counts=await state.store.gate_counts(), guard=await state.store.guard_status())


@router.post("/v1/gate/resume", status_code=202)
async def resume_learning(state: Annotated[ApiState, Depends(get_state)]) -> dict[str, str]:
    """Ask the worker to resume learning after the model guard paused it (applied at its next checkpoint)."""
    await state.store.request_resume()
    return {"status": "resume requested"}
