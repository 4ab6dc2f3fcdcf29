"""Everything the request handlers share, created and closed by the app's lifespan."""

from __future__ import annotations

from collections.abc import Mapping
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
from service.errors import Unauthorized
from service.settings import Settings

KEY_IN_URL = "API keys in the URL are refused (URLs end up in logs): send `Authorization: Bearer <key>` or `X-API-Key`"


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


def header_key(headers: Mapping[str, str]) -> str | None:
    """The key of `Authorization: Bearer` or `X-API-Key`; keys are never read from the URL."""
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return headers.get("x-api-key") or None


def presented_key(request: Request) -> str | None:
    if "api_key" in request.query_params:
        raise Unauthorized(KEY_IN_URL)
    return header_key(request.headers)


async def authorize(request: Request, scope: Scope = "client") -> Principal:
    """Authenticate the caller and spend one token of its rate-limit bucket."""
    ctx = context(request)
    client = request.client.host if request.client else "unknown"
    principal = ctx.keys.authenticate(presented_key(request), client, scope)
    await ctx.limiter.check(principal.id)
    return principal
