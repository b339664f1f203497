"""The writer lease: one worker at a time writes a ``RECSTREAM_REDIS_PREFIX``'s model.

A worker takes the lease (a Redis string holding its writer id, expiring after
``RECSTREAM_WORKER_LEASE_SECONDS``) before it joins the consumer group, renews it every third
of that time while it runs and gives it back when it stops. A second worker started meanwhile
(a rolling deploy, a standby) waits, polling every second, and takes over as soon as the first
one stops — at once after a SIGTERM, within the lease time after a SIGKILL.

Each take-over increments the lease's **epoch** (a counter that never expires); the holder keeps
the epoch it took. A checkpoint watches the epoch and checks it is still its own
(:meth:`store.model_store.ModelStore.checkpoint` with ``lease``), so a worker whose lease another
took (it was frozen, or cut off from Redis, past the lease time) writes nothing more; it sees the
loss at its next renewal and stops. Renewals only extend the lease, so they never abort a
checkpoint, however long it takes. A lease that expired while nobody took it (the epoch did not
move) is taken again by its holder at the next renewal; one that another worker held meanwhile,
even if that worker has stopped since, is lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError

log = logging.getLogger(__name__)

# KEYS[1] the lease, KEYS[2] its epoch; ARGV holder, milliseconds, the holder's epoch ('' before it took the lease).
# Returns {holder after the call ('' when the lease is free but the epoch moved past the caller's), epoch}.
_TAKE = """
local held = redis.call('GET', KEYS[1])
local epoch = redis.call('GET', KEYS[2])
if held == ARGV[1] then
  if epoch ~= ARGV[3] then
    return {'', epoch or ''}
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {held, epoch}
end
if held then
  return {held, epoch or ''}
end
if ARGV[3] ~= '' then
  if epoch ~= ARGV[3] then
    return {'', epoch or ''}
  end
else
  epoch = tostring(redis.call('INCR', KEYS[2]))
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {ARGV[1], epoch}
"""

# KEYS[1] the lease; ARGV holder. Deletes the lease if the holder has it (the epoch stays); returns 1 if it did.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


#: What :meth:`WriterLease.try_acquire` names when Redis has no epoch for the lease (it lost its data).
GONE = "Redis no longer holds the writer lease's epoch"


class WriterLease:
    """``holder``'s claim on ``key`` for ``seconds`` at a time (see the module's doc)."""

    def __init__(self, redis: aioredis.Redis, key: str, epoch_key: str, holder: str, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError("the lease must last more than 0 seconds")
        self.redis = redis
        self.key = key
        self.epoch_key = epoch_key
        self.holder = holder
        self.seconds = seconds
        #: the epoch this holder took the lease at (None until it did)
        self.epoch: int | None = None
        #: the other worker that took the lease from this one (None while this one holds it or never had it)
        self.lost_to: str | None = None

    @property
    def every(self) -> float:
        """Seconds between renewals."""
        return self.seconds / 3

    @property
    def poll(self) -> float:
        """Seconds between attempts while waiting (at most one: a released lease is taken over at once)."""
        return min(self.every, 1.0)

    async def try_acquire(self) -> str | None:
        """Take or extend the lease; return None if this holder has it now, else who has it (or had it since), for a
        sentence: ``worker HOST:PID:ID``, or ``another worker (…)`` when it has stopped since."""
        mine = "" if self.epoch is None else str(self.epoch)
        ttl = max(1, round(self.seconds * 1000))
        held, epoch = await self.redis.eval(_TAKE, 2, self.key, self.epoch_key, self.holder, ttl, mine)
        held = held.decode() if isinstance(held, bytes) else held
        epoch = epoch.decode() if isinstance(epoch, bytes) else epoch
        if held == self.holder:
            self.epoch = int(epoch)
            return None
        if held:
            return f"worker {held}"
        if not epoch:  # no worker ever took it, as far as Redis knows
            return f"{GONE} (this worker's epoch {mine})"
        return f"another worker (the lease's epoch is {epoch}, this worker's {mine})"

    @property
    def loss(self) -> str:
        """Why this worker no longer holds the lease, for a sentence (once :attr:`lost_to` is set)."""
        if self.lost_to is not None and self.lost_to.startswith(GONE):
            return (
                f"{self.lost_to}: Redis restarted without its data, or the keys were deleted; this worker's model "
                "versions may be gone too"
            )
        return f"{self.lost_to} took over the writer lease"

    async def acquire(self, waiting: Callable[[str], None] | None = None) -> None:
        """Wait until this holder has the lease; ``waiting(other)`` is called when another worker holds it.

        A failed attempt (Redis unreachable) is logged once and tried again every :attr:`poll`; Redis refusing the
        credentials (:class:`redis.exceptions.AuthenticationError`) is raised.
        """
        told: str | None = None
        failing = False
        while True:
            try:
                other = await self.try_acquire()
            except AuthenticationError:
                raise
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                if not failing:
                    log.warning("cannot reach Redis to take the writer lease (%s); retrying", exc)
                failing = True
            else:
                if other is None:
                    return
                if other != told and waiting is not None:
                    waiting(other)
                told = other
            await asyncio.sleep(self.poll)

    async def keep(self, lost: Callable[[str], None]) -> None:
        """Renew the lease every :attr:`every` seconds until cancelled; when another worker has taken it, set
        :attr:`lost_to`, call ``lost(other)`` and return. A renewal that fails (Redis unreachable) is retried."""
        failing = False
        while True:
            await asyncio.sleep(self.every)
            try:
                other = await self.try_acquire()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis unreachable: the checkpoints fail meanwhile anyway
                if not failing:
                    log.warning("renewing the writer lease failed (%s: %s); retrying", type(exc).__name__, exc)
                failing = True
                continue
            if failing:
                log.info("writer lease renewed again")
                failing = False
            if other is not None:
                self.lost_to = other
                lost(other)
                return

    async def release(self) -> bool:
        """Give the lease back if this holder has it (a waiting worker takes over at once); True if it did."""
        return bool(await self.redis.eval(_RELEASE, 1, self.key, self.holder))
