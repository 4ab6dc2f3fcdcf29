"""A Redis connection that degrades instead of failing: when Redis is down, callers get `None`
and use their in-process fallback; a metric and one log line per outage say so; it reconnects."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.api.metrics import Metrics

log = logging.getLogger("emoserve.redis")
T = TypeVar("T")

RETRY_AFTER_FAILURE_S = 1.0


class RedisLink:
    """Wraps an asyncio Redis client with a short circuit breaker."""

    def __init__(self, url: str, metrics: Metrics) -> None:
        self.url = url
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=0.25, socket_timeout=0.5, health_check_interval=5
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
        if self._down_since is not None and now < self._next_try:
            return None
        try:
            result = await fn(self.client)
        except (RedisError, OSError) as exc:
            self.metrics.redis_errors.labels(operation=operation).inc()
            if self._down_since is None:
                self._down_since = now
                log.warning("redis at %s unavailable (%s): cache and rate limits degrade to in-process", self.url, exc)
            self._next_try = now + RETRY_AFTER_FAILURE_S
            return None
        if self._down_since is not None:
            log.warning("redis at %s is back after %.1f s", self.url, now - self._down_since)
            self._down_since = None
        return result

    async def close(self) -> None:
        await self.client.aclose()
