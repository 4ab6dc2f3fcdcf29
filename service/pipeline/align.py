"""Face crops for the classifier: 5-point similarity alignment, or a square crop around the box.

Template. The standard ArcFace 5-point template (112x112: eyes, nose tip, mouth corners) is made
relative (/112) and then shrunk by `TEMPLATE_SCALE` about (0.5, `TEMPLATE_PIVOT_Y`) onto the
centre of the crop. ArcFace's framing cuts off the brows' top and the chin; this leaves the whole
face, brows to chin, visible with a small margin, much like the FER2013 crops (eyes at y ~ 0.36,
mouth at y ~ 0.69 of the crop). A classifier manifest can override it with
`decoding.params.landmark_template` (5 [x, y] pairs relative to the input size) and the box crop's
margin with `decoding.params.crop_margin` (fraction of the box side added on each side).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model_store.manifest import InputSpec, Manifest
from model_store.tensors import normalize

ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
TEMPLATE_SCALE = 0.95
TEMPLATE_PIVOT_Y = 0.62
DEFAULT_CROP_MARGIN = 0.1


def default_template() -> np.ndarray:
    """The relative (0..1) 5-point template used when the manifest gives none."""
    rel = ARCFACE_112 / 112.0
    pivot = np.array([0.5, TEMPLATE_PIVOT_Y], np.float32)
    return ((rel - pivot) * TEMPLATE_SCALE + np.array([0.5, 0.5], np.float32)).astype(np.float32)


@dataclass(frozen=True)
class Preprocessor:
    """Crop, colour conversion, normalisation and layout for one classifier input spec."""

    spec: InputSpec
    size: tuple[int, int]  # (width, height)
    template: np.ndarray  # (5, 2) relative
    crop_margin: float = DEFAULT_CROP_MARGIN

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> Preprocessor:
        spec = manifest.input
        size = spec.size or _size_from_shape(spec)
        params = manifest.decoding.params if manifest.decoding else {}
        template = np.asarray(params.get("landmark_template", default_template()), np.float32)
        if template.shape != (5, 2):
            raise ValueError(f"{manifest.name}: decoding.params.landmark_template must be 5 [x, y] pairs")
        return cls(spec, size, template, float(params.get("crop_margin", DEFAULT_CROP_MARGIN)))

    def template_px(self) -> np.ndarray:
        return self.template * np.array(self.size, np.float32)

    def matrix(self, box: Sequence[float], landmarks: np.ndarray | None) -> np.ndarray:
        """The 2x3 affine from image to crop: similarity onto the template, else a square box crop."""
        import cv2

        if landmarks is not None and np.asarray(landmarks).shape == (5, 2):
            src = np.asarray(landmarks, np.float32)
            m, _ = cv2.estimateAffinePartial2D(src, self.template_px(), method=cv2.LMEDS)
            if m is not None and np.isfinite(m).all():
                return m.astype(np.float32)
        return box_matrix(box, self.size, self.crop_margin)

    def crop(self, image_bgr: np.ndarray, box: Sequence[float], landmarks: np.ndarray | None) -> np.ndarray:
        """The aligned BGR uint8 crop (height, width, 3)."""
        return self.warp(image_bgr, self.matrix(box, landmarks))

    def warp(self, image_bgr: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        """The crop that `matrix` (image -> crop) makes."""
        import cv2

        return cv2.warpAffine(image_bgr, matrix, self.size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def normalize(self, crops: list[np.ndarray]) -> np.ndarray:
        """BGR uint8 crops -> the float32 batch the model expects (colour order, scale/mean/std, layout)."""
        import cv2

        w, h = self.size
        if not crops:
            return normalize(np.zeros((0, h, w, self.spec.channels), np.uint8), self.spec)
        if self.spec.color == "GRAY":
            batch = np.stack([cv2.cvtColor(c, cv2.COLOR_BGR2GRAY) for c in crops])[..., None]
        elif self.spec.color == "RGB":
            batch = np.stack(crops)[..., ::-1]
        else:
            batch = np.stack(crops)
        return normalize(batch, self.spec)


def box_matrix(box: Sequence[float], size: tuple[int, int], margin: float) -> np.ndarray:
    """Scale + translation mapping a square around the box (side * (1 + 2 * margin)) onto the crop."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1, 1.0) * (1.0 + 2.0 * margin)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    w, h = size
    sx, sy = w / side, h / side
    return np.array([[sx, 0.0, w / 2.0 - sx * cx], [0.0, sy, h / 2.0 - sy * cy]], np.float32)


def _size_from_shape(spec: InputSpec) -> tuple[int, int]:
    dims = spec.shape[2:4] if spec.layout == "NCHW" else spec.shape[1:3]
    if len(dims) == 2 and all(isinstance(d, int) for d in dims):
        h, w = int(dims[0]), int(dims[1])
        return w, h
    raise ValueError(f"input {spec.name}: give `size` in the manifest, the shape {spec.shape} has no fixed size")
