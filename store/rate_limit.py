"""Token buckets in Redis, one per API key and scope, shared by every API process.

One Lua script refills and takes a token atomically, on Redis's own clock (``TIME``), so API
processes on different hosts agree without synchronised clocks and no two requests can spend
the same token. A bucket expires once it would be full again, so idle keys cost no memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from store.keys import Keys

# KEYS[1] bucket; ARGV rate (tokens/s), burst (bucket size), cost. Returns {allowed 0|1, wait seconds as a string}
# (a Lua number returned to Redis is truncated to an integer, hence the string).
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {allowed, tostring(wait)}
"""


@dataclass(frozen=True)
class BucketDecision:
    allowed: bool
    retry_after_seconds: float  # 0 when allowed


class TokenBuckets:
    """``await take(key_name, scope, rate, burst)``: spend one token or learn how long to wait."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.keys = keys
        self._take = redis.register_script(_TAKE)

    async def take(self, key_name: str, scope: str, rate: float, burst: int, cost: int = 1) -> BucketDecision:
        allowed, wait = await self._take(keys=[self.keys.rate_limit(key_name, scope)], args=[rate, burst, cost])
        return BucketDecision(allowed=bool(int(allowed)), retry_after_seconds=float(wait))
