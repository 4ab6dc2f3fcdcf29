"""Request bodies are read in full, within limits, before anything else sees the request.

A body over `max_body_bytes` is refused with 413 as soon as that is known (a declared Content-Length,
or a chunked body passing the limit). The whole body must arrive within `body_timeout_s` (408), so a
client that sends a byte every few seconds cannot hold the request open. Bodies being read together
may hold at most `max_buffered_bytes` (a declared length is reserved up front); past that a new
request gets 503 + Retry-After. Admission (the next middleware) only counts requests whose body is
complete, so slow uploads can never take the analysis slots.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.asgi_errors import send_error
from service.errors import BodyTimeout, Overloaded, PayloadTooLarge

_BODILESS = {"GET", "HEAD", "OPTIONS"}


class _ClientLeft(Exception):
    pass


class BodyLimitMiddleware:
    def __init__(
        self, app: ASGIApp, max_body_bytes: int, body_timeout_s: float = 15.0, max_buffered_bytes: int = 1 << 27
    ) -> None:
        self.app = app
        self.limit = max_body_bytes
        self.timeout_s = body_timeout_s
        self.budget = max(max_buffered_bytes, max_body_bytes)
        self.buffered = 0  # bytes reserved by bodies being read now

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in _BODILESS:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        try:
            reserve = max(0, int(declared)) if declared is not None else 0
        except ValueError:
            reserve = 0
        if reserve > self.limit:
            await send_error(send, self._too_large(), close=True)
            return
        if self.buffered + reserve > self.budget:
            await send_error(send, Overloaded("server busy reading other uploads; retry shortly", retry_after_s=1))
            return
        self.buffered += reserve
        try:
            body = await asyncio.wait_for(self._read(receive, reserve), self.timeout_s)
        except TimeoutError:
            message = f"the request body did not arrive within {self.timeout_s:g} s"
            await send_error(send, BodyTimeout(message, {"timeout_s": self.timeout_s}), close=True)
            return
        except (PayloadTooLarge, Overloaded) as exc:
            await send_error(send, exc, close=True)
            return
        except _ClientLeft:
            return
        finally:
            self.buffered -= reserve
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive, reserved: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        extra = 0  # bytes beyond the declared length (chunked bodies) held against the budget
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _ClientLeft
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.limit:
                    raise self._too_large()
                grow = max(0, size - reserved) - extra
                if grow:
                    if self.buffered + grow > self.budget:
                        raise Overloaded("server busy reading other uploads; retry shortly", retry_after_s=1)
                    self.buffered += grow
                    extra += grow
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
        finally:
            self.buffered -= extra

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body is over the limit of {self.limit} bytes", {"limit_bytes": self.limit})


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands out the buffered body once, then waits on the real one (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
