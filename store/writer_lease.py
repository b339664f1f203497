"""The writer lease: one worker at a time writes a ``RECSTREAM_REDIS_PREFIX``'s model.

A worker takes the lease (a Redis string holding its writer id, expiring after
``RECSTREAM_WORKER_LEASE_SECONDS``) before it joins the consumer group, renews it every third
of that time while it runs and gives it back when it stops. A second worker started meanwhile
(a rolling deploy, a standby) waits, polling, and takes over as soon as the first one stops —
at once after a SIGTERM, within the lease time after a SIGKILL. Each checkpoint checks that the
lease is still its own (:meth:`store.model_store.ModelStore.checkpoint` with ``holder``), so a
worker that lost it (frozen past the lease time while another took over) writes nothing more;
it sees the loss at its next renewal and stops.

A lease that expired while nobody waited (Redis unreachable for longer than the lease time) is
simply taken again by its holder at the next renewal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import redis.asyncio as aioredis

log = logging.getLogger(__name__)

# KEYS[1] the lease; ARGV holder, milliseconds. Extends the lease if the holder has it, takes it if nobody has it;
# returns the holder's id after the call (the caller's own on success, another worker's if it lost the lease).
_RENEW = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] or not held then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return held
"""

# KEYS[1] the lease; ARGV holder. Deletes the lease if the holder has it; returns 1 if it did.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class WriterLease:
    """``holder``'s claim on ``key`` for ``seconds`` at a time (see the module's doc)."""

    def __init__(self, redis: aioredis.Redis, key: str, holder: str, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError("the lease must last more than 0 seconds")
        self.redis = redis
        self.key = key
        self.holder = holder
        self.seconds = seconds
        #: the other worker that took the lease from this one (None while this one holds it or never had it)
        self.lost_to: str | None = None
        self._steady = asyncio.Lock()  # held by a checkpoint's transaction, which watches the lease: no renewal then

    @property
    def every(self) -> float:
        """Seconds between renewals."""
        return self.seconds / 3

    @property
    def poll(self) -> float:
        """Seconds between attempts while waiting (at most one: a released lease is taken over at once)."""
        return min(self.every, 1.0)

    async def try_acquire(self) -> str | None:
        """Take or extend the lease; return None if this holder has it now, else the id of the worker that has it."""
        async with self._steady:
            held = await self.redis.eval(_RENEW, 1, self.key, self.holder, max(1, round(self.seconds * 1000)))
        held = held.decode() if isinstance(held, bytes) else held
        return None if held == self.holder else held

    async def acquire(self, waiting: Callable[[str], None] | None = None) -> None:
        """Wait until this holder has the lease; ``waiting(other)`` is called when another worker holds it.

        A failed attempt (Redis unreachable) is logged once and tried again every :attr:`poll`.
        """
        told: str | None = None
        failing = False
        while True:
            try:
                other = await self.try_acquire()
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

    @contextlib.asynccontextmanager
    async def renewals_held(self) -> AsyncIterator[None]:
        """No renewal while in this context: a transaction that watches the lease is not aborted by its own holder
        (:meth:`store.model_store.ModelStore.checkpoint`). A renewal due meanwhile waits for its end."""
        async with self._steady:
            yield

    async def release(self) -> bool:
        """Give the lease back if this holder has it (a waiting worker takes over at once); True if it did."""
        return bool(await self.redis.eval(_RELEASE, 1, self.key, self.holder))
