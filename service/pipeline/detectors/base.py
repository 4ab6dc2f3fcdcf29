"""The detector interface, its result type and the family registry."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from model_store import ResolvedModel
from service.errors import UnknownFamily

# Builds an onnxruntime.InferenceSession for a model file (the runtime's session pool supplies it).
# factory(model_path) -> session; detectors of fully convolutional graphs may call
# factory(model_path, free_spatial=True) for a session that accepts any input height and width.
SessionFactory = Callable[..., Any]


@dataclass(frozen=True)
class DetectedFace:
    """One face in original-image pixels."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    score: float
    landmarks: np.ndarray | None = None  # (5, 2): left eye, right eye, nose tip, left mouth, right mouth


class FaceDetector(Protocol):
    """Finds faces in a BGR uint8 image (H, W, 3)."""

    family: str

    def detect(self, image_bgr: np.ndarray, threshold: float | None = None) -> list[DetectedFace]: ...


DetectorBuilder = Callable[..., FaceDetector]  # (model, session_factory, **options)

_REGISTRY: dict[str, DetectorBuilder] = {}

# family -> module that registers it on import (kept lazy so unused families cost nothing)
_FAMILY_MODULES = {
    "yunet": "service.pipeline.detectors.yunet",
    "scrfd": "service.pipeline.detectors.scrfd",
    "retinaface": "service.pipeline.detectors.retinaface",
    "blazeface": "service.pipeline.detectors.blazeface",
}


def register_detector(family: str) -> Callable[[DetectorBuilder], DetectorBuilder]:
    def deco(builder: DetectorBuilder) -> DetectorBuilder:
        _REGISTRY[family] = builder
        return builder

    return deco


def registered_families() -> list[str]:
    return sorted(_FAMILY_MODULES)


def create_detector(model: ResolvedModel, session_factory: SessionFactory, **options: Any) -> FaceDetector:
    """Build the detector for `model.manifest.family`; an unknown family raises `UnknownFamily`.

    `options` go to the family's builder (`max_side`: longest side the detector sees, the image is
    resized once and boxes mapped back; `min_face_size`).
    """
    family = model.manifest.family
    if model.manifest.task != "face_detector":
        raise UnknownFamily(f"{model.ref} is a {model.manifest.task}, not a face_detector")
    if family not in _REGISTRY and family in _FAMILY_MODULES:
        importlib.import_module(_FAMILY_MODULES[family])
    if family not in _REGISTRY:
        raise UnknownFamily(
            f"no detector implementation for family {family!r}; known: {', '.join(registered_families())}"
        )
    return _REGISTRY[family](model, session_factory, **options)
