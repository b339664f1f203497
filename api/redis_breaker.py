"""A small circuit breaker for the API's optional Redis calls (seen sets, rate-limit buckets).

When Redis is down, a request should not wait for a connect or read timeout before it degrades:
each call gets ``timeout_seconds``, and after a failure the breaker stays open for
``open_seconds`` so the calls in that window skip Redis at once (:class:`RedisUnavailable`).
The first call after the window tries Redis again; one success closes the breaker.

>>> import asyncio
>>> now = [0.0]
>>> breaker = RedisBreaker(open_seconds=1.0, clock=lambda: now[0])
>>> async def down() -> None:
...     raise ConnectionError("refused")
>>> async def up() -> str:
...     return "ok"
>>> async def demo() -> list[str]:
...     out = []
...     for factory in (down, up):
...         try:
...             out.append(await breaker.call(factory))
...         except RedisUnavailable as exc:
...             out.append(f"skipped: {exc.__cause__!r}")
...     now[0] = 1.5
...     out.append(await breaker.call(up))
...     return out
>>> asyncio.run(demo())
["skipped: ConnectionError('refused')", 'skipped: None', 'ok']
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

OPEN_SECONDS = 1.0  # after a failure, skip Redis this long
TIMEOUT_SECONDS = 0.5  # one optional Redis call may take this long (normally well under a millisecond)


class RedisUnavailable(Exception):
    """Redis failed just now (the cause is chained) or recently (the breaker is open)."""


class RedisBreaker:
    def __init__(
        self,
        open_seconds: float = OPEN_SECONDS,
        timeout_seconds: float = TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.open_seconds = open_seconds
        self.timeout_seconds = timeout_seconds
        self.clock = clock
        self._open_until = -math.inf

    @property
    def is_open(self) -> bool:
        return self.clock() < self._open_until

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """``await operation()`` within the timeout, or raise :class:`RedisUnavailable`."""
        if self.is_open:
            raise RedisUnavailable("Redis failed less than a second ago; not retried yet")
        try:
            result = await asyncio.wait_for(operation(), timeout=self.timeout_seconds)
        except Exception as exc:
            self._open_until = self.clock() + self.open_seconds
            raise RedisUnavailable(f"{type(exc).__name__}: {exc}") from exc
        self._open_until = -math.inf
        return result
