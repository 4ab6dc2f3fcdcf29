"""YuNet: its graph in onnxruntime with our own decoding, or `cv2.FaceDetectorYN` (OpenCV decodes).

onnxruntime is the default where a session factory is given (the service always gives one): it is
the path that can use a GPU, and it measured 7.7 ms (1 thread) and 5 ms (2) against OpenCV 5's 14.2 and 8 ms on a
640x480 frame. The 2023mar graph declares a fixed 640x640 input but is fully convolutional, so it is
loaded with free height and width (`free_spatial=True`) and each image is padded (bottom/right, zeros,
as OpenCV pads) to a multiple of the largest stride. `decoding.params.runtime: opencv` selects OpenCV instead.

Decoding (as OpenCV's face_detect.cpp): per stride s and grid cell (row r, col c), score =
sqrt(clip(cls) * clip(obj)); box centre ((c, r) + bbox[:2]) * s, size exp(bbox[2:]) * s; landmarks
((c, r) + kps) * s; then NMS on the candidates above the threshold (at most `top_k`).
"""

from __future__ import annotations

import threading
from typing import Any

import cv2
import numpy as np

from model_store import ResolvedModel
from service.errors import ModelLoadFailed
from service.pipeline.detectors.base import SessionFactory, register_detector
from service.pipeline.detectors.common import (
    DEFAULT_MAX_SIDE,
    BaseDetector,
    Detections,
    empty_detections,
    pad_to_multiple,
    to_tensor,
)
from service.pipeline.detectors.nms import letterbox, nms

KINDS = ("cls", "obj", "bbox", "kps")


class YuNetDetector(BaseDetector):
    """YuNet 2023mar (fixed 640x640 graph) or the dynamic s/n exports.

    The input size is set per image. OpenCV reshapes even the fixed-size 2023mar graph (checked: it
    gives the same faces as the dynamic export); should a build refuse, the image is letterboxed to
    the manifest's `inputs[0].size` instead. `decoding.params.top_k` caps candidates before NMS.
    """

    family = "yunet"

    def __init__(
        self,
        model: ResolvedModel,
        session_factory: SessionFactory | None = None,
        *,
        max_side: int = DEFAULT_MAX_SIDE,
        min_face_size: float = 0.0,
    ) -> None:
        super().__init__(model, max_side=max_side, min_face_size=min_face_size)
        self.top_k = int(self.params.get("top_k", 5000))
        self.fixed_size = tuple(self.spec.size) if self.spec.size else None
        self.strides = [int(x) for x in (self.decoding.strides or [8, 16, 32])]
        self.session: Any = None
        if session_factory is not None and self.params.get("runtime", "onnxruntime") == "onnxruntime":
            session = session_factory(model.model_path, free_spatial=True)
            names = {o.name for o in session.get_outputs()}
            if names == {f"{k}_{s}" for k in KINDS for s in self.strides}:
                self.session = session
                self.input_name = session.get_inputs()[0].name
                self.output_names = [o.name for o in session.get_outputs()]
        self._lock = threading.Lock()  # FaceDetectorYN holds per-call state (input size, threshold)
        self._letterbox = False
        if self.session is not None:
            return  # OpenCV's copy of the graph is loaded only where it runs
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

    def _run(self, image: np.ndarray, threshold: float) -> np.ndarray | None:
        h, w = image.shape[:2]
        with self._lock:
            self._net.setScoreThreshold(threshold)
            self._net.setInputSize((w, h))
            _, faces = self._net.detect(image)
        return faces

    def _detect_onnxruntime(self, image: np.ndarray, threshold: float) -> Detections:
        canvas = pad_to_multiple(image, max(self.strides))
        cw = canvas.shape[1]
        raw = self.session.run(None, {self.input_name: to_tensor(canvas, self.spec)})
        outs = dict(zip(self.output_names, raw, strict=True))
        boxes, scores, marks = [], [], []
        for s in self.strides:
            score = np.sqrt(np.clip(outs[f"cls_{s}"][0, :, 0], 0, 1) * np.clip(outs[f"obj_{s}"][0, :, 0], 0, 1))
            idx = np.flatnonzero(score >= threshold)
            if idx.size == 0:
                continue
            rc = np.stack([idx % (cw // s), idx // (cw // s)], axis=1).astype(np.float32)  # (col, row)
            bb = outs[f"bbox_{s}"][0, idx]
            centre, size = (rc + bb[:, :2]) * s, np.exp(bb[:, 2:]) * s
            boxes.append(np.concatenate([centre - size / 2, centre + size / 2], axis=1))
            scores.append(score[idx])
            marks.append((rc[:, None, :] + outs[f"kps_{s}"][0, idx].reshape(-1, 5, 2)) * s)
        if not boxes:
            return empty_detections()
        b, sc, m = np.concatenate(boxes), np.concatenate(scores), np.concatenate(marks)
        top = np.argsort(-sc)[: self.top_k]
        keep = top[nms(b[top], sc[top], self.nms_threshold)]
        return b[keep].astype(np.float32), sc[keep].astype(np.float32), m[keep].astype(np.float32)

    def _detect(self, image_bgr: np.ndarray, threshold: float) -> Detections:
        if self.session is not None:
            return self._detect_onnxruntime(image_bgr, threshold)
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


register_detector("yunet")(YuNetDetector)
