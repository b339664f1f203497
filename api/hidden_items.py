"""The hidden items (store/hidden_items.py) as this API process leaves them out: a set held in memory, read again from
Redis only when its change counter moved.

The model holder syncs it at every refresh, first (each version announced, each hide or unhide announced, else every
``RECSTREAM_MODEL_POLL_SECONDS``), so a list is never served without an item hidden before the last sync; the API
process that takes a hide or an unhide syncs it at once too (api/routes/items.py). A sync that
fails (Redis unreachable) keeps the set held; the next one that succeeds catches up. The set is replaced whole, never
changed in place (a request keeps the one it took).
"""

from __future__ import annotations

import asyncio

from recstream import metrics
from store.hidden_items import HiddenItems


class HiddenItemsHeld:
    def __init__(self, store: HiddenItems) -> None:
        self.store = store
        #: the hidden item ids as of the last sync (do not change it: a sync replaces it)
        self.items: frozenset[str] = frozenset()
        self._changes: int | None = None  # the change counter the set was read at (None: not read yet)
        self._syncing = asyncio.Lock()  # one sync at a time: a later one never ends before an earlier one it overtook

    async def sync(self) -> None:
        """Read the hidden items again if they changed since the last sync; raises Redis's errors (the set held stays
        as it was)."""
        async with self._syncing:
            if self._changes is not None and await self.store.changes() == self._changes:
                return
            changes, ids = await self.store.read()
            self.items, self._changes = frozenset(ids), changes
            metrics.ITEMS_HIDDEN.set(len(ids))
