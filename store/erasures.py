"""Requests to erase users (the right to be forgotten), and the record of those erased.

An operator's request (``POST /v1/users/{id}/erase``, ``recstream users erase``) is a field of a hash
(:attr:`store.keys.Keys.erase_requests`). The worker looks for requests every second, and its next checkpoint erases
each user from its models (learner.erasure) and, in the checkpoint's own transaction (:func:`record_erased`):
deletes the request (unless it was made again meanwhile), the user's seen set and the saved states of contestants no
longer configured, starts the seen log again (so every API process drops the seen sets it holds: api/seen_cache.py),
records the user by fingerprint with the request's time (events of theirs stamped before it are dropped), and raises
the erase floor to the new version, below which no version may be promoted. That version is a whole snapshot: a
delta would apply to a version that names the user.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Collection
from typing import Any

import redis.asyncio as aioredis

from learner.erasure import fingerprint
from store.keys import Keys, as_text

log = logging.getLogger(__name__)

#: Deletes a request (KEYS[1] the hash, ARGV[1] the user, ARGV[2] the request as it was read) only if it is
#: unchanged: a request made again while the checkpoint ran (a later time: more events to drop) stays for the next.
DELETE_IF_SAME = r"""
if redis.call("HGET", KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call("HDEL", KEYS[1], ARGV[1])
end
return 0
"""


class UserErasures:
    """Requests and records of user erasures under one key prefix."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def request(self, user_id: str, reason: str, actor: str) -> dict[str, Any]:
        """Ask the worker to erase ``user_id`` (again, if asked before: the later time counts); the request."""
        record = {"at": time.time(), "reason": reason, "actor": actor}
        await self.redis.hset(self.keys.erase_requests, user_id, json.dumps(record))
        return record

    async def waiting(self) -> int:
        """How many requests wait for the worker."""
        return int(await self.redis.hlen(self.keys.erase_requests))

    async def requests(self) -> dict[str, str]:
        """Every waiting request: user id -> the request as stored (JSON; passed back to :func:`record_erased`). One
        that is not a request (written by hand: no time) is logged and deleted, not left to fail every checkpoint."""
        requests, bad = {}, []
        for user, value in (await self.redis.hgetall(self.keys.erase_requests)).items():
            if requested_at(as_text(value)) is None:
                bad.append(user)
            else:
                requests[as_text(user)] = as_text(value)
        if bad:
            log.error("deleted %d request(s) to erase users that are not requests (no time): %s", len(bad),
                      ", ".join(repr(as_text(user)) for user in bad))  # fmt: skip
            await self.redis.hdel(self.keys.erase_requests, *bad)
        return requests

    async def erased(self) -> dict[str, float]:
        """Every user erased and still recorded: fingerprint -> the time of the request (seconds since the epoch)."""
        raw = await self.redis.hgetall(self.keys.erased_users)
        return {as_text(key): float(json.loads(value)["at"]) for key, value in raw.items()}

    async def status(self, user_id: str) -> dict[str, Any]:
        """``{"state": "waiting", "requested": ...}`` while the request waits, ``{"state": "erased", "requested",
        "applied", "version"}`` once a checkpoint erased the user (while recorded), else ``{"state": "none"}``."""
        keys = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hget(keys.erase_requests, user_id)
            pipe.hget(keys.erased_users, fingerprint(user_id))
            waiting, done = await pipe.execute()
        if waiting is not None and (at := requested_at(as_text(waiting))) is not None:  # (else not a request: dropped)
            return {"state": "waiting", "requested": at, "reason": json.loads(waiting).get("reason", "")}
        if done is not None:
            record = json.loads(done)
            return {"state": "erased", "requested": record["at"], "applied": record["applied"],
                    "version": record["version"]}  # fmt: skip
        return {"state": "none"}

    async def floor(self) -> int | None:
        """The erase floor: the latest version that erased users (None: none did)."""
        raw = await self.redis.get(self.keys.erase_floor)
        return None if raw is None else int(raw)


def record_erased(
    pipe: Any,
    keys: Keys,
    requests: dict[str, str],
    version: int,
    now: float,
    expired: list[str],
    stale_challengers: Collection[str] = (),
) -> None:
    """Queue, in a checkpoint's transaction (``pipe`` after MULTI), what records that ``requests`` (user id -> the
    request as read) are done by ``version``, the expiry of the records ``expired`` (fingerprints), and the deletion
    of the saved states of ``stale_challengers`` (names of contestants no longer written: they hold the users too).
    The seen log is deleted and started again with an empty entry, so that every API process finds entries it has
    not read gone and drops the seen sets it holds (api/seen_cache.py), before the checkpoint's additions to it are
    queued (the caller's order)."""
    if expired:  # first: a user erased again here keeps the record written below
        pipe.hdel(keys.erased_users, *expired)
    for user, raw in requests.items():
        at = requested_at(raw)
        pipe.eval(DELETE_IF_SAME, 1, keys.erase_requests, user, raw)
        pipe.delete(keys.seen(user))
        pipe.hset(keys.erased_users, fingerprint(user), json.dumps({"at": at, "applied": now, "version": version}))
    if requests:
        pipe.delete(keys.seen_log)
        pipe.xadd(keys.seen_log, {"lines": ""})
        pipe.set(keys.erase_floor, version)
        if stale_challengers:
            pipe.delete(*(keys.challenger(name) for name in stale_challengers))
            pipe.srem(keys.challengers_saved, *stale_challengers)


def requested_at(raw: str) -> float | None:
    """The time of a request as stored (None: not a request)."""
    try:
        at = json.loads(raw)["at"]
    except (ValueError, TypeError, KeyError):
        return None
    return float(at) if isinstance(at, int | float) and math.isfinite(at) else None
