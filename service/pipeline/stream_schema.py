"""Messages of the WebSocket stream (`WS /v1/stream`), beside the REST schema they reuse.

Client -> server text messages: `config`, `frame` (metadata for the next binary frame), `ping`,
`auth`. Server -> client: `result` (one per processed frame), `error` (a bad frame or message; the
stream goes on) and `pong`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from service.errors import InvalidOptions
from service.pipeline.schema import AnalyzeOptions, Box, Explanation


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamConfig(_In):
    """`{"type": "config", ...}`: every field optional; unset fields keep their current value."""

    type: Literal["config"] = "config"
    max_faces: int | None = Field(None, ge=1, le=1000, description="Most faces per frame (largest first).")
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="Face score threshold.")
    smoothing: float | None = Field(None, ge=0.0, le=1.0, description="EMA weight of the past (0 = off).")
    track: bool | None = Field(None, description="Track faces across frames (track_id); false gives null ids.")
    fps_limit: float | None = Field(None, ge=0.0, le=1000.0, description="Most frames processed per second (0 = none).")
    reuse: bool | None = Field(None, description="Reuse work across frames (default: EMOSERVE_WS_REUSE).")
    detect_every: int | None = Field(None, ge=1, le=1000, description="Full detection every N processed frames.")
    reclassify_every: int | None = Field(None, ge=1, le=1000, description="Classify a face again after N frames.")
    explain: bool | None = Field(None, description="A heat map per face (`explanation`), as REST's explain=true.")


class FrameMeta(_In):
    """`{"type": "frame", "id", "ts"}`: metadata for the binary frame that follows."""

    type: Literal["frame"] = "frame"
    id: int | str | None = None
    ts: float | None = None


class Ping(_In):
    type: Literal["ping"] = "ping"


class Auth(_In):
    type: Literal["auth"] = "auth"
    api_key: str


ControlMessage = Annotated[StreamConfig | FrameMeta | Ping | Auth, Field(discriminator="type")]
_CONTROL: TypeAdapter[ControlMessage] = TypeAdapter(ControlMessage)


def parse_control(text: str) -> ControlMessage:
    """Parse one text message; anything malformed raises `InvalidOptions`."""
    try:
        return _CONTROL.validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}" for e in exc.errors())
        raise InvalidOptions(f"invalid control message: {problems}") from None


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


class StreamEmotion(BaseModel):
    label: str = Field(description="argmax of smoothed_scores when smoothing is on, else of scores")
    confidence: float = Field(description="the probability of `label` in the distribution it came from")
    scores: dict[str, float] = Field(description="this frame's probabilities")
    smoothed_scores: dict[str, float] = Field(description="the track's EMA of scores (= scores without tracking)")


class StreamFace(BaseModel):
    track_id: int | None
    box: Box
    score: float
    landmarks: list[list[float]] | None = None
    emotion: StreamEmotion
    classified: bool = Field(True, description="the emotion was computed for this frame (false: carried over)")
    emotion_age: int = Field(0, description="processed frames since this face's emotion was computed")
    explanation: Explanation | None = Field(None, description="with `explain`: the heat map of this frame's label")


class StreamResult(BaseModel):
    """One per processed frame."""

    type: Literal["result"] = "result"
    frame_id: int | str | None
    ts: float | None
    latency_ms: float = Field(description="server time from receiving the frame to sending this result")
    faces: list[StreamFace]
    dropped_since_last: int = Field(description="frames dropped (never processed) since the previous result")


class StreamError(BaseModel):
    type: Literal["error"] = "error"
    code: str
    message: str
    frame_id: int | str | None = Field(None, description="the frame it concerns; null for a bad control message")
    dropped_since_last: int = Field(
        0, description="for a frame's error: frames dropped (never processed) since the previous result or frame error"
    )


class Pong(BaseModel):
    type: Literal["pong"] = "pong"


ServerMessage = Annotated[StreamResult | StreamError | Pong, Field(discriminator="type")]
_SERVER: TypeAdapter[ServerMessage] = TypeAdapter(ServerMessage)


def parse_server_message(data: str | bytes) -> ServerMessage:
    """Parse a message the server sent (used by the SDK)."""
    return _SERVER.validate_json(data)
