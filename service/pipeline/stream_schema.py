"""Messages of the WebSocket stream (`WS /v1/stream`): the wire schema the SDK shares
(`emoserve_client.schema`), re-exported, and what only the server needs: `StreamSettings` (a
connection's effective configuration) and `parse_control`, which turns a bad message into `InvalidOptions`.

Client -> server text messages: `config`, `frame` (metadata for the next binary frame), `ping`,
`auth`. Server -> client: `result` (one per processed frame), `error` (a bad frame or message; the
stream goes on) and `pong`.
"""

from __future__ import annotations

from typing import Any

from emoserve_client import schema as wire
from emoserve_client.schema import (
    AnalyzeOptions,
    Auth,
    ControlMessage,
    FrameMeta,
    Hello,
    OptionsError,
    Ping,
    Pong,
    StreamConfig,
    StreamEmotion,
    StreamError,
    StreamFace,
    StreamResult,
    parse_server_message,
)
from pydantic import BaseModel

from service.errors import InvalidOptions

__all__ = [
    "Auth",
    "ControlMessage",
    "FrameMeta",
    "Hello",
    "Ping",
    "Pong",
    "StreamConfig",
    "StreamEmotion",
    "StreamError",
    "StreamFace",
    "StreamResult",
    "StreamSettings",
    "parse_control",
    "parse_server_message",
]


def parse_control(text: str) -> ControlMessage:
    """Parse one text message; anything malformed raises `InvalidOptions`."""
    try:
        return wire.parse_control(text)
    except OptionsError as exc:
        raise InvalidOptions(str(exc)) from None


class StreamSettings(BaseModel):
    """The effective per-connection configuration (defaults + every `config` message so far)."""

    max_faces: int | None = None
    threshold: float | None = None
    smoothing: float = 0.6
    track: bool = True
    fps_limit: float = 0.0
    reuse: bool | None = None
    detect_every: int | None = None
    reclassify_every: int | None = None
    explain: bool = False

    def merged(self, update: StreamConfig) -> StreamSettings:
        changes: dict[str, Any] = update.model_dump(exclude={"type"}, exclude_none=True)
        return self.model_copy(update=changes)

    def options(self) -> AnalyzeOptions:
        return AnalyzeOptions(max_faces=self.max_faces, threshold=self.threshold, explain=self.explain)
