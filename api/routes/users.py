"""``/v1/users/{user_id}/erase``: erase a user (the right to be forgotten), and see where the erasure is (admin
scope). learner/erasure.py says what the worker erases; docs/operations.md ("Erase a user") what stays, and for how
long."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from api.deps import ADMIN, AUTH_RESPONSES, REDIS_RESPONSES, Admin, ApiState, get_state
from api.routes.models import Reason
from api.routes.recommendations import UserId

router = APIRouter(tags=["users"], dependencies=[Depends(ADMIN)], responses={**AUTH_RESPONSES, **REDIS_RESPONSES})


class Erasure(BaseModel):
    user_id: str
    state: Literal["waiting", "erased", "none"] = Field(
        description="`waiting`: the worker erases the user at its next checkpoint (usually within a second or two); "
        "`erased`: done, by `version`; `none`: no erasure waiting or recorded (RECSTREAM_ERASURE_KEPT_DAYS after it "
        "was asked for, it is forgotten)."
    )
    requested: float | None = Field(None, description="When it was asked for (Unix seconds).")
    applied: float | None = Field(None, description="When the worker erased the user (Unix seconds).")
    version: int | None = Field(
        None,
        description="The model version that erased the user: the versions before it are not promoted again (409).",
    )


@router.post("/v1/users/{user_id}/erase", status_code=202, response_model=Erasure, response_model_exclude_none=True)
async def erase_user(
    user_id: UserId,
    body: Reason,
    state: Annotated[ApiState, Depends(get_state)],
    principal: Admin,
) -> Erasure:
    """Erase the user: at its next checkpoint the worker forgets them in every model, deletes their seen set, writes a
    whole version that does not name them, and from then on drops their events stamped before now (a backlog, a
    replay). Their events stamped after now are learned (they came back). Asking again moves that time to now."""
    request = await state.store.erasures.request(user_id, reason=body.reason, actor=f"api:{principal.name}")
    return Erasure(user_id=user_id, state="waiting", requested=request["at"])


@router.get("/v1/users/{user_id}/erase", response_model=Erasure, response_model_exclude_none=True)
async def erasure(user_id: UserId, state: Annotated[ApiState, Depends(get_state)]) -> Erasure:
    """Where the user's erasure is: waiting for the worker, erased (by which version), or none."""
    status = await state.store.erasures.status(user_id)
    status.pop("reason", None)
    return Erasure(user_id=user_id, **status)
