"""`POST /v1/analyze`, `/v1/analyze/batch`, `/v1/annotate`: thin adapters over the pipeline."""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service.api.cache import cache_key
from service.api.context import ServiceContext, authorize, context
from service.api.inputs import read_images
from service.errors import ImageTooLarge, InvalidImage, RequestTimeout, error_body
from service.pipeline.annotate import annotate_jpeg
from service.pipeline.schema import AnalysisResult, AnalyzeOptions, Timings

router = APIRouter(prefix="/v1", tags=["analyze"])


IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "string", "format": "binary"}},
                    "required": ["image"],
                }
            },
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image_base64": {"type": "string"},
                        "max_faces": {"type": "integer", "minimum": 1},
                        "min_face_size": {"type": "integer", "minimum": 0},
                        "threshold": {"type": "number", "minimum": 0, "maximum": 1},
                        "landmarks": {"type": "boolean"},
                        "explain": {"type": "boolean"},
                    },
                    "required": ["image_base64"],
                }
            },
        },
    }
}
BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"images": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                    "required": ["images"],
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images_base64": {"type": "array", "items": {"type": "string"}},
                        "max_faces": {"type": "integer", "minimum": 1},
                        "min_face_size": {"type": "integer", "minimum": 0},
                        "threshold": {"type": "number", "minimum": 0, "maximum": 1},
                        "landmarks": {"type": "boolean"},
                        "explain": {"type": "boolean"},
                    },
                    "required": ["images_base64"],
                }
            },
        },
    }
}


@dataclass
class _Answer:
    body: dict[str, Any]  # an AnalysisResult, JSON-ready
    cached: bool


async def _analyze_one(ctx: ServiceContext, data: bytes, options: dict[str, Any]) -> _Answer:
    """Run (or fetch from the cache) one analysis. A cached answer keeps its body but carries this
    request's timings: only `total`, the time spent hashing and looking it up."""
    started = time.perf_counter()
    opts = AnalyzeOptions.parse(options)
    async with ctx.manager.use() as pipeline:
        models = {role: [n, v] for role, (n, v, _) in pipeline.model_versions().items()}
        key = cache_key(hashlib.sha256(data).hexdigest(), models, opts.model_dump(mode="json"))
        cached = await ctx.cache.get_result(key, models)
        if cached is not None:
            total_ms = round((time.perf_counter() - started) * 1000, 3)
            cached["timings_ms"] = Timings(total=total_ms).model_dump(mode="json")
            return _Answer(cached, cached=True)
        result: AnalysisResult = await asyncio.wait_for(
            pipeline.analyze(data, opts), timeout=ctx.settings.request_timeout_s
        )
    body = result.model_dump(mode="json")
    ctx.metrics.observe_result(result)
    await ctx.cache.set_result(key, body)
    return _Answer(body, cached=False)


async def _timed(ctx: ServiceContext, data: bytes, options: dict[str, Any]) -> _Answer:
    try:
        return await _analyze_one(ctx, data, options)
    except TimeoutError as exc:
        raise RequestTimeout(f"analysis took longer than {ctx.settings.request_timeout_s} s") from exc


def _cache_header(*hits: bool) -> dict[str, str]:
    """`X-Cache: hit` when every result came from the result cache, else `miss`."""
    return {"X-Cache": "hit" if hits and all(hits) else "miss"}


@router.post(
    "/analyze", summary="Find every face and its emotion", openapi_extra=IMAGE_BODY, response_model=AnalysisResult
)
async def analyze(request: Request) -> JSONResponse:
    await authorize(request)
    ctx = context(request)
    req = await read_images(request)
    data = req.only_image()
    answer = await _timed(ctx, data, req.options)
    return JSONResponse(answer.body, headers=_cache_header(answer.cached))


@router.post(
    "/analyze/batch", summary="Analyze several images; a bad image fails only its own slot", openapi_extra=BATCH_BODY
)
async def analyze_batch(request: Request) -> JSONResponse:
    await authorize(request)
    ctx = context(request)
    req = await read_images(request, field="images", many=True, max_images=ctx.settings.batch_limit)
    AnalyzeOptions.parse(req.options)  # invalid options fail the whole request (422)

    async def slot(data: bytes | InvalidImage) -> _Answer:
        try:
            if isinstance(data, InvalidImage):
                raise data
            return await _timed(ctx, data, req.options)
        except (InvalidImage, ImageTooLarge) as exc:  # a bad image fails its own slot only
            return _Answer(error_body(exc), cached=False)

    answers = await asyncio.gather(*(slot(data) for _, data in req.images))
    return JSONResponse({"results": [a.body for a in answers]}, headers=_cache_header(*(a.cached for a in answers)))


@router.post(
    "/annotate",
    summary="The image with boxes, labels and score bars drawn (JPEG)",
    openapi_extra=IMAGE_BODY,
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}},
)
async def annotate(request: Request) -> Response:
    await authorize(request)
    ctx = context(request)
    req = await read_images(request)
    data = req.only_image()
    answer = await _timed(ctx, data, req.options)
    started = time.perf_counter()
    jpeg = await asyncio.to_thread(annotate_jpeg, data, answer.body, max_pixels=ctx.settings.max_image_pixels)
    ctx.metrics.stage_duration.labels(stage="annotate").observe(time.perf_counter() - started)
    return Response(jpeg, media_type="image/jpeg", headers=_cache_header(answer.cached))
