"""The analysis result and request options: defined once, reused by the CLI, REST and WebSocket."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.errors import InvalidOptions


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class Face(_Out):
    box: Box
    score: float
    landmarks: list[list[float]] | None = Field(None, description="5 [x, y] points, or null")
    emotion: Emotion
    explanation: Explanation | None = Field(None, description="with explain=true: the face's heat map, else null")


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
        """Validate options; anything out of range or unknown raises `InvalidOptions`."""
        if isinstance(options, AnalyzeOptions):
            return options
        try:
            return cls.model_validate(dict(options or {}))
        except ValidationError as exc:
            problems = {".".join(str(p) for p in e["loc"]) or "options": e["msg"] for e in exc.errors()}
            message = "; ".join(f"{k}: {v}" for k, v in problems.items())
            raise InvalidOptions(f"invalid options: {message}", detail={"errors": problems}) from None
