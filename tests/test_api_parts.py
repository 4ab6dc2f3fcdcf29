"""REST building blocks against a real Redis: token bucket, result cache, degradation, API keys."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
import redis

from service.errors import Forbidden, RateLimited, Unauthorized
from service.serving.cache import ResultCache, cache_key
from service.serving.keys import KeyRing, hash_key
from service.serving.metrics import Metrics
from service.serving.ratelimit import RateLimiter
from service.serving.redis_link import RETRY_AFTER_FAILURE_S, RedisLink


def _sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(name, labels or {})
    return value or 0.0


def test_token_bucket_in_redis_is_shared_and_atomic(redis_url: str) -> None:
    async def main() -> tuple[int, int]:
        metrics = Metrics()
        link = RedisLink(redis_url, metrics)
        # two limiters = two replicas sharing one bucket per identity
        limiters = [RateLimiter(1.0, 5, metrics, link), RateLimiter(1.0, 5, metrics, link)]
        ident = f"test-{uuid.uuid4().hex}"

        async def attempt(i: int) -> bool:
            try:
                await limiters[i % 2].check(ident)
                return True
            except RateLimited as exc:
                assert exc.retry_after_s >= 1
                return False

        results = await asyncio.gather(*(attempt(i) for i in range(20)))
        await link.close()
        return sum(results), int(_sample(metrics, "emoserve_rate_limited_total"))

    allowed, limited = asyncio.run(main())
    assert allowed == 5  # burst 5, refill 1/s: 20 simultaneous calls let exactly 5 through
    assert limited == 15


def test_cache_round_trip_and_hit_metric(redis_url: str) -> None:
    async def main() -> None:
        metrics = Metrics()
        link = RedisLink(redis_url, metrics)
        cache = ResultCache(60, metrics, link)
        key = cache_key(uuid.uuid4().hex, {"detector": ["d", 1]}, {"max_faces": 3})
        assert await cache.get(key) is None
        await cache.set(key, b'{"faces": []}')
        assert await cache.get(key) == b'{"faces": []}'
        assert _sample(metrics, "emoserve_cache_requests_total", {"result": "hit"}) == 1
        assert _sample(metrics, "emoserve_cache_requests_total", {"result": "miss"}) == 1
        assert 0 < await link.client.ttl(key) <= 60
        await link.close()

    asyncio.run(main())


def test_cache_key_depends_on_models_and_options() -> None:
    base = cache_key("ab", {"classifier": ["c", 1]}, {"max_faces": 3})
    assert base != cache_key("ab", {"classifier": ["c", 2]}, {"max_faces": 3})
    assert base != cache_key("ab", {"classifier": ["c", 1]}, {"max_faces": 4})
    assert base == cache_key("ab", {"classifier": ["c", 1]}, {"max_faces": 3})


def test_redis_down_degrades_to_in_process() -> None:
    async def main() -> None:
        metrics = Metrics()
        link = RedisLink("redis://127.0.0.1:1/0", metrics)  # nothing listens on port 1
        limiter = RateLimiter(1.0, 2, metrics, link)
        cache = ResultCache(60, metrics, link)
        await limiter.check("a")
        await limiter.check("a")
        with pytest.raises(RateLimited):
            await limiter.check("a")  # the in-process bucket still limits
        assert await cache.get("k") is None  # a miss, not an error
        assert not link.healthy
        assert _sample(metrics, "emoserve_redis_errors_total", {"operation": "rate_limit"}) >= 1
        await link.close()

    asyncio.run(main())


def test_api_keys_scopes_and_hashing() -> None:
    ring = KeyRing(client_keys=["client-secret"], admin_keys=[hash_key("admin-secret")])
    assert ring.authenticate("client-secret", "1.2.3.4").scopes == {"client"}
    assert ring.authenticate("admin-secret", "1.2.3.4", "admin").scopes == {"client", "admin"}
    with pytest.raises(Unauthorized):
        ring.authenticate(None, "1.2.3.4")
    with pytest.raises(Unauthorized):
        ring.authenticate("wrong", "1.2.3.4")
    with pytest.raises(Forbidden):
        ring.authenticate("client-secret", "1.2.3.4", "admin")
    open_ring = KeyRing([], [])
    assert open_ring.authenticate(None, "9.9.9.9").id == "addr:9.9.9.9"
    with pytest.raises(Forbidden):
        open_ring.authenticate(None, "9.9.9.9", "admin")
    admin_only = KeyRing([], ["admin-secret"])  # protects the admin endpoints, never locks clients out
    assert admin_only.authenticate(None, "9.9.9.9").id == "addr:9.9.9.9"
    assert admin_only.authenticate("admin-secret", "9.9.9.9").scopes == {"client", "admin"}
    with pytest.raises(Unauthorized):
        admin_only.authenticate(None, "9.9.9.9", "admin")


def test_an_open_server_on_a_public_address_warns(caplog: pytest.LogCaptureFixture) -> None:
    from service.api.app import warn_if_open
    from service.settings import get_settings

    with caplog.at_level("WARNING", logger="emoserve"):
        warn_if_open(get_settings(host="127.0.0.1"))
        warn_if_open(get_settings(host="0.0.0.0", api_keys=["k"]))
        assert not caplog.records
        warn_if_open(get_settings(host="0.0.0.0"))
    assert "no EMOSERVE_API_KEYS" in caplog.text


def test_the_shutdown_grace_covers_the_request_timeout() -> None:
    from emoserve_cli.serve import grace_period
    from service.settings import get_settings

    assert grace_period(get_settings(request_timeout_s=30, body_timeout_s=15)) == 50
    assert grace_period(get_settings(request_timeout_s=30, shutdown_grace_s=60)) == 60


def _valid_result(models: dict[str, list[Any]]) -> dict[str, Any]:
    (dn, dv), (cn, cv) = models["detector"], models["classifier"]
    return {
        "image": {"width": 4, "height": 3},
        "models": {"detector": {"name": dn, "version": dv}, "classifier": {"name": cn, "version": cv}},
        "faces": [],
        "timings_ms": {"decode": 1.0, "queue": 0.0, "detect": 2.0, "align": 0.0, "classify": 0.0, "total": 3.0},
    }


def test_cache_serves_only_valid_entries(redis_url: str) -> None:
    models: dict[str, list[Any]] = {"detector": ["d", 1], "classifier": ["c", 2]}
    good = _valid_result(models)
    forged_face = {
        "box": {"x1": 0, "y1": 0, "x2": 1, "y2": 1},
        "score": 1,
        "landmarks": None,
        "emotion": {"label": "happy", "confidence": 1, "scores": {"happy": 1}},
    }
    bad_values: list[bytes] = [
        b"\x00\xffgarbage",
        b"[]",
        json.dumps(good).encode(),  # a bare result: no format version
        json.dumps({"format": 999, "result": good}).encode(),
        json.dumps({"format": 1, "result": {**good, "faces": "none"}}).encode(),
        json.dumps({"format": 1, "result": {**good, "admin": True}}).encode(),
        json.dumps({"format": 1, "result": _valid_result({"detector": ["d", 1], "classifier": ["c", 1]})}).encode(),
        json.dumps({"format": 1, "result": {**good, "faces": [{**forged_face, "score": float("inf")}]}}).encode(),
        json.dumps({"format": 1, "result": good}).replace('"total": 3.0', '"total": 1e999').encode(),
    ]

    async def main() -> None:
        metrics = Metrics()
        link = RedisLink(redis_url, metrics)
        cache = ResultCache(60, metrics, link)
        key = cache_key(uuid.uuid4().hex, models, {})
        for value in bad_values:
            await link.client.set(key, value)
            assert await cache.get_result(key, models) is None, value
        assert _sample(metrics, "emoserve_cache_requests_total", {"result": "miss"}) == len(bad_values)
        await cache.set_result(key, good)  # the fresh result overwrites the bad entry
        assert await cache.get_result(key, models) == good
        assert _sample(metrics, "emoserve_cache_requests_total", {"result": "hit"}) == 1
        await link.client.delete(key)
        await link.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("tokens", "ts"),
    [("-1e309", None), ("1e309", None), ("nan", None), ("-5", None), ("99999", None), ("abc", None), ("0", "1e309")],
)
def test_corrupt_token_bucket_is_a_fresh_one(redis_url: str, tokens: str, ts: str | None) -> None:
    async def main() -> None:
        metrics = Metrics()
        link = RedisLink(redis_url, metrics)
        limiter = RateLimiter(1.0, 3, metrics, link)
        ident = f"test-{uuid.uuid4().hex}"
        now = (await link.client.time())[0]
        await link.client.hset(f"emoserve:rl:{ident}", mapping={"tokens": tokens, "ts": ts or str(now)})
        for _ in range(3):
            await limiter.check(ident)  # a fresh bucket: the burst is there
        with pytest.raises(RateLimited) as refused:
            await limiter.check(ident)
        assert 1 <= refused.value.retry_after_s <= 2
        assert link.healthy and _sample(metrics, "emoserve_redis_errors_total", {"operation": "rate_limit"}) == 0
        await link.close()

    asyncio.run(main())


def test_stalling_redis_opens_the_breaker(private_redis_url: str) -> None:
    """Redis pausing 0.45 s at a time costs one call CALL_TIMEOUT_S, then calls skip Redis for a while."""

    async def main() -> tuple[list[float], list[bytes | None], float]:
        metrics = Metrics()
        link = RedisLink(private_redis_url, metrics)
        cache = ResultCache(60, metrics, link)
        assert await link.run("ping", lambda c: c.ping()) is True
        admin = redis.Redis.from_url(private_redis_url)
        admin.execute_command("CLIENT", "PAUSE", "450", "ALL")
        times: list[float] = []
        results: list[bytes | None] = []
        for _ in range(10):
            started = time.perf_counter()
            results.append(await cache.get("emoserve:result:stall"))
            times.append(time.perf_counter() - started)
        await asyncio.sleep(0.5)  # the pause is over; the breaker lets a probe through after a second
        await asyncio.sleep(RETRY_AFTER_FAILURE_S)
        assert await link.run("ping", lambda c: c.ping()) is True
        errors = _sample(metrics, "emoserve_redis_errors_total", {"operation": "cache_get"})
        healthy = link.healthy
        admin.close()
        await link.close()
        assert healthy
        return times, results, errors

    times, results, errors = asyncio.run(main())
    assert results == [None] * 10
    assert errors == 1  # one timeout, no retries; then the open breaker skips Redis (no more errors)
    assert max(times) < 1.0, times  # loose: nothing waited on the paused Redis for long
