"""The data plane: the one object every transport calls for auth, model checkout, inference, cache and
observation. REST routes and the stream session only translate their protocol to and from it.

    principal = await plane.authorize(key, client_addr)          # keys + one rate-limit token
    answer = await plane.analyze(image_bytes, options)           # cache, checkout, timeout, metrics
    result, reuse = await plane.analyze_frame(frame, options, state, policy)   # a stream's frame
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from model_store import ModelStore
from service.errors import RequestTimeout
from service.pipeline.analyze import Pipeline
from service.pipeline.schema import AnalysisResult, AnalyzeOptions, Timings, parse_options
from service.pipeline.stream_reuse import FaceReuse, ReusePolicy, StreamState
from service.serving.cache import ResultCache, cache_key
from service.serving.events import ModelEvents
from service.serving.keys import KeyRing, Principal, Scope
from service.serving.metrics import Metrics
from service.serving.model_manager import ModelManager
from service.serving.ratelimit import RateLimiter
from service.serving.redis_link import RedisLink
from service.settings import Settings

T = TypeVar("T")


@dataclass
class Answer:
    """One analysis as JSON-ready data, and whether it came from the result cache."""

    body: dict[str, Any]
    cached: bool


@dataclass
class DataPlane:
    """Everything the transports share, created and closed by the app's lifespan."""

    settings: Settings
    metrics: Metrics
    store: ModelStore
    manager: ModelManager
    events: ModelEvents
    cache: ResultCache
    limiter: RateLimiter
    keys: KeyRing
    redis: RedisLink | None

    async def authorize(self, key: str | None, client: str, scope: Scope = "client") -> Principal:
        """Authenticate the caller and spend one token of its rate-limit bucket."""
        principal = self.keys.authenticate(key, client, scope)
        await self.limiter.check(principal.id)
        return principal

    async def _run(self, what: str, work: Callable[[Pipeline], Awaitable[T]]) -> T:
        """`work` on a checked-out pipeline, under the request timeout."""
        timeout = self.settings.request_timeout_s
        async with self.manager.use() as pipeline:
            try:
                return await asyncio.wait_for(work(pipeline), timeout)
            except TimeoutError as exc:
                raise RequestTimeout(f"{what} took longer than {timeout} s") from exc

    async def check(self, options: AnalyzeOptions | Mapping[str, Any] | None) -> AnalyzeOptions:
        """Options validated, and refused when the served models cannot do what they ask (e.g. explain)."""
        opts = parse_options(options)
        async with self.manager.use() as pipeline:
            return pipeline.check(opts)

    async def analyze(self, image: bytes, options: AnalyzeOptions | Mapping[str, Any] | None) -> Answer:
        """One image, from the result cache when it can. A cached answer keeps its body but carries this
        request's timings: only `total`, the time spent hashing and looking it up."""
        started = time.perf_counter()
        opts = parse_options(options)

        async def work(pipeline: Pipeline) -> tuple[str, Answer | AnalysisResult]:
            models = {role: [n, v] for role, (n, v, _) in pipeline.model_versions().items()}
            key = cache_key(hashlib.sha256(image).hexdigest(), models, opts.model_dump(mode="json"))
            cached = await self.cache.get_result(key, models)
            if cached is not None:
                total_ms = round((time.perf_counter() - started) * 1000, 3)
                cached["timings_ms"] = Timings(total=total_ms).model_dump(mode="json")
                return key, Answer(cached, cached=True)
            return key, await pipeline.analyze(image, opts)

        key, outcome = await self._run("analysis", work)
        if isinstance(outcome, Answer):
            return outcome
        self.metrics.observe_result(outcome)
        body = outcome.model_dump(mode="json")
        await self.cache.set_result(key, body)
        return Answer(body, cached=False)

    async def analyze_frame(
        self, frame: bytes, options: AnalyzeOptions, state: StreamState, policy: ReusePolicy
    ) -> tuple[AnalysisResult, list[FaceReuse]]:
        """One frame of a stream (never cached: frames do not repeat), reusing the stream's work."""
        result, reuse = await self._run("frame", lambda p: p.analyze_stream(frame, options, state, policy))
        self.metrics.observe_result(result)  # stage, face and emotion metrics count stream frames too
        return result, reuse
