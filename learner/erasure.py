"""Erasing a user (the right to be forgotten): what the models forget, and which later events are not learned.

A model forgets users with its ``forget_users`` (:func:`learner.base.forget_users`): their factors are zeroed, or
their remembered items emptied, and their id is blanked in the model's index (``~erased~<row>``,
:meth:`learner.id_index.IdIndex.blank`), so no snapshot written after it names them. The model then treats them as a
user it has never seen: popular items for them, and a fresh start if they come back. What their events added to
quantities summed over every user (co-occurrence counts, an item's factors, popularity) stays, as it does in any
aggregate; no single user's events can be told apart in it.

Events of the user still on the topic when the erasure is applied (a backlog, a quarantine replay) would teach the
model again what it just forgot. :class:`Erasures` remembers each erased user by a fingerprint of their id (a salted
SHA-256: not the id, but not anonymous either, as the salt is no secret and a guessable id can be matched by trying
it) and the time of the request, for ``kept_seconds``: an event of theirs stamped at or before that time is dropped,
one stamped after it (they came back) is learned.

>>> erased = Erasures(kept_seconds=3600)
>>> erased.add(fingerprint("u1"), at=1000.0)
>>> erased.drops("u1", 999.0), erased.drops("u1", 1001.0), erased.drops("u2", 999.0)
(True, False, False)
>>> erased.prune(now=1000.0 + 3601) == [fingerprint("u1")]
True
>>> erased.drops("u1", 999.0)
False
"""

from __future__ import annotations

import hashlib

#: Users whose lookup :class:`Erasures` keeps (then it starts again): a backlog repeats its users.
LOOKUPS_KEPT = 100_000

#: Prefixed to an id before hashing it, so a fingerprint here matches no other system's plain SHA-256 of the id.
_SALT = b"recstream-erased-user:"


def fingerprint(user: str) -> str:
    """The hex SHA-256 of ``user`` (salted): how an erased user is remembered, without keeping their id."""
    return hashlib.sha256(_SALT + user.encode()).hexdigest()


class Erasures:
    """Erased users (by :func:`fingerprint`) -> when their erasure was requested (seconds since the epoch)."""

    def __init__(self, kept_seconds: float, entries: dict[str, float] | None = None) -> None:
        self.kept_seconds = kept_seconds
        self._at: dict[str, float] = {}
        #: the latest request time held (-inf: none): an event stamped after it needs no lookup
        self.latest = float("-inf")
        self._looked: dict[str, float | None] = {}  # user id -> their erasure's time (None: not erased), as looked up
        for key, at in (entries or {}).items():
            self.add(key, at)

    def add(self, key: str, at: float) -> None:
        """Remember the fingerprint ``key``, erased at ``at`` (the later of two requests counts)."""
        at = max(at, self._at.get(key, at))
        self._at[key] = at
        self.latest = max(self.latest, at)
        self._looked.clear()

    def drops(self, user: str, ts: float) -> bool:
        """Whether an event of ``user`` stamped ``ts`` is to be dropped (at or before their erasure)."""
        if ts > self.latest:  # the common case: an event after every erasure held (no hashing)
            return False
        looked = self._looked
        if user in looked:  # (a backlog's users repeat: each hashed once, not at each of their events)
            at = looked[user]
        else:
            if len(looked) >= LOOKUPS_KEPT:
                looked.clear()
            at = looked[user] = self._at.get(fingerprint(user))
        return at is not None and ts <= at

    def prune(self, now: float) -> list[str]:
        """Forget erasures requested more than ``kept_seconds`` before ``now``; their fingerprints."""
        old = [key for key, at in self._at.items() if at < now - self.kept_seconds]
        for key in old:
            del self._at[key]
        if old:
            self.latest = max(self._at.values(), default=float("-inf"))
            self._looked.clear()
        return old

    def __len__(self) -> int:
        return len(self._at)
