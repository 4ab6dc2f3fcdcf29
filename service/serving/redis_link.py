"""A Redis connection that degrades instead of failing: when Redis is down, callers get `None`
and use their in-process fallback; a metric and one log line per outage say so; it reconnects.

Slow counts as down: every call has a socket timeout well below a second and no retries, so a
Redis that stalls costs one request `CALL_TIMEOUT_S` and then opens the breaker (Redis is skipped
for `RETRY_AFTER_FAILURE_S`), instead of slowing every request by the length of the stall."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from service.serving.metrics import Metrics

log = logging.getLogger("emoserve.redis")
T = TypeVar("T")

RETRY_AFTER_FAILURE_S = 1.0
CALL_TIMEOUT_S = 0.2  # a reply slower than this is a failure (counted, and it opens the breaker)
CONNECT_TIMEOUT_S = 0.25


class RedisLink:
    """Wraps an asyncio Redis client with a short circuit breaker."""

    def __init__(self, url: str, metrics: Metrics) -> None:
        self.url = url
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=CALL_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),  # a retry would double the wait on a stalled Redis
            health_check_interval=5,
        )
        self.metrics = metrics
        self._down_since: float | None = None
        self._next_try = 0.0

    @property
    def healthy(self) -> bool:
        return self._down_since is None

    async def run(self, operation: str, fn: Callable[[aioredis.Redis], Awaitable[T]]) -> T | None:
        """Run `fn(client)`; on a Redis failure return None (and skip Redis for a moment)."""
        now = time.monotonic()
        if self._down_since is not None:
            if now < self._next_try:
                return None
            self._next_try = now + RETRY_AFTER_FAILURE_S  # one probe at a time while the breaker is open
        try:
            result = await fn(self.client)
        except (RedisError, OSError) as exc:
            self.metrics.redis_errors.labels(operation=operation).inc()
            if self._down_since is None:
                self._down_since = now
                log.warning(
                    "redis at %s unavailable or slow (%r): cache and rate limits degrade to in-process", self.url, exc
                )
            self._next_try = time.monotonic() + RETRY_AFTER_FAILURE_S
            return None
        if self._down_since is not None:
            log.warning("redis at %s is back after %.1f s", self.url, now - self._down_since)
            self._down_since = None
        return result

    async def close(self) -> None:
        await self.client.aclose()
