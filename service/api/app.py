"""The FastAPI application. Resources (store, sessions, Redis, metrics) belong to the lifespan."""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from model_store import ModelStore
from model_store.pull import missing_model_advice
from service import __version__
from service.api import (
    docs,
    error_handlers,
    log_scrub,
    routes_analyze,
    routes_health,
    routes_models,
    routes_stream,
    stream_demo,
)
from service.api.admission import AdmissionMiddleware
from service.api.body_limit import BodyLimitMiddleware
from service.api.middleware import ClientGoneMiddleware, RequestMetricsMiddleware
from service.api.stream_hub import StreamHub
from service.errors import ModelLoadFailed
from service.serving.cache import ResultCache
from service.serving.dataplane import DataPlane
from service.serving.events import ModelEvents
from service.serving.factory import build_pipeline_factory
from service.serving.keys import KeyRing
from service.serving.metrics import Metrics
from service.serving.model_manager import ModelManager
from service.serving.ratelimit import RateLimiter
from service.serving.redis_link import RedisLink
from service.settings import Settings, get_settings

log = logging.getLogger("emoserve")


def run_plugins(plugins: list[str]) -> None:
    """Call each `module:function` of EMOSERVE_PLUGINS (extension point for extra model families)."""
    for spec in plugins:
        module, _, attr = spec.partition(":")
        getattr(importlib.import_module(module), attr or "register")()


def warn_if_open(settings: Settings) -> None:
    """A server reachable from other machines with no client keys says so at start-up."""
    loopback = settings.host in ("localhost", "::1") or settings.host.startswith("127.")
    if not loopback and not settings.api_keys:
        log.warning(
            "serving on %s with no EMOSERVE_API_KEYS: anyone who can reach the port may use the API "
            "(set EMOSERVE_API_KEYS, see README 'API keys')",
            settings.host,
        )


def create_app(settings: Settings | None = None, *, metrics: Metrics | None = None) -> FastAPI:
    """Build the app; nothing is loaded until the lifespan starts."""
    settings = settings or get_settings()
    metrics = metrics or Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        log_scrub.install()
        warn_if_open(settings)
        run_plugins(settings.plugins)
        redis = RedisLink(settings.redis_url, metrics) if settings.redis_url else None
        if redis is None:
            log.info("EMOSERVE_REDIS_URL is unset: result cache, rate limits and model events are in-process")
        store = ModelStore(settings.model_root)
        factory = build_pipeline_factory(settings, store, metrics)
        advice = functools.partial(missing_model_advice, catalog_path=settings.catalog)
        manager = ModelManager(store, factory, settings.detector, settings.classifier, advice=advice)
        manager.on_swap.append(metrics.set_models)
        try:
            await manager.reload()
        except ModelLoadFailed as exc:  # the process serves /healthz and /readyz says why
            log.error("models not loaded: %s", exc)
        events = ModelEvents(manager, redis)
        events.start()
        app.state.plane = DataPlane(
            settings=settings,
            metrics=metrics,
            store=store,
            manager=manager,
            events=events,
            cache=ResultCache(settings.cache_ttl_s, metrics, redis),
            limiter=RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst, metrics, redis),
            keys=KeyRing(settings.api_keys, settings.admin_keys),
            redis=redis,
        )
        streams = app.state.streams = StreamHub()
        streams.install_signal_hook()  # open streams close with 1001 before uvicorn's own shutdown
        try:
            yield
        finally:
            await streams.close_all()
            streams.uninstall_signal_hook()
            await events.aclose()
            await manager.aclose()
            if redis is not None:
                await redis.close()

    app = FastAPI(
        title="emoserve",
        version=__version__,
        description="Real-time facial emotion recognition: every face in an image and the emotion it shows.",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come from service.api.docs, with assets served locally
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from the online validator
    )
    docs.install(app)
    error_handlers.install(app)
    app.include_router(routes_health.router)
    app.include_router(routes_analyze.router)
    app.include_router(routes_models.router)
    app.include_router(routes_stream.router)
    stream_demo.install(app)
    # the schema's paths now; FastAPI includes routers lazily, so the middleware adds the templates of other
    # served routes (e.g. the page, the stream) as they are matched
    metrics.add_endpoints(app.openapi()["paths"])
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )
    app.add_middleware(AdmissionMiddleware, limit=settings.max_inflight, metrics=metrics)
    app.add_middleware(  # bodies are complete before admission counts them
        BodyLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_s=settings.body_timeout_s,
        max_buffered_bytes=settings.max_buffered_body_bytes,
    )
    app.add_middleware(ClientGoneMiddleware, metrics=metrics)  # outermost: sees clients that leave mid-upload
    return app
