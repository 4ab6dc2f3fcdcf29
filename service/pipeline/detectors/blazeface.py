"""MediaPipe BlazeFace (short-range "front" 128x128, full-range "back" 256x256) from the Barracuda ONNX exports.

Anchors follow MediaPipe's SSD anchor spec (anchor offset 0.5, fixed anchor size, 2 anchors per
layer; layers with the same stride share a grid): front strides [8, 16, 16, 16], back strides
[16, 32, 32, 32], 896 anchors for both. The 16 regressors are box centre/size and 6 keypoints
(right eye, left eye, nose tip, mouth centre, right ear tragion, left ear tragion; "right" is the
subject's, i.e. image-left), in input pixels relative to the anchor. Scores are sigmoid(clip(raw, +-100)),
then weighted NMS blends overlapping boxes.

5-point reduction: eyes and nose are kept; the mouth corners are approximated as
mouth centre -/+ MOUTH_HALF_WIDTH * (right-eye-in-image - left-eye-in-image), i.e. along the eye
line, which is the ratio of mouth width to eye distance in the ArcFace 5-point template (29.2 / 35.2 / 2).
"""

from __future__ import annotations

import math

import numpy as np

from model_store import ResolvedModel
from service.pipeline.detectors.base import SessionFactory, register_detector
from service.pipeline.detectors.common import (
    DEFAULT_MAX_SIDE,
    BaseDetector,
    Detections,
    empty_detections,
    to_tensor,
    unmap,
)
from service.pipeline.detectors.nms import letterbox, weighted_nms

VARIANTS: dict[str, dict[str, object]] = {
    "front": {"size": 128, "strides": [8, 16, 16, 16]},
    "back": {"size": 256, "strides": [16, 32, 32, 32]},
}
MOUTH_HALF_WIDTH = 0.415
SCORE_CLIP = 100.0


def ssd_anchors(input_size: int, strides: list[int], anchors_per_layer: int = 2, offset: float = 0.5) -> np.ndarray:
    """(A, 2) anchor centres (x, y) in 0..1, MediaPipe order: layers sharing a stride share the grid."""
    out = []
    i = 0
    while i < len(strides):
        stride, n = strides[i], 0
        while i < len(strides) and strides[i] == stride:
            n += anchors_per_layer
            i += 1
        g = -(-input_size // stride)
        ys, xs = np.mgrid[:g, :g]
        centres = np.stack([(xs + offset) / g, (ys + offset) / g], axis=-1).reshape(-1, 2)
        out.append(np.repeat(centres, n, axis=0))
    return np.concatenate(out).astype(np.float32)


def to_five_points(kps: np.ndarray) -> np.ndarray:
    """(N, 6, 2) BlazeFace keypoints -> (N, 5, 2): eyes, nose tip, approximated mouth corners."""
    eye_vec = kps[:, 1] - kps[:, 0]
    mouth = kps[:, 3]
    return np.stack(
        [kps[:, 0], kps[:, 1], kps[:, 2], mouth - MOUTH_HALF_WIDTH * eye_vec, mouth + MOUTH_HALF_WIDTH * eye_vec],
        axis=1,
    )


TILE_ASPECT = 1.25  # images more elongated than this are tiled
TILE_OVERLAP = 0.25  # fraction of a tile shared with its neighbour


class BlazeFaceDetector(BaseDetector):
    """Letterboxes (centred) to the square input; `decoding.params.variant` is "front" or "back"."""

    family = "blazeface"

    def __init__(
        self,
        model: ResolvedModel,
        session_factory: SessionFactory,
        *,
        max_side: int = DEFAULT_MAX_SIDE,
        min_face_size: float = 0.0,
    ) -> None:
        super().__init__(model, max_side=max_side, min_face_size=min_face_size)
        variant = str(self.params.get("variant", ""))
        if variant not in VARIANTS:
            raise ValueError(f"{model.ref}: decoding.params.variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        spec = VARIANTS[variant]
        size = int(self.spec.size[0]) if self.spec.size else int(spec["size"])  # type: ignore[call-overload]
        strides = list(self.decoding.strides or spec["strides"])  # type: ignore[call-overload]
        self.input_size = size
        self.anchors = ssd_anchors(size, strides)
        self.session = session_factory(model.model_path)
        self.input_name = self.session.get_inputs()[0].name

    def _outputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(A,) raw scores and (A, 16) regressors, concatenating the per-resolution output pairs."""
        outs = [o.reshape(-1, o.shape[-1]) for o in self.session.run(None, {self.input_name: x})]
        scores = np.concatenate([o[:, 0] for o in outs if o.shape[-1] == 1])
        regs = np.concatenate([o for o in outs if o.shape[-1] == 16])
        if scores.shape[0] != self.anchors.shape[0] or regs.shape[0] != self.anchors.shape[0]:
            raise RuntimeError(f"{self.model.ref}: outputs do not match {self.anchors.shape[0]} anchors")
        return scores, regs

    def _detect(self, image_bgr: np.ndarray, threshold: float) -> Detections:
        """Square images go through once; wide or tall ones as overlapping square tiles.

        BlazeFace sees a 128 or 256 px square: letterboxing a 16:9 group photo into it leaves
        faces of ~20 px, below what the model finds. Tiles of the short side's size keep them
        about twice as large; the tiles' faces are merged with weighted NMS.
        """
        h, w = image_bgr.shape[:2]
        side, long = min(h, w), max(h, w)
        if long <= side * TILE_ASPECT:
            return self._detect_square(image_bgr, threshold)
        count = math.ceil((long - side) / (side * (1 - TILE_OVERLAP))) + 1
        boxes, scores, points = [], [], []
        for start in np.linspace(0, long - side, count).round().astype(int):
            tile = image_bgr[:, start : start + side] if w > h else image_bgr[start : start + side]
            b, s, p = self._detect_square(tile, threshold)
            shift = np.array([start, 0] if w > h else [0, start], np.float32)
            boxes.append(b + np.tile(shift, 2))
            scores.append(s)
            points.append(p + shift if p is not None else np.zeros((len(s), 5, 2), np.float32))
        merged = weighted_nms(np.concatenate(boxes), np.concatenate(scores), np.concatenate(points), self.nms_threshold)
        return merged

    def _detect_square(self, image_bgr: np.ndarray, threshold: float) -> Detections:
        s = self.input_size
        canvas, scale, pad = letterbox(image_bgr, (s, s), center=True)
        raw, regs = self._outputs(to_tensor(canvas, self.spec))
        scores = (1.0 / (1.0 + np.exp(-np.clip(raw.astype(np.float64), -SCORE_CLIP, SCORE_CLIP)))).astype(np.float32)
        keep = np.flatnonzero(scores >= threshold)
        if keep.size == 0:
            return empty_detections()
        a = self.anchors[keep] * s
        r = regs[keep]
        centre = a + r[:, :2]
        half = r[:, 2:4] / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        kps = a[:, None, :] + r[:, 4:16].reshape(-1, 6, 2)
        boxes, sc, kps = weighted_nms(boxes, scores[keep], kps, self.nms_threshold)
        return unmap((boxes, sc, to_five_points(kps)), scale, pad)


register_detector("blazeface")(BlazeFaceDetector)
