"""Every failure leaves as `{"error": {"code", "message", "detail"}}` with the status of the one
error table; 429/503 carry Retry-After. Nothing a client sends becomes a 500: a client that goes
away before its request is read is answered (and counted) 499, without a traceback."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from model_store import ModelStoreError
from service.errors import EmoserveError, Overloaded, error_body, spec_for

log = logging.getLogger("emoserve.api")


def error_response(exc: BaseException) -> JSONResponse:
    spec = spec_for(exc)
    headers = {}
    if isinstance(exc, Overloaded) or spec.http_status in (429, 503):
        retry = getattr(exc, "retry_after_s", 1.0)
        headers["Retry-After"] = str(max(1, math.ceil(retry)))
    return JSONResponse(error_body(exc), status_code=spec.http_status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(EmoserveError)
    async def _domain(_: Request, exc: EmoserveError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(ModelStoreError)
    async def _store(_: Request, exc: ModelStoreError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")} for e in exc.errors()
        ]
        body = {"error": {"code": "invalid_options", "message": "invalid request", "detail": {"problems": problems}}}
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}
        code = codes.get(exc.status_code, "http_error")
        body = {"error": {"code": code, "message": str(exc.detail), "detail": {}}}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(exc), status_code=500)
