"""Items an operator hid: taken down (removed by its owner, by moderation, out of licence) and so never
recommended, whatever the model learned, until unhidden.

Hiding changes no model: the worker goes on learning from the item's events, and unhiding it serves it again at
once, ranked as the model now ranks it. Every API process leaves the hidden items out of every list it serves
(api/hidden_items.py): a change is announced on the model's announce channel, so API processes apply it within
moments, or at their next poll (``RECSTREAM_MODEL_POLL_SECONDS``) if the announcement is lost.

In Redis: a hash item id -> ``{"at", "reason", "actor"}`` (:attr:`store.keys.Keys.hidden_items`), a counter moved by
every change (what API processes check before reading the hash again) and the last :data:`HISTORY_KEPT` changes.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis.asyncio as aioredis

from store.keys import Keys

log = logging.getLogger(__name__)

#: Hides and unhides kept in the history (the newest).
HISTORY_KEPT = 1000


class HiddenItems:
    """Hides, unhides and lists the hidden items under one key prefix."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def hide(self, item_id: str, reason: str, actor: str = "operator") -> bool:
        """Hide ``item_id`` (known to the model or not: one not seen yet stays hidden when its events come); whether
        it was not hidden already (hiding it again records the new reason)."""
        return await self._change(item_id, reason, actor, hide=True)

    async def unhide(self, item_id: str, reason: str, actor: str = "operator") -> bool:
        """Serve ``item_id`` again; whether it was hidden."""
        return await self._change(item_id, reason, actor, hide=False)

    async def _change(self, item_id: str, reason: str, actor: str, hide: bool) -> bool:
        """One transaction: the change, the counter and the history; then the announcement. Whether the hash
        changed membership (an item hidden anew, or unhidden)."""
        keys = self.keys
        record = {"at": time.time(), "reason": reason, "actor": actor}
        change = "hide" if hide else "unhide"
        async with self.redis.pipeline(transaction=True) as pipe:
            if hide:
                pipe.hset(keys.hidden_items, item_id, json.dumps(record))
            else:
                pipe.hdel(keys.hidden_items, item_id)
            pipe.incr(keys.hidden_items_changes)
            pipe.rpush(keys.hiding_history, json.dumps({"item_id": item_id, "change": change, **record}))
            pipe.ltrim(keys.hiding_history, -HISTORY_KEPT, -1)
            answers = await pipe.execute()
        try:
            await self.redis.publish(keys.announce_channel, "hidden-items")
        except Exception as exc:  # noqa: BLE001 - committed; API processes also poll
            log.warning("the %s of %r is committed but its announcement failed (%s); API processes poll", change,
                        item_id, exc)  # fmt: skip
        return bool(answers[0])

    async def changes(self) -> int:
        """The change counter (0 before the first change)."""
        raw = await self.redis.get(self.keys.hidden_items_changes)
        return int(raw) if raw is not None else 0

    async def read(self) -> tuple[int, set[str]]:
        """The change counter and the hidden item ids, read together (one transaction)."""
        keys = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(keys.hidden_items_changes)
            pipe.hkeys(keys.hidden_items)
            raw, ids = await pipe.execute()
        return (int(raw) if raw is not None else 0), {i.decode() if isinstance(i, bytes) else i for i in ids}

    async def listing(self) -> list[dict[str, Any]]:
        """Every hidden item with when, why and by whom it was hidden, in order of item id."""
        raw = await self.redis.hgetall(self.keys.hidden_items)
        out = []
        for item_id, value in raw.items():
            name = item_id.decode() if isinstance(item_id, bytes) else item_id
            out.append({"item_id": name, **json.loads(value)})
        return sorted(out, key=lambda entry: entry["item_id"])

    async def history(self, last: int = 100) -> list[dict[str, Any]]:
        """The last ``last`` hides and unhides, oldest first."""
        return [json.loads(r) for r in await self.redis.lrange(self.keys.hiding_history, -last, -1)]
