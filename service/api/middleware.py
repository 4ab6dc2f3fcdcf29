"""Request counting, latency and in-flight metrics, labelled by route template (not raw path)."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.metrics import UNMATCHED, Metrics


class RequestMetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") == "/metrics":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.inflight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.inflight.dec()
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or UNMATCHED
            if route is not None:
                self.metrics.add_endpoints([endpoint])  # a route's template: the set stays bounded
            self.metrics.requests.labels(endpoint=endpoint, code=str(status)).inc()
            self.metrics.request_duration.labels(endpoint=endpoint).observe(time.perf_counter() - started)
