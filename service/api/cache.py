"""Result cache keyed by sha256(image) + model versions + options: Redis when configured, else in-process."""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from typing import Any

from service.api.metrics import Metrics
from service.api.redis_link import RedisLink

LOCAL_ENTRIES = 2048


def cache_key(image_sha256: str, models: dict[str, Any], options: dict[str, Any]) -> str:
    blob = json.dumps({"models": models, "options": options}, sort_keys=True, separators=(",", ":"))
    return "emoserve:result:" + image_sha256 + ":" + hashlib.sha256(blob.encode()).hexdigest()[:32]


class ResultCache:
    """get/set of serialized results with a TTL; a Redis outage counts as a miss."""

    def __init__(self, ttl_s: int, metrics: Metrics, redis: RedisLink | None = None) -> None:
        self.ttl_s = ttl_s
        self.metrics = metrics
        self.redis = redis
        self._local: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0

    async def get(self, key: str) -> bytes | None:
        if not self.enabled:
            return None
        value: bytes | None
        if self.redis is not None:
            raw = await self.redis.run("cache_get", lambda c: c.get(key))
            value = raw.encode() if isinstance(raw, str) else raw
        else:
            value = self._local_get(key)
        self.metrics.cache_requests.labels(result="hit" if value is not None else "miss").inc()
        return value

    async def set(self, key: str, value: bytes) -> None:
        if not self.enabled:
            return
        if self.redis is not None:
            await self.redis.run("cache_set", lambda c: c.set(key, value, ex=self.ttl_s))
        else:
            self._local[key] = (time.monotonic() + self.ttl_s, value)
            self._local.move_to_end(key)
            while len(self._local) > LOCAL_ENTRIES:
                self._local.popitem(last=False)

    def _local_get(self, key: str) -> bytes | None:
        item = self._local.get(key)
        if item is None:
            return None
        expires, value = item
        if expires < time.monotonic():
            del self._local[key]
            return None
        self._local.move_to_end(key)
        return value
