"""`/healthz`, `/readyz`, `/metrics`."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service.api.context import context

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="200 only when the detector and classifier are loaded and warmed")
async def readyz(request: Request) -> JSONResponse:
    ctx = context(request)
    models = {role: {"name": n, "version": v, "provider": p} for role, (n, v, p) in ctx.manager.versions().items()}
    body = {
        "ready": ctx.manager.ready,
        "models": models,
        "redis": None if ctx.redis is None else ("ok" if ctx.redis.healthy else "unavailable"),
        "model_events": ctx.events.state,
        "error": ctx.manager.last_error,
    }
    headers = {} if ctx.manager.ready else {"Retry-After": "5"}
    return JSONResponse(body, status_code=200 if ctx.manager.ready else 503, headers=headers)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    body, content_type = context(request).metrics.exposition()
    return Response(body, media_type=content_type)
