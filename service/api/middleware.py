"""Request counting, latency and in-flight metrics, labelled by route template (not raw path)."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.serving.metrics import UNMATCHED, Metrics

log = logging.getLogger("emoserve.api")
CLIENT_CLOSED_REQUEST = 499  # nginx's status: the client closed the connection before the answer


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


class ClientGoneMiddleware:
    """Outermost: a client that leaves before any answer was started (e.g. mid-upload, while the
    body is still being read) is counted as 499, apart from server errors, with one log line."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gone = answered = False

        async def watch_receive() -> Message:
            nonlocal gone
            message = await receive()
            gone = gone or message["type"] == "http.disconnect"
            return message

        async def watch_send(message: Message) -> None:
            nonlocal answered
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, watch_receive, watch_send)
        finally:
            if gone and not answered:
                endpoint = getattr(scope.get("route"), "path", None) or scope["path"]  # labels() bounds it
                self.metrics.requests.labels(endpoint=endpoint, code=str(CLIENT_CLOSED_REQUEST)).inc()
                log.info("client closed the connection during %s %s", scope.get("method"), scope["path"])
