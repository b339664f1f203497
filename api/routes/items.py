"""``/v1/items``: hide an item (take it down: never recommended, to anyone, until unhidden), unhide it, list what is
hidden (admin scope). store/hidden_items.py says what hiding does and does not change."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field

from api.deps import ADMIN, AUTH_RESPONSES, REDIS_RESPONSES, Admin, ApiState, get_state
from api.routes.models import Reason
from recstream.events import ID_PATTERN

log = logging.getLogger(__name__)

#: Most hidden items one page lists.
MAX_PAGE = 10_000

router = APIRouter(tags=["items"], dependencies=[Depends(ADMIN)], responses={**AUTH_RESPONSES, **REDIS_RESPONSES})

ItemId = Annotated[str, Path(min_length=1, max_length=128, pattern=ID_PATTERN, description="The item's id.")]


class HiddenChange(BaseModel):
    item_id: str
    hidden: bool = Field(description="Whether the item is hidden now.")
    changed: bool = Field(description="false: it already was (hidden again: the new reason is recorded).")
    applied: bool = Field(
        description="Whether this API process already applies it (false if reading the change back failed, or another "
        "change of the item landed meanwhile); "
        "every other API process does when the change is announced (typically within a second), or at its next poll "
        "(RECSTREAM_MODEL_POLL_SECONDS) if the announcement was lost."
    )


class HiddenItem(BaseModel):
    item_id: str
    at: float = Field(description="When it was hidden (Unix seconds).")
    reason: str
    actor: str = Field(description="Who hid it: `api:<API key name>` (`api:anonymous` with auth off) or `cli`.")


class HidingChange(HiddenItem):
    change: str = Field(description='"hide" or "unhide".')


class HiddenItemsList(BaseModel):
    count: int = Field(description="How many items are hidden.")
    items: list[HiddenItem] = Field(description="Hidden items by item id: the first `limit` after `after`.")
    next: str | None = Field(description="The `after` of the next page (null: this is the last).")
    history: list[HidingChange] = Field(description="The last 100 hides and unhides, oldest first.")


@router.get("/v1/items/hidden", response_model=HiddenItemsList)
async def hidden_items(
    state: Annotated[ApiState, Depends(get_state)],
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="How many hidden items to list.")] = 1000,
    after: Annotated[
        str | None, Query(max_length=128, description="List the items after this item id (a page's `next`).")
    ] = None,
) -> dict[str, Any]:
    """Hidden items (when, why and by whom each was hidden), a page at a time in order of item id, and the last 100
    hides and unhides, oldest first."""
    store = state.hidden_items
    every = await store.listing()
    following = every if after is None else [entry for entry in every if entry["item_id"] > after]
    page = following[:limit]
    more = len(following) > limit
    return {
        "count": len(every),
        "items": page,
        "next": page[-1]["item_id"] if more else None,
        "history": await store.history(),
    }


@router.post("/v1/items/{item_id}/hide", response_model=HiddenChange)
async def hide_item(
    item_id: ItemId, body: Reason, state: Annotated[ApiState, Depends(get_state)], principal: Admin
) -> HiddenChange:
    """Take the item down: no recommendation list leaves it in, for any user (the model keeps learning from its
    events; scores still answer for it). An item the model does not know yet may be hidden too. Recorded with the
    reason and the API key's name."""
    changed = await state.hidden_items.hide(item_id, reason=body.reason, actor=f"api:{principal.name}")
    return HiddenChange(item_id=item_id, hidden=True, changed=changed, applied=await _applied(state, item_id, True))


@router.post("/v1/items/{item_id}/unhide", response_model=HiddenChange)
async def unhide_item(
    item_id: ItemId, body: Reason, state: Annotated[ApiState, Depends(get_state)], principal: Admin
) -> HiddenChange:
    """Recommend the item again, ranked as the model ranks it now."""
    changed = await state.hidden_items.unhide(item_id, reason=body.reason, actor=f"api:{principal.name}")
    return HiddenChange(item_id=item_id, hidden=False, changed=changed, applied=await _applied(state, item_id, False))


async def _applied(state: ApiState, item_id: str, hidden: bool) -> bool:
    """Sync this process's hidden items now (the others do at the announcement); whether it has the change. The change
    is committed: a failure here is logged, not answered as one (the next refresh syncs)."""
    held = state.models.hidden
    if held is None:
        return False
    try:
        await held.sync()
    except Exception:  # committed already; the refresh loop syncs again
        log.warning("the %s of %r is committed; syncing this process's hidden items failed (retried at the next "
                    "refresh)", "hide" if hidden else "unhide", item_id, exc_info=True)  # fmt: skip
    return (item_id in held.items) == hidden
