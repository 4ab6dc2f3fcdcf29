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
from service.pipeline.stream_reuse import ReusePolicy
from service.settings import Settings

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
    reuse_change: float | None = None
    classify_detected: bool | None = None
    confirm_changes: bool | None = None
    explain: bool = False

    def merged(self, update: StreamConfig) -> StreamSettings:
        changes: dict[str, Any] = update.model_dump(exclude={"type"}, exclude_none=True)
        return self.model_copy(update=changes)

    def options(self) -> AnalyzeOptions:
        return AnalyzeOptions(max_faces=self.max_faces, threshold=self.threshold, explain=self.explain)

    def policy(self, settings: Settings) -> ReusePolicy:
        """The stream's reuse policy: the server's settings, overridden by what the stream set."""
        s = settings
        return ReusePolicy(
            enabled=s.ws_reuse if self.reuse is None else self.reuse,
            detect_every=self.detect_every or s.ws_detect_every,
            reclassify_every=self.reclassify_every or s.ws_reclassify_every,
            max_age_ms=s.ws_reclassify_ms,
            change=s.ws_reuse_change if self.reuse_change is None else self.reuse_change,
            margin=s.ws_reuse_margin,
            classify_detected=s.ws_classify_detected if self.classify_detected is None else self.classify_detected,
            confirm_changes=s.ws_confirm_changes if self.confirm_changes is None else self.confirm_changes,
            follow_min_size=s.ws_follow_min_size,
        )
