"""Token-bucket rate limiting per API key (or client address): one atomic Lua script in Redis,
an in-process bucket when Redis is absent or down."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from service.errors import RateLimited
from service.serving.metrics import Metrics
from service.serving.redis_link import RedisLink

TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
-- an unreadable, non-finite or out-of-range entry (corrupted or forged) is a fresh bucket
-- (ts is stored with 14 digits, so it may be a little ahead of now)
if tokens == nil or tokens ~= tokens or tokens < 0 or tokens > burst
   or ts == nil or ts ~= ts or ts < 0 or ts > now + 1 then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local retry = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  retry = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(retry)}
"""


@dataclass
class _Bucket:
    tokens: float
    ts: float


class RateLimiter:
    """`check(identity)` raises RateLimited (with retry_after_s) when the caller's bucket is empty."""

    def __init__(self, rate_per_s: float, burst: int, metrics: Metrics, redis: RedisLink | None = None) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self.metrics = metrics
        self.redis = redis
        self._local: dict[str, _Bucket] = {}
        self._script = redis.client.register_script(TOKEN_BUCKET_LUA) if redis is not None else None

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    async def check(self, identity: str) -> None:
        if not self.enabled:
            return
        allowed: bool | None = None
        retry = 0.0
        if self.redis is not None and self._script is not None:
            script = self._script
            res = await self.redis.run(
                "rate_limit", lambda c: script(keys=[f"emoserve:rl:{identity}"], args=[self.rate, self.burst])
            )
            if res is not None:
                allowed, retry = self._read_reply(res)
        if allowed is None:
            allowed, retry = self._local_take(identity)
        if not allowed:
            self.metrics.rate_limited.inc()
            raise RateLimited(
                f"rate limit of {self.rate:g} requests/s (burst {self.burst}) exceeded",
                retry_after_s=max(1, math.ceil(retry)),
            )

    def _read_reply(self, res: object) -> tuple[bool | None, float]:
        """(allowed, retry_s) from the script's reply, retry clamped to [0, 1/rate]; (None, 0) if unreadable."""
        try:
            allowed, retry = bool(int(res[0])), float(res[1])  # type: ignore[index]
        except (TypeError, ValueError, IndexError, KeyError, OverflowError):
            return None, 0.0
        if not math.isfinite(retry):
            retry = 1 / self.rate
        return allowed, min(max(retry, 0.0), 1 / self.rate)

    def _local_take(self, identity: str) -> tuple[bool, float]:
        now = time.monotonic()
        b = self._local.setdefault(identity, _Bucket(float(self.burst), now))
        b.tokens = min(self.burst, b.tokens + (now - b.ts) * self.rate)
        b.ts = now
        if b.tokens >= 1:
            b.tokens -= 1
            return True, 0.0
        return False, (1 - b.tokens) / self.rate
