"""The manifest that travels with every artifact: what the model is and how to feed it.

Preprocessing is read from here, never guessed. The input convention is::

    x = (pixel * scale - mean) / std      # per channel, in `color` order, then laid out as `layout`
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from model_store.names import validate_name, validate_version

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"  # an optional static-QDQ int8 variant of MODEL_FILE (same inputs and outputs)
CARD_FILE = "MODEL_CARD.md"

Task = Literal["face_detector", "emotion_classifier"]
Layout = Literal["NCHW", "NHWC"]
ColorOrder = Literal["RGB", "BGR", "GRAY"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Strict):
    """One file of the artifact, relative to the version folder."""

    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        parts = Path(v).parts
        if not v or Path(v).is_absolute() or ".." in parts or "\\" in v or len(parts) != 1:
            raise ValueError(f"file path {v!r} must be a plain file name inside the version folder")
        return v


class TensorSpec(_Strict):
    """A graph input or output. Dynamic axes are strings (e.g. "batch", "height")."""

    name: str
    shape: list[int | str]
    dtype: str = "float32"


class InputSpec(TensorSpec):
    """An image input: layout, colour order, spatial size and normalisation."""

    layout: Layout = "NCHW"
    color: ColorOrder = "RGB"
    size: tuple[int, int] | None = Field(
        default=None, description="(width, height) the model expects; None when any size works"
    )
    scale: float = 1.0 / 255.0
    mean: list[float] = Field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0])

    @model_validator(mode="after")
    def _channels(self) -> InputSpec:
        channels = 1 if self.color == "GRAY" else 3
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean and std need {channels} values for colour order {self.color}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self

    @property
    def channels(self) -> int:
        return 1 if self.color == "GRAY" else 3


class DetectorDecoding(_Strict):
    """Decoding parameters of a face detector; family-specific extras go in `params`."""

    score_threshold: float = Field(0.6, ge=0.0, le=1.0)
    nms_threshold: float = Field(0.3, ge=0.0, le=1.0)
    strides: list[int] | None = None
    anchors_per_location: int | None = None
    num_keypoints: int | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class ServingHints(_Strict):
    """How the service should batch this model (per model, like Triton's `dynamic_batching`); unset
    fields take the service's settings. `max_batch` and `queue_size` cannot exceed the settings'."""

    max_batch: int | None = Field(None, ge=1, le=1024)
    max_delay_ms: float | None = Field(None, ge=0.0, le=1000.0)
    queue_size: int | None = Field(None, ge=1, le=100_000)


class ExplainSpec(_Strict):
    """How a classifier explains its answers: a graph output of class activation maps, `[batch, labels, h, w]`
    (for a network that ends in global pooling and a linear layer, Grad-CAM up to scale). A manifest
    without it says the model cannot explain."""

    method: Literal["cam"] = "cam"
    output: str = "cam"
    flip_averaged: bool = False  # the maps of the image and of its mirror (mirrored back) are averaged


class PriorCorrection(_Strict):
    """A served correction of the training prior (logit adjustment): each probability is divided by its class's
    training frequency to the power `strength`, then the row is renormalised. A class that was common in
    training (FER+: neutral, over a third) then wins fewer close calls; 0 leaves the probabilities as they are."""

    prior: list[float]  # per label, in the manifest's label order: the class frequencies of the training split
    strength: float = Field(ge=0.0, le=2.0)

    @field_validator("prior")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if not v or any(not 0.0 < p <= 1.0 for p in v):
            raise ValueError("a prior gives every class a frequency in (0, 1]")
        return v


class TrainingRun(_Strict):
    """Where a trained model came from."""

    git_commit: str | None = None
    dataset: str | None = None
    dataset_fingerprint: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    date: datetime | None = None
    duration_s: float | None = None


class Provenance(_Strict):
    """Either an upstream source (URL, package) or one of our own training runs."""

    source: str | None = None
    source_sha256: str | None = None
    licence: str | None = None
    notes: str | None = None
    training: TrainingRun | None = None


_LATE_FIELDS = ("prior_correction",)


class Manifest(_Strict):
    """Everything needed to load, verify and feed one model version."""

    schema_version: int = SCHEMA_VERSION
    name: str
    version: int
    task: Task
    family: str
    description: str = ""
    files: list[FileEntry]
    inputs: list[InputSpec]
    outputs: list[TensorSpec] = Field(default_factory=list)
    labels: list[str] | None = None
    decoding: DetectorDecoding | None = None
    temperature: float | None = Field(default=None, gt=0.0)
    prior_correction: PriorCorrection | None = None
    serving: ServingHints | None = None
    explain: ExplainSpec | None = None
    metrics: dict[str, dict[str, float]] = Field(default_factory=dict)
    provenance: Provenance = Field(default_factory=Provenance)
    licence: str = "unknown"
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_name(v)

    @field_validator("version")
    @classmethod
    def _version(cls, v: int) -> int:
        return validate_version(v)

    @field_validator("schema_version")
    @classmethod
    def _schema(cls, v: int) -> int:
        if v > SCHEMA_VERSION:
            raise ValueError(f"manifest schema {v} is newer than this emoserve understands ({SCHEMA_VERSION})")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if not self.files:
            raise ValueError("a manifest lists at least one file")
        if not self.inputs:
            raise ValueError("a manifest describes at least one input")
        if self.task == "emotion_classifier" and not self.labels:
            raise ValueError("an emotion classifier's manifest needs its ordered labels")
        if len({f.path for f in self.files}) != len(self.files):
            raise ValueError("duplicate file paths in manifest")
        if self.prior_correction and len(self.prior_correction.prior) != len(self.labels or []):
            raise ValueError("prior_correction.prior needs one frequency per label")
        if self.explain and self.explain.output not in {o.name for o in self.outputs}:
            raise ValueError(f"explain.output {self.explain.output!r} is not one of the manifest's outputs")
        return self

    @property
    def model_file(self) -> str:
        """The ONNX file of the artifact (`model.onnx` when present, else the first .onnx file)."""
        names = [f.path for f in self.files]
        if MODEL_FILE in names:
            return MODEL_FILE
        onnx = [n for n in names if n.endswith(".onnx")]
        return onnx[0] if onnx else names[0]

    @property
    def int8_file(self) -> str | None:
        """The artifact's int8 variant of its model (`model.int8.onnx`), when it has one besides `model.onnx`."""
        names = {f.path for f in self.files}
        return INT8_FILE if INT8_FILE in names and MODEL_FILE in names else None

    @property
    def input(self) -> InputSpec:
        return self.inputs[0]

    def to_json(self) -> str:
        """The manifest as written to disk. `_LATE_FIELDS` (added without a schema bump: `prior_correction`) are
        left out while unset, so that a manifest written before them keeps its bytes (a packed release keeps
        its sha256)."""
        data = self.model_dump(mode="json")
        for late in _LATE_FIELDS:
            if data.get(late) is None:
                data.pop(late, None)
        return json.dumps(data, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_file(cls, path: Path) -> Manifest:
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))
