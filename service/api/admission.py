"""Admission control: at most `limit` analyses in flight per worker. Past that, a request is
refused with 503 + Retry-After by a raw ASGI middleware before it is routed, so a refusal costs
almost nothing and admitted requests keep their latency under overload. It sits inside the body
middleware: a slot is taken only once the whole body has arrived, so a client that sends nothing
cannot hold one."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.asgi_errors import send_error
from service.errors import Overloaded
from service.serving.metrics import Metrics

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
        prefix = next(p for p in GUARDED_PREFIXES if scope["path"].startswith(p))  # a bounded label
        self.metrics.requests.labels(endpoint=prefix, code="503").inc()
        message = f"server busy: {self.inflight} analyses in flight (limit {self.limit}); retry shortly"
        await send_error(send, Overloaded(message, 1.0, {"inflight": self.inflight, "limit": self.limit}))
