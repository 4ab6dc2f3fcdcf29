"""Result cache keyed by sha256(image) + model versions + options: Redis when configured, else in-process.

A cached analysis is stored as `{"format": CACHE_FORMAT, "result": ...}` and checked before it is
served: the format version, the AnalysisResult schema (finite numbers only) and the model versions
the key was made for. Anything else (garbage, a forged or older entry) is a miss, and the fresh
result overwrites it."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import OrderedDict
from typing import Any

from pydantic import ValidationError

from service.pipeline.schema import AnalysisResult
from service.serving.metrics import Metrics
from service.serving.redis_link import RedisLink

log = logging.getLogger("emoserve.cache")
LOCAL_ENTRIES = 2048
CACHE_FORMAT = 1  # bump when the stored shape of a result changes


def cache_key(image_sha256: str, models: dict[str, Any], options: dict[str, Any]) -> str:
    blob = json.dumps({"models": models, "options": options}, sort_keys=True, separators=(",", ":"))
    return "emoserve:result:" + image_sha256 + ":" + hashlib.sha256(blob.encode()).hexdigest()[:32]


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"non-finite number {text}")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name}")


def encode_result(body: dict[str, Any]) -> bytes:
    """The stored form of an analysis result (a JSON-ready AnalysisResult)."""
    return json.dumps({"format": CACHE_FORMAT, "result": body}, separators=(",", ":")).encode()


def decode_result(raw: bytes, models: dict[str, list[Any]]) -> dict[str, Any]:
    """The result a stored value holds, made by `models` (role -> [name, version]); ValueError if it is not one."""
    try:
        envelope = json.loads(raw, parse_float=_finite, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON with finite numbers: {exc}") from None
    if not isinstance(envelope, dict) or envelope.get("format") != CACHE_FORMAT:
        raise ValueError(f"not a cache entry of format {CACHE_FORMAT}")
    try:
        result = AnalysisResult.model_validate(envelope.get("result"))
    except ValidationError as exc:
        raise ValueError(f"not an analysis result ({exc.error_count()} problems)") from None
    body = result.model_dump(mode="json")
    if body != envelope.get("result"):  # the wire schema skips unknown fields; a cache entry has none
        raise ValueError("not exactly an analysis result (fields it does not have, or values it changed)")
    used = result.models
    made_by = {"detector": [used.detector.name, used.detector.version]}
    made_by["classifier"] = [used.classifier.name, used.classifier.version]
    if made_by != models:
        raise ValueError(f"made by {made_by}, not by the serving models {models}")
    return body


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
        value = await self._read(key)
        if self.enabled:
            self.metrics.cache_requests.labels(result="hit" if value is not None else "miss").inc()
        return value

    async def get_result(self, key: str, models: dict[str, list[Any]]) -> dict[str, Any] | None:
        """The validated analysis result under `key`, or None (a miss) when absent or not valid."""
        raw = await self._read(key)
        result = None
        if raw is not None:
            try:
                result = decode_result(raw, models)
            except ValueError as exc:
                log.warning("ignored a bad result-cache entry %s: %s", key, exc)
        if self.enabled:
            self.metrics.cache_requests.labels(result="hit" if result is not None else "miss").inc()
        return result

    async def set_result(self, key: str, body: dict[str, Any]) -> None:
        await self.set(key, encode_result(body))

    async def _read(self, key: str) -> bytes | None:
        if not self.enabled:
            return None
        if self.redis is not None:
            raw = await self.redis.run("cache_get", lambda c: c.get(key))
            return raw.encode() if isinstance(raw, str) else raw
        return self._local_get(key)

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
