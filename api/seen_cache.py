"""Users' seen sets for the recommendation path, kept in the API process's memory and current from Redis's seen log.

A recommendation excludes what the user already interacted with: their seen set, which the worker adds to in
every checkpoint's transaction. Read from Redis on every request, it cost ~0.3 ms of a ~0.8 ms request at 100k
items (redis-py's asynchronous client; docs/performance-history.md). So a set is read once, on the user's first request,
and kept (least recently served users are forgotten past ``max_items`` entries in all: one per item of their
sets, ~100 B each, and :data:`USER_ENTRIES` per user held, ~370 B even with an empty set, so a flood of unknown
user ids stays bounded too). The same transaction appends the checkpoint's additions to the seen log (a Redis
stream, ``store.keys.Keys.seen_log``), and :meth:`sync` (run by the model holder at every refresh, after it reads
the current version: at each announced version, else every ``RECSTREAM_MODEL_POLL_SECONDS``) adds them to the
sets held. A held set is then what Redis holds as of the last entry synced, never older than the model served.

What keeps that true:

* a set read while a sync ran is not kept (the read may have missed entries the sync then added elsewhere);
* when the log lost entries the cache has not seen (trimmed past ``SEEN_LOG_ENTRIES`` while this process was
  behind, deleted, or made anew), every set is forgotten and read again, after the next sync that succeeds; until
  then nothing is kept.

A sync that fails (Redis unreachable) changes nothing: the sets held stay as of the last entry synced, and the next
sync that succeeds reads the log from there. Meanwhile the recommendation path still leaves out a held set, and
says its answer is degraded (the set may lack what was added since): api/routes/recommendations.py.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from learner.id_index import IdIndex
from recstream import metrics
from store.model_store import ModelStore

#: What one user held counts for against ``max_items``, besides their items (measured: ~100 B an item held, ~370 B a
#: user held with an empty set).
USER_ENTRIES = 4

_HITS, _MISSES = metrics.SEEN_CACHE_LOOKUPS.labels("hit"), metrics.SEEN_CACHE_LOOKUPS.labels("miss")


class HeldSet(set[str]):
    """A seen set held, with its rows in the served model's item index kept between requests (mapping the ids
    cost ~0.7 µs an id a request: ~40 µs of a ~230 µs ranking at 56 ids, ~130 µs at 2,000)."""

    __slots__ = ("_rows", "_rows_of", "_rows_size")

    def __init__(self, items: set[str]) -> None:
        super().__init__(items)
        self._rows: np.ndarray | None = None
        self._rows_of: IdIndex | None = None
        self._rows_size = -1

    def rows_in(self, index: IdIndex) -> np.ndarray:
        """The rows of the ids ``index`` knows: mapped again when this set or the index changed (a new version's
        index, or one a delta grew: its ids only ever get added, so an unchanged size is an unchanged index)."""
        rows = self._rows
        if rows is None or self._rows_of is not index or self._rows_size != len(index):
            self._rows = rows = np.fromiter(index.rows(self), np.int64)
            self._rows_of, self._rows_size = index, len(index)
        return rows

    def add_items(self, items: list[str]) -> int:
        """Add ``items``; how many were new."""
        before = len(self)
        self.update(items)
        self._rows = None
        return len(self) - before


class SeenCache:
    def __init__(self, store: ModelStore, max_items: int) -> None:
        self.store = store
        self.max_items = max_items
        self._users: OrderedDict[str, HeldSet] = OrderedDict()  # least recently served first
        self._entries = 0  # the items of the sets held + USER_ENTRIES a user
        self._after: str | None = None  # the newest log entry applied; None: not in step with the log (keep nothing)
        self._syncs = 0  # counts syncs that moved on or forgot: a read that spans one is not kept

    def __len__(self) -> int:
        return len(self._users)

    @property
    def entries(self) -> int:
        """The items of the sets held plus :data:`USER_ENTRIES` per user (what ``max_items`` bounds)."""
        return self._entries

    def held(self, user_id: str) -> HeldSet | None:
        """The user's seen set if this process holds it (do not change it), else None: :meth:`read` it."""
        held = self._users.get(user_id)
        if held is not None:
            self._users.move_to_end(user_id)
            _HITS.inc()
        return held

    async def read(self, user_id: str) -> set[str]:
        """The user's seen set read from Redis (whose errors this raises), then held if it can be (module doc)."""
        _MISSES.inc()
        syncs = self._syncs
        items = await self.store.seen(user_id)
        if self._after is not None and syncs == self._syncs and len(items) + USER_ENTRIES <= self.max_items:
            self._users[user_id] = HeldSet(items)
            self._entries += len(items) + USER_ENTRIES
            self._evict()
        return items

    async def sync(self) -> None:
        """Add the seen log's new entries to the sets held (or forget them all: module doc); raises Redis's errors
        (the sets held stay as they were)."""
        if self.max_items <= 0:
            return
        newest, additions = await self.store.seen_additions(self._after)
        if additions is None or self._after is None:
            self.forget()
        elif additions:
            self._apply(additions)
        if newest != self._after:
            self._syncs += 1
        self._after = newest

    def forget(self) -> None:
        """Drop every set held, and keep none until the next sync."""
        self._users.clear()
        self._entries = 0
        self._after = None
        self._syncs += 1
        metrics.SEEN_CACHE_USERS.set(0)

    def _apply(self, additions: list[str]) -> None:
        users = self._users
        added = 0
        for lines in additions:
            for line in lines.split("\n"):
                user, _, items = line.partition(" ")
                held = users.get(user)
                if held is not None:
                    added += held.add_items(items.split(" "))
        self._entries += added
        self._evict()

    def _evict(self) -> None:
        users = self._users
        while self._entries > self.max_items and users:
            _, items = users.popitem(last=False)
            self._entries -= len(items) + USER_ENTRIES
        metrics.SEEN_CACHE_USERS.set(len(users))
