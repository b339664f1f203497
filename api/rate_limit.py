"""Per-key rate limits: the settings' rate and burst per scope, enforced with Redis token buckets.

Leases: a process takes tokens from Redis in leases of ``LEASE_FRACTION`` of the bucket (at least
one) and spends them locally, so a busy key costs one Redis round trip per lease instead of one per
request. Tokens are taken from Redis before they are spent, so the limit is never exceeded; it can
under-grant by at most one unspent lease per API process. With small buckets
(under 1 / ``LEASE_FRACTION`` tokens) every request still goes to Redis. A leased token not spent
within ``LEASE_SECONDS`` is dropped, so an idle process does not keep tokens others could use.

Fail-open: when Redis cannot be reached the request goes through (and a warning is logged at
most once a minute). Authentication never depends on Redis, so only already-authenticated keys
get through unmetered; ingest (which needs only Kafka) and recommendations (served from memory,
``"degraded": true``) keep working; docs/security.md explains the choice. Bucket calls go through
a :class:`api.redis_breaker.RedisBreaker`: each waits at most ``TIMEOUT_SECONDS`` and, after a
failure, Redis is skipped for a second, so an outage does not add a timeout to every request.
A per-process fallback bucket was considered and not chosen: with N API processes it would allow
N times the limit anyway, and a small burst would refuse honest clients during an outage.
"""

from __future__ import annotations

import logging
import math
import time

from api.log_throttle import LogThrottle
from api.redis_breaker import RedisBreaker, RedisUnavailable
from recstream import metrics
from recstream.settings import Scope, Settings
from store.rate_limit import TokenBuckets

log = logging.getLogger(__name__)

LEASE_FRACTION = 0.05
LEASE_SECONDS = 1.0


class RateLimiter:
    def __init__(self, buckets: TokenBuckets | None, settings: Settings, breaker: RedisBreaker | None = None) -> None:
        self.buckets = buckets if settings.rate_limit_enabled else None
        self.breaker = breaker or RedisBreaker()
        self.limits: dict[str, tuple[float, int]] = {
            "ingest": (settings.rate_limit_ingest_per_second, settings.rate_limit_ingest_burst),
            "read": (settings.rate_limit_read_per_second, settings.rate_limit_read_burst),
            "admin": (settings.rate_limit_admin_per_second, settings.rate_limit_admin_burst),
        }
        self._unreachable_log = LogThrottle()
        self._leases: dict[tuple[str, str], tuple[int, float]] = {}  # (key, scope) -> (tokens left, taken at)

    async def retry_after(self, key_name: str, scope: Scope) -> int | None:
        """None when the request may proceed, else the whole seconds to wait (≥ 1) for ``Retry-After``."""
        if self.buckets is None:
            return None
        rate, burst = self.limits[scope]
        lease_key = (key_name, scope)
        left, taken_at = self._leases.get(lease_key, (0, 0.0))
        now = time.monotonic()
        if left > 0 and now - taken_at < LEASE_SECONDS:
            self._leases[lease_key] = (left - 1, taken_at)
            return None
        lease = max(1, int(burst * LEASE_FRACTION))
        buckets = self.buckets
        try:
            decision = await self.breaker.call(lambda: buckets.take(key_name, scope, rate, burst, cost=lease))
            if decision.allowed:
                self._leases[lease_key] = (lease - 1, now)
                return None
            if lease > 1:  # not enough for a lease: maybe still one token
                decision = await self.breaker.call(lambda: buckets.take(key_name, scope, rate, burst))
        except RedisUnavailable as exc:  # fail open, see the module docstring
            if exc.__cause__ is not None:
                metrics.REDIS_ERRORS.labels("api").inc()
            if self._unreachable_log.ready() is not None:
                log.warning("rate limiter cannot reach Redis (%s); requests are not rate-limited meanwhile", exc)
            return None
        if decision.allowed:
            return None
        return max(1, math.ceil(decision.retry_after_seconds))
