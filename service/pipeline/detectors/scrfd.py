"""SCRFD (insightface output layout): distance-to-box and keypoint decoding on anchor centres, then NMS."""

from __future__ import annotations

import numpy as np

from model_store import ResolvedModel
from service.pipeline.detectors.base import SessionFactory, register_detector
from service.pipeline.detectors.common import (
    DEFAULT_MAX_SIDE,
    BaseDetector,
    Detections,
    empty_detections,
    pad_to_multiple,
    to_tensor,
    unmap,
)
from service.pipeline.detectors.nms import letterbox, nms


class ScrfdDetector(BaseDetector):
    """insightface SCRFD export: outputs are scores, boxes, then keypoints per stride (in that order).

    A fixed-size graph (manifest `inputs[0].size`) gets the image letterboxed (top-left) to that size;
    a dynamic one gets it padded to a multiple of the largest stride. Normalisation comes from the
    manifest (insightface: RGB, (pixel - 127.5) / 128).
    """

    family = "scrfd"

    def __init__(
        self,
        model: ResolvedModel,
        session_factory: SessionFactory,
        *,
        max_side: int = DEFAULT_MAX_SIDE,
        min_face_size: float = 0.0,
    ) -> None:
        super().__init__(model, max_side=max_side, min_face_size=min_face_size)
        self.strides = list(self.decoding.strides or [8, 16, 32])
        self.num_anchors = int(self.decoding.anchors_per_location or 2)
        self.session = session_factory(model.model_path)
        self.input_name = self.session.get_inputs()[0].name
        n_out = len(self.session.get_outputs())
        self.has_kps = n_out == 3 * len(self.strides)
        if n_out not in (2 * len(self.strides), 3 * len(self.strides)):
            raise ValueError(f"{model.ref}: {n_out} outputs do not fit SCRFD with strides {self.strides}")
        self._centres: dict[tuple[int, int, int], np.ndarray] = {}

    def anchor_centres(self, height: int, width: int, stride: int) -> np.ndarray:
        """(h/stride * w/stride * anchors, 2) x, y anchor centres in input pixels, cached per size."""
        key = (height, width, stride)
        if key not in self._centres:
            gh, gw = height // stride, width // stride
            ys, xs = np.mgrid[:gh, :gw]
            centres = (np.stack([xs, ys], axis=-1).reshape(-1, 2) * stride).astype(np.float32)
            self._centres[key] = np.repeat(centres, self.num_anchors, axis=0)
        return self._centres[key]

    def _frame(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        if self.spec.size is not None:
            canvas, scale, _ = letterbox(image, (int(self.spec.size[0]), int(self.spec.size[1])))
            return canvas, scale
        return pad_to_multiple(image, max(self.strides)), 1.0

    def _detect(self, image_bgr: np.ndarray, threshold: float) -> Detections:
        canvas, scale = self._frame(image_bgr)
        outs = self.session.run(None, {self.input_name: to_tensor(canvas, self.spec)})
        outs = [o[0] if o.ndim == 3 else o for o in outs]
        h, w = canvas.shape[:2]
        k = len(self.strides)
        boxes, scores, marks = [], [], []
        for i, stride in enumerate(self.strides):
            s = outs[i].reshape(-1)
            keep = np.flatnonzero(s >= threshold)
            if keep.size == 0:
                continue
            c = self.anchor_centres(h, w, stride)[keep]
            d = outs[k + i][keep] * stride
            boxes.append(np.concatenate([c - d[:, :2], c + d[:, 2:]], axis=1))
            scores.append(s[keep])
            if self.has_kps:
                marks.append(c[:, None, :] + outs[2 * k + i][keep].reshape(-1, 5, 2) * stride)
        if not boxes:
            return empty_detections(self.has_kps)
        b, sc = np.concatenate(boxes), np.concatenate(scores)
        keep = nms(b, sc, self.nms_threshold)
        m = np.concatenate(marks)[keep] if self.has_kps else None
        return unmap((b[keep], sc[keep], m), scale)


register_detector("scrfd")(ScrfdDetector)
