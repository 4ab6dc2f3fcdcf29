"""What every detector family shares: manifest reading, input normalisation and mapping results back."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import cv2
import numpy as np

from model_store import ResolvedModel
from model_store.manifest import DetectorDecoding, InputSpec
from model_store.tensors import normalize
from service.errors import InvalidImage
from service.pipeline.detectors.base import DetectedFace
from service.pipeline.detectors.nms import resize_max_side

DEFAULT_MAX_SIDE = 640

# (boxes (N, 4) x1 y1 x2 y2, scores (N,), landmarks (N, 5, 2) or None), in one frame's pixels
Detections = tuple[np.ndarray, np.ndarray, np.ndarray | None]


def empty_detections(with_landmarks: bool = True) -> Detections:
    return (
        np.zeros((0, 4), np.float32),
        np.zeros(0, np.float32),
        np.zeros((0, 5, 2), np.float32) if with_landmarks else None,
    )


def to_tensor(image_bgr: np.ndarray, spec: InputSpec) -> np.ndarray:
    """A batch of one from a BGR uint8 image: colour order, `(pixel * scale - mean) / std`, layout."""
    if spec.color == "RGB":
        img = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
    elif spec.color == "GRAY":
        img = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)[:, :, None]
    else:
        img = image_bgr
    return normalize(img[None], spec)


def pad_to_multiple(image: np.ndarray, step: int) -> np.ndarray:
    """`image` on a black canvas whose sides are the next multiples of `step` (top-left aligned, so
    detections need no offset)."""
    h, w = image.shape[:2]
    canvas = np.zeros((-(-h // step) * step, -(-w // step) * step, *image.shape[2:]), image.dtype)
    canvas[:h, :w] = image
    return canvas


def unmap(det: Detections, scale: float, pad: tuple[float, float] = (0.0, 0.0)) -> Detections:
    """Undo `p * scale + pad` on boxes and landmarks."""
    boxes, scores, marks = det
    off = np.asarray(pad, np.float32)
    boxes = (boxes - np.tile(off, 2)) / scale
    if marks is not None:
        marks = (marks - off) / scale
    return boxes, scores, marks


def to_faces(det: Detections, image_shape: tuple[int, ...], min_face_size: float = 0.0) -> list[DetectedFace]:
    """Clip to the image, drop faces smaller than `min_face_size`, best score first."""
    boxes, scores, marks = det
    h, w = image_shape[:2]
    boxes = np.clip(boxes, 0.0, [w, h, w, h]).astype(np.float32)
    side = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    ok = (side > 0) & (side >= min_face_size)
    faces = []
    for i in np.flatnonzero(ok)[np.argsort(-scores[ok], kind="stable")]:
        lm = None if marks is None else np.clip(marks[i], 0.0, [w, h]).astype(np.float32)
        box = (float(boxes[i, 0]), float(boxes[i, 1]), float(boxes[i, 2]), float(boxes[i, 3]))
        faces.append(DetectedFace(box=box, score=float(scores[i]), landmarks=lm))
    return faces


class BaseDetector(ABC):
    """Resizes large images to `max_side`, runs `_detect` on the copy and maps faces back.

    Threshold defaults to `decoding.score_threshold`; NMS uses `decoding.nms_threshold`.
    """

    family = "base"

    def __init__(self, model: ResolvedModel, *, max_side: int = DEFAULT_MAX_SIDE, min_face_size: float = 0.0) -> None:
        if max_side < 16:
            raise ValueError(f"max_side must be at least 16, got {max_side}")
        self.model = model
        self.spec: InputSpec = model.manifest.inputs[0]
        self.decoding: DetectorDecoding = model.manifest.decoding or DetectorDecoding()
        self.params: dict[str, Any] = dict(self.decoding.params)
        self.score_threshold = float(self.decoding.score_threshold)
        self.nms_threshold = float(self.decoding.nms_threshold)
        self.max_side = int(max_side)
        self.min_face_size = float(min_face_size)

    def detect(self, image_bgr: np.ndarray, threshold: float | None = None) -> list[DetectedFace]:
        """Faces in `image_bgr` (uint8 H x W x 3), in its pixels."""
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8 or image_bgr.size == 0:
            raise InvalidImage(f"a detector needs a BGR uint8 (H, W, 3) image, got {image_bgr.dtype} {image_bgr.shape}")
        thr = self.score_threshold if threshold is None else float(threshold)
        small, scale = resize_max_side(image_bgr, self.max_side)
        det = unmap(self._detect(small, thr), scale)
        return to_faces(det, image_bgr.shape, self.min_face_size)

    @abstractmethod
    def _detect(self, image_bgr: np.ndarray, threshold: float) -> Detections:
        """Detections after NMS, in the pixels of `image_bgr`."""
