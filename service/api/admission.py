"""Admission control: at most `limit` analyses in flight per worker. Past that, a request is
refused with 503 + Retry-After by a raw ASGI middleware before its body is read or routed, so a
refusal costs almost nothing and admitted requests keep their latency under overload."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.metrics import Metrics

GUARDED_PREFIXES = ("/v1/analyze", "/v1/annotate")


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp, limit: int, metrics: Metrics) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics
        self.inflight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not scope["path"].startswith(GUARDED_PREFIXES):
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.limit:
            await self._refuse(scope, send)
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1

    async def _refuse(self, scope: Scope, send: Send) -> None:
        self.metrics.requests.labels(endpoint=scope["path"], code="503").inc()
        body = json.dumps(
            {
                "error": {
                    "code": "overloaded",
                    "message": f"server busy: {self.inflight} analyses in flight (limit {self.limit}); retry shortly",
                    "detail": {"inflight": self.inflight, "limit": self.limit},
                }
            }
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"1"),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})
