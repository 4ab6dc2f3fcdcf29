"""REST building blocks against a real Redis: token bucket, result cache, degradation, API keys."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from service.api.auth import KeyRing, hash_key
from service.api.cache import ResultCache, cache_key
from service.api.metrics import Metrics
from service.api.ratelimit import RateLimiter
from service.api.redis_link import RedisLink
from service.errors import Forbidden, RateLimited, Unauthorized


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
    from service.cli.serve import grace_period
    from service.settings import get_settings

    assert grace_period(get_settings(request_timeout_s=30)) == 35
    assert grace_period(get_settings(request_timeout_s=30, shutdown_grace_s=60)) == 60
