"""RetinaFace (the method's detector) from the converted ONNX graph; priors and decoding in numpy."""

from __future__ import annotations

import numpy as np

from model_store import ResolvedModel
from service.pipeline.detectors.base import SessionFactory, register_detector
from service.pipeline.detectors.common import DEFAULT_MAX_SIDE, BaseDetector, Detections, empty_detections, to_tensor
from service.pipeline.detectors.nms import nms

DEFAULT_MIN_SIZES = [[16, 32], [64, 128], [256, 512]]
DEFAULT_STEPS = [8, 16, 32]
DEFAULT_VARIANCE = (0.1, 0.2)


def prior_boxes(height: int, width: int, min_sizes: list[list[int]], steps: list[int]) -> np.ndarray:
    """(A, 4) priors (cx, cy, w, h) relative to the input, in the network's output order."""
    out = []
    for sizes, step in zip(min_sizes, steps, strict=True):
        fh, fw = -(-height // step), -(-width // step)
        ys, xs = np.mgrid[:fh, :fw]
        cx = ((xs + 0.5) * step / width).reshape(-1, 1)
        cy = ((ys + 0.5) * step / height).reshape(-1, 1)
        n = cx.shape[0]
        k = len(sizes)
        wh = np.asarray([[s / width, s / height] for s in sizes], np.float64)  # (k, 2)
        centres = np.repeat(np.concatenate([cx, cy], axis=1), k, axis=0)
        out.append(np.concatenate([centres, np.tile(wh, (n, 1))], axis=1))
    return np.concatenate(out).astype(np.float32)


def decode(
    loc: np.ndarray, landms: np.ndarray, priors: np.ndarray, variance: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """SSD-style decoding: boxes (A, 4) x1 y1 x2 y2 and landmarks (A, 5, 2), relative to the input."""
    centre = priors[:, :2] + loc[:, :2] * variance[0] * priors[:, 2:]
    size = priors[:, 2:] * np.exp(loc[:, 2:] * variance[1])
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    marks = priors[:, None, :2] + landms.reshape(-1, 5, 2) * variance[0] * priors[:, None, 2:]
    return boxes, marks


class RetinaFaceDetector(BaseDetector):
    """Runs on the (max_side-resized) image at its own size; priors cached per input size.

    Manifest `decoding.params`: `min_sizes`, `variance` (defaults are the original's); steps come
    from `decoding.strides`. Normalisation from the manifest (original: BGR minus (104, 117, 123)).
    """

    family = "retinaface"

    def __init__(
        self,
        model: ResolvedModel,
        session_factory: SessionFactory,
        *,
        max_side: int = DEFAULT_MAX_SIDE,
        min_face_size: float = 0.0,
    ) -> None:
        super().__init__(model, max_side=max_side, min_face_size=min_face_size)
        self.min_sizes = [list(map(int, s)) for s in self.params.get("min_sizes", DEFAULT_MIN_SIZES)]
        self.steps = list(self.decoding.strides or DEFAULT_STEPS)
        v = self.params.get("variance", DEFAULT_VARIANCE)
        self.variance = (float(v[0]), float(v[1]))
        self.session = session_factory(model.model_path)
        self.input_name = self.session.get_inputs()[0].name
        self._priors: dict[tuple[int, int], np.ndarray] = {}

    def priors(self, height: int, width: int) -> np.ndarray:
        key = (height, width)
        if key not in self._priors:
            self._priors[key] = prior_boxes(height, width, self.min_sizes, self.steps)
        return self._priors[key]

    def _detect(self, image_bgr: np.ndarray, threshold: float) -> Detections:
        h, w = image_bgr.shape[:2]
        loc, conf, landms = (o[0] for o in self.session.run(None, {self.input_name: to_tensor(image_bgr, self.spec)}))
        priors = self.priors(h, w)
        if priors.shape[0] != loc.shape[0]:
            raise RuntimeError(f"{self.model.ref}: {loc.shape[0]} outputs for {priors.shape[0]} priors at {w}x{h}")
        keep = np.flatnonzero(conf[:, 1] >= threshold)
        if keep.size == 0:
            return empty_detections()
        boxes, marks = decode(loc[keep], landms[keep], priors[keep], self.variance)
        scale = np.asarray([w, h], np.float32)
        boxes = boxes * np.tile(scale, 2)
        marks = marks * scale
        scores = conf[keep, 1]
        order = nms(boxes, scores, self.nms_threshold)
        return boxes[order], scores[order], marks[order]


register_detector("retinaface")(RetinaFaceDetector)
