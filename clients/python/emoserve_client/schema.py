"""The wire schema of emoserve: request options, results and stream messages, in pydantic alone.

The server and the SDK share these definitions (the server re-exports them from `service.pipeline.schema`
and `service.pipeline.stream_schema`); nothing here needs the server, OpenCV or numpy. Invalid input
raises `OptionsError`, a `ValueError` that the server turns into its 422 `invalid_options`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    model_serializer,
)


class OptionsError(ValueError):
    """Options or a message that do not validate; `problems` maps each field to what is wrong with it."""

    def __init__(self, what: str, exc: ValidationError) -> None:
        self.problems = {".".join(str(p) for p in e["loc"]) or "message": e["msg"] for e in exc.errors()}
        super().__init__(f"{what}: " + "; ".join(f"{k}: {v}" for k, v in self.problems.items()))


class _Out(BaseModel):
    # what the server sends: a field a newer server adds is skipped, not an error, so clients keep working
    model_config = ConfigDict(extra="ignore")


class ImageSize(_Out):
    width: int
    height: int


class ModelInfo(_Out):
    name: str
    version: int


class ModelsUsed(_Out):
    detector: ModelInfo
    classifier: ModelInfo


class Box(_Out):
    x1: float
    y1: float
    x2: float
    y2: float


class Emotion(_Out):
    label: str
    confidence: float
    scores: dict[str, float] = Field(description="label -> probability, in the classifier's label order")


class Explanation(_Out):
    """Where the classifier looked: its class activation map for the face's label, over the aligned crop."""

    label: str = Field(description="the class the map explains: the face's label")
    grid: list[list[float]] = Field(description="the map, rows top to bottom, values in [0, 1] (1 = the peak)")
    affine: list[list[float]] = Field(
        description="2x3 matrix from grid coordinates (column, row; cell centres at integers) to image pixels: "
        "cv2.warpAffine(np.float32(grid), np.float32(affine), (width, height)) lays the map on the image"
    )


class _Explained(BaseModel):
    """A face whose `explanation` is left out of its JSON unless there is one (explain=true)."""

    @model_serializer(mode="wrap")
    def _drop_missing_explanation(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("explanation") is None:
            data.pop("explanation", None)
        return data


class Face(_Out, _Explained):
    box: Box
    score: float
    landmarks: list[list[float]] | None = Field(None, description="5 [x, y] points, or null")
    emotion: Emotion
    explanation: Explanation | None = Field(None, description="with explain=true: the face's heat map (else absent)")


class Timings(_Out):
    decode: float = 0.0
    queue: float = 0.0
    detect: float = 0.0
    align: float = 0.0
    classify: float = 0.0
    total: float = 0.0


class AnalysisResult(_Out):
    """`{"image", "models", "faces", "timings_ms"}`; faces sorted by box area, largest first."""

    image: ImageSize
    models: ModelsUsed
    faces: list[Face]
    timings_ms: Timings


class AnalyzeOptions(BaseModel):
    """Per-request options; None means the setting's default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_faces: int | None = Field(None, ge=1, le=1000, description="Most faces returned (largest first).")
    min_face_size: int | None = Field(None, ge=0, le=4096, description="Ignore faces smaller than this (pixels).")
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="Face score threshold.")
    landmarks: bool = Field(True, description="Include the 5 landmarks of each face.")
    explain: bool = Field(False, description="A heat map per face of where the classifier looked.")

    @classmethod
    def parse(cls, options: AnalyzeOptions | Mapping[str, Any] | None) -> AnalyzeOptions:
        """Validate options; anything out of range or unknown raises `OptionsError` (a ValueError)."""
        if isinstance(options, AnalyzeOptions):
            return options
        try:
            return cls.model_validate(dict(options or {}))
        except ValidationError as exc:
            raise OptionsError("invalid options", exc) from None


# -- the stream (`WS /v1/stream`) -------------------------------------------------------------
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
    reuse_change: float | None = Field(
        None, ge=0.0, le=255.0, description="Crop change (0-255) that makes a face classified again."
    )
    classify_detected: bool | None = Field(
        None,
        description="Detect every frame in which a face is classified again (with reuse_change 4: streams"
        " that agree with still-image analysis, at more work per frame).",
    )
    confirm_changes: bool | None = Field(
        None,
        description="When a face classified on followed landmarks changes its label or is unclear (top two"
        " probabilities within EMOSERVE_WS_REUSE_MARGIN), detect the frame and classify the detected crop instead"
        " (default: EMOSERVE_WS_CONFIRM_CHANGES).",
    )
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


def parse_control(text: str | bytes) -> ControlMessage:
    """Parse one client -> server text message; anything malformed raises `OptionsError`."""
    try:
        return _CONTROL.validate_json(text)
    except ValidationError as exc:
        raise OptionsError("invalid control message", exc) from None


class StreamEmotion(BaseModel):
    label: str = Field(description="argmax of smoothed_scores when smoothing is on, else of scores")
    confidence: float = Field(description="the probability of `label` in the distribution it came from")
    scores: dict[str, float] = Field(description="this frame's probabilities")
    smoothed_scores: dict[str, float] = Field(description="the track's EMA of scores (= scores without tracking)")


class StreamFace(_Out, _Explained):
    track_id: int | None
    box: Box
    score: float
    landmarks: list[list[float]] | None = None
    emotion: StreamEmotion
    classified: bool = Field(True, description="the emotion was computed for this frame (false: carried over)")
    emotion_age: int = Field(0, description="processed frames since this face's emotion was computed")
    explanation: Explanation | None = Field(None, description="with `explain`: the heat map of the frame's label")


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


class Hello(BaseModel):
    """The server's first message on a stream (after authentication): what it does with frames."""

    type: Literal["hello"] = "hello"
    analysis_size: int = Field(
        description="the longest frame side the server makes use of: clients downscale larger frames to it before "
        "encoding (and map results back). Faces are detected at `detect_size` and cropped for the classifier from "
        "the frame as sent, up to this size, so small faces keep their detail"
    )
    detect_size: int = Field(description="the longest side the server detects faces at")
    max_frame_bytes: int = Field(description="frames over this many bytes close the stream (1009)")
    max_fps: float = Field(description="the most frames per second the server processes (0: no cap)")
    max_faces: int = Field(description="the most faces per frame")


ServerMessage = Annotated[StreamResult | StreamError | Pong | Hello, Field(discriminator="type")]
_SERVER: TypeAdapter[ServerMessage] = TypeAdapter(ServerMessage)


def parse_server_message(data: str | bytes) -> ServerMessage:
    """Parse a message the server sent (used by the SDK)."""
    return _SERVER.validate_json(data)
