"""Everything the request handlers share, created and closed by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from model_store import ModelStore
from service.api.auth import KeyRing, Principal, Scope
from service.api.cache import ResultCache
from service.api.events import ModelEvents
from service.api.metrics import Metrics
from service.api.model_manager import ModelManager
from service.api.ratelimit import RateLimiter
from service.api.redis_link import RedisLink
from service.settings import Settings


@dataclass
class ServiceContext:
    settings: Settings
    metrics: Metrics
    store: ModelStore
    manager: ModelManager
    events: ModelEvents
    cache: ResultCache
    limiter: RateLimiter
    keys: KeyRing
    redis: RedisLink | None


def context(request: Request) -> ServiceContext:
    ctx: ServiceContext = request.app.state.ctx
    return ctx


def presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return request.headers.get("x-api-key") or request.query_params.get("api_key")


async def authorize(request: Request, scope: Scope = "client") -> Principal:
    """Authenticate the caller and spend one token of its rate-limit bucket."""
    ctx = context(request)
    client = request.client.host if request.client else "unknown"
    principal = ctx.keys.authenticate(presented_key(request), client, scope)
    await ctx.limiter.check(principal.id)
    return principal
