"""`/healthz`, `/readyz`, `/metrics`."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from service.api.deps import Plane

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="200 only when the detector and classifier are loaded and warmed")
async def readyz(plane: Plane) -> JSONResponse:
    models = {role: {"name": n, "version": v, "provider": p} for role, (n, v, p) in plane.manager.versions().items()}
    body = {
        "ready": plane.manager.ready,
        "models": models,
        "redis": None if plane.redis is None else ("ok" if plane.redis.healthy else "unavailable"),
        "model_events": plane.events.state,
        "error": plane.manager.last_error,
    }
    headers = {} if plane.manager.ready else {"Retry-After": "5"}
    return JSONResponse(body, status_code=200 if plane.manager.ready else 503, headers=headers)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(plane: Plane) -> Response:
    body, content_type = plane.metrics.exposition()
    return Response(body, media_type=content_type)
