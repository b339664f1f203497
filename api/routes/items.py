"""``/v1/items``: hide an item (take it down: never recommended, to anyone, until unhidden), unhide it, list what is
hidden (admin scope). store/hidden_items.py says what hiding does and does not change."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, Field
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.deps import AUTH_RESPONSES, REDIS_RESPONSES, ApiState, get_state, require_scope
from api.routes.models import Reason
from recstream.events import ID_PATTERN

router = APIRouter(
    tags=["items"], dependencies=[Depends(require_scope("admin"))], responses={**AUTH_RESPONSES, **REDIS_RESPONSES}
)

ItemId = Annotated[str, Path(min_length=1, max_length=128, pattern=ID_PATTERN, description="The item's id.")]


class HiddenChange(BaseModel):
    item_id: str
    hidden: bool = Field(description="Whether the item is hidden now.")
    changed: bool = Field(description="false: it already was (hidden again: the new reason is recorded).")
    applied: bool = Field(
        description="Whether this API process already leaves it out (true unless Redis stopped answering right after "
        "the change); every other API process does within a second or so (RECSTREAM_MODEL_POLL_SECONDS at most)."
    )


@router.get("/v1/items/hidden")
async def hidden_items(state: Annotated[ApiState, Depends(get_state)]) -> dict[str, Any]:
    """Every hidden item (when, why and by whom it was hidden) and the last 100 hides and unhides, oldest first."""
    store = state.hidden_items
    return {"items": await store.listing(), "history": await store.history()}


@router.post("/v1/items/{item_id}/hide", response_model=HiddenChange)
async def hide_item(item_id: ItemId, body: Reason, state: Annotated[ApiState, Depends(get_state)]) -> HiddenChange:
    """Take the item down: no recommendation list leaves it in, for any user (the model keeps learning from its
    events; scores still answer for it). An item the model does not know yet may be hidden too."""
    changed = await state.hidden_items.hide(item_id, reason=body.reason, actor="api")
    return HiddenChange(item_id=item_id, hidden=True, changed=changed, applied=await _applied(state, item_id, True))


@router.post("/v1/items/{item_id}/unhide", response_model=HiddenChange)
async def unhide_item(item_id: ItemId, body: Reason, state: Annotated[ApiState, Depends(get_state)]) -> HiddenChange:
    """Recommend the item again, ranked as the model ranks it now."""
    changed = await state.hidden_items.unhide(item_id, reason=body.reason, actor="api")
    return HiddenChange(item_id=item_id, hidden=False, changed=changed, applied=await _applied(state, item_id, False))


async def _applied(state: ApiState, item_id: str, hidden: bool) -> bool:
    """Sync this process's hidden items now (the others do at the announcement); whether it has the change."""
    with contextlib.suppress(RedisConnectionError, RedisTimeoutError):  # the change is done: not an error
        await state.models.refresh()
    held = state.models.hidden
    return held is not None and (item_id in held.items) == hidden
