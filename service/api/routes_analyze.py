"""`POST /v1/analyze`, `/v1/analyze/batch`, `/v1/annotate`: thin adapters over the pipeline."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service.api.deps import Caller, Plane
from service.api.inputs import read_images
from service.errors import ImageTooLarge, InvalidImage, error_body
from service.pipeline.annotate import annotate_jpeg
from service.pipeline.schema import AnalysisResult
from service.serving.dataplane import Answer

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


def _cache_header(*hits: bool) -> dict[str, str]:
    """`X-Cache: hit` when every result came from the result cache, else `miss`."""
    return {"X-Cache": "hit" if hits and all(hits) else "miss"}


@router.post(
    "/analyze", summary="Find every face and its emotion", openapi_extra=IMAGE_BODY, response_model=AnalysisResult
)
async def analyze(request: Request, plane: Plane, _: Caller) -> JSONResponse:
    req = await read_images(request)
    answer = await plane.analyze(req.only_image(), req.options)
    return JSONResponse(answer.body, headers=_cache_header(answer.cached))


@router.post(
    "/analyze/batch", summary="Analyze several images; a bad image fails only its own slot", openapi_extra=BATCH_BODY
)
async def analyze_batch(request: Request, plane: Plane, _: Caller) -> JSONResponse:
    req = await read_images(request, field="images", many=True, max_images=plane.settings.batch_limit)
    await plane.check(req.options)  # invalid options, or options the model cannot serve, fail the whole request

    async def slot(data: bytes | InvalidImage) -> Answer:
        try:
            if isinstance(data, InvalidImage):
                raise data
            return await plane.analyze(data, req.options)
        except (InvalidImage, ImageTooLarge) as exc:  # a bad image fails its own slot only
            return Answer(error_body(exc), cached=False)

    answers = await asyncio.gather(*(slot(data) for _, data in req.images))
    return JSONResponse({"results": [a.body for a in answers]}, headers=_cache_header(*(a.cached for a in answers)))


@router.post(
    "/annotate",
    summary="The image with boxes, labels and score bars drawn (JPEG)",
    openapi_extra=IMAGE_BODY,
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}},
)
async def annotate(request: Request, plane: Plane, _: Caller) -> Response:
    req = await read_images(request)
    data = req.only_image()
    answer = await plane.analyze(data, req.options)
    started = time.perf_counter()
    jpeg = await asyncio.to_thread(annotate_jpeg, data, answer.body, max_pixels=plane.settings.max_image_pixels)
    plane.metrics.stage_duration.labels(stage="annotate").observe(time.perf_counter() - started)
    return Response(jpeg, media_type="image/jpeg", headers=_cache_header(answer.cached))
