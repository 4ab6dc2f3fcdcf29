"""Errors raised by the SDK."""

from __future__ import annotations

from typing import Any


class EmoserveAPIError(Exception):
    """The service answered with an error body `{"error": {"code", "message", "detail"}}`."""

    def __init__(self, status: int, code: str, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail or {}


class StreamClosed(Exception):
    """The server closed the stream with a code other than 1000 (e.g. 1008 auth, 1009 too big, 1001 going away)."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"stream closed with {code}: {reason}")
        self.code = code
        self.reason = reason
