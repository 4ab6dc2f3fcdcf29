"""Error responses sent by the raw ASGI middlewares, in the one error shape (`error_body`)."""

from __future__ import annotations

import json
import math

from starlette.types import Send

from service.errors import Overloaded, error_body, spec_for


async def send_error(send: Send, exc: Exception, *, close: bool = False) -> None:
    """Answer `exc` with its status from the errors table; Retry-After for overload."""
    body = json.dumps(error_body(exc)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if isinstance(exc, Overloaded):
        headers.append((b"retry-after", str(max(1, math.ceil(exc.retry_after_s))).encode()))
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": spec_for(exc).http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
