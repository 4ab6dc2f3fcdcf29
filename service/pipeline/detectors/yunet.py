"""YuNet through OpenCV's `cv2.FaceDetectorYN` (decoding and NMS happen inside OpenCV)."""

from __future__ import annotations

import threading

import cv2
import numpy as np

from model_store import ResolvedModel
from service.errors import ModelLoadFailed
from service.pipeline.detectors.base import SessionFactory, register_detector
from service.pipeline.detectors.common import DEFAULT_MAX_SIDE, BaseDetector, Detections, empty_detections
from service.pipeline.detectors.nms import letterbox


class YuNetDetector(BaseDetector):
    """YuNet 2023mar (fixed 640x640 graph) or the dynamic s/n exports.

    The input size is set per image. OpenCV reshapes even the fixed-size 2023mar graph (checked: it
    gives the same faces as the dynamic export); should a build refuse, the image is letterboxed to
    the manifest's `inputs[0].size` instead. `decoding.params.top_k` caps candidates before NMS.
    """

    family = "yunet"

    def __init__(self, model: ResolvedModel, *, max_side: int = DEFAULT_MAX_SIDE, min_face_size: float = 0.0) -> None:
        super().__init__(model, max_side=max_side, min_face_size=min_face_size)
        self.top_k = int(self.params.get("top_k", 5000))
        self.fixed_size = tuple(self.spec.size) if self.spec.size else None
        try:
            self._net = cv2.FaceDetectorYN.create(
                str(model.model_path),
                "",
                self.fixed_size or (640, 640),
                self.score_threshold,
                self.nms_threshold,
                self.top_k,
            )
        except cv2.error as exc:
            raise ModelLoadFailed(f"{model.ref}: OpenCV could not load the YuNet model: {exc}") from exc
        self._lock = threading.Lock()  # FaceDetectorYN holds per-call state (input size, threshold)
        self._letterbox = False

    def _run(self, image: np.ndarray, threshold: float) -> np.ndarray | None:
        h, w = image.shape[:2]
        with self._lock:
            self._net.setScoreThreshold(threshold)
            self._net.setInputSize((w, h))
            _, faces = self._net.detect(image)
        return faces

    def _detect(self, image_bgr: np.ndarray, threshold: float) -> Detections:
        scale, pad = 1.0, (0, 0)
        faces = None
        if not self._letterbox:
            try:
                faces = self._run(image_bgr, threshold)
            except cv2.error:
                if self.fixed_size is None:
                    raise
                self._letterbox = True
        if self._letterbox:
            assert self.fixed_size is not None
            canvas, scale, pad = letterbox(image_bgr, (int(self.fixed_size[0]), int(self.fixed_size[1])))
            faces = self._run(canvas, threshold)
        if faces is None or len(faces) == 0:
            return empty_detections()
        faces = np.asarray(faces, np.float32)
        boxes = faces[:, :4].copy()
        boxes[:, 2:] += boxes[:, :2]  # x, y, w, h -> x1, y1, x2, y2
        marks = faces[:, 4:14].reshape(-1, 5, 2)  # image-left eye, image-right eye, nose, mouth corners
        off = np.asarray(pad, np.float32)
        return (boxes - np.tile(off, 2)) / scale, faces[:, 14].copy(), (marks - off) / scale


@register_detector("yunet")
def build(
    model: ResolvedModel,
    session_factory: SessionFactory | None = None,
    *,
    max_side: int = DEFAULT_MAX_SIDE,
    min_face_size: float = 0.0,
) -> YuNetDetector:
    """YuNet runs in OpenCV, so the session factory is unused."""
    return YuNetDetector(model, max_side=max_side, min_face_size=min_face_size)
