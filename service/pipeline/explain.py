"""Per-face explanations from a classifier's class-activation-map output (`explain=true`).

The model's `cam` output holds one map per class over its last feature map (e.g. 4x4 for a
MobileNetV2 at 128x128). The served map is the label's map with negatives cut, scaled to a peak of 1
and resized bilinearly to `GRID` x `GRID` (as Grad-CAM upsamples its map), with the affine that lays
it on the image: grid -> crop pixels -> (inverse of the alignment) image pixels.
"""

from __future__ import annotations

import numpy as np

from service.pipeline.schema import Explanation

GRID = 12


def heat_grid(cam: np.ndarray, size: int = GRID) -> np.ndarray:
    """One class's map (h, w) -> (size, size) float32 in [0, 1], its peak at 1 (all zeros when nothing is positive)."""
    import cv2

    m = np.maximum(np.asarray(cam, np.float32), 0.0)
    peak = float(m.max())
    m = m / peak if peak > 0 else np.zeros_like(m)
    return np.clip(cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)


def grid_to_image(image_to_crop: np.ndarray, crop_size: tuple[int, int], size: int = GRID) -> np.ndarray:
    """The 2x3 affine from grid coordinates (cell centres at integers) to image pixels."""
    import cv2

    w, h = crop_size
    sx, sy = w / size, h / size  # a cell centre g sits at crop pixel (g + 0.5) * s - 0.5
    grid_to_crop = np.array([[sx, 0.0, sx / 2 - 0.5], [0.0, sy, sy / 2 - 0.5], [0.0, 0.0, 1.0]])
    crop_to_image = cv2.invertAffineTransform(np.asarray(image_to_crop, np.float64))
    out: np.ndarray = crop_to_image @ grid_to_crop
    return out


def explanation(label: str, cam: np.ndarray, image_to_crop: np.ndarray, crop_size: tuple[int, int]) -> Explanation:
    """The `explanation` of one face: `cam` is its label's map, `image_to_crop` the alignment it was cropped with."""
    grid = heat_grid(cam)
    affine = grid_to_image(image_to_crop, crop_size, len(grid))
    return Explanation(
        label=label,
        grid=[[round(float(v), 3) for v in row] for row in grid],
        affine=[[round(float(v), 4) for v in row] for row in affine],
    )


def paint(image_bgr: np.ndarray, grid: np.ndarray, affine: np.ndarray, alpha: float = 0.45) -> None:
    """Blend the JET-coloured map onto the image in place, inside the face's warped grid only."""
    import cv2

    g = np.asarray(grid, np.float32)
    a = np.asarray(affine, np.float64)
    gh, gw = g.shape
    corners = np.array([[-0.5, -0.5, 1], [gw - 0.5, -0.5, 1], [gw - 0.5, gh - 0.5, 1], [-0.5, gh - 0.5, 1]])
    pts = corners @ a.T
    h, w = image_bgr.shape[:2]
    x1, y1 = (max(0, int(np.floor(v))) for v in pts.min(0))
    x2, y2 = min(w, int(np.ceil(pts[:, 0].max())) + 1), min(h, int(np.ceil(pts[:, 1].max())) + 1)
    if x2 <= x1 or y2 <= y1:
        return
    roi = a.copy()
    roi[:, 2] -= (x1, y1)  # the same map, drawn into the region's own coordinates
    size = (x2 - x1, y2 - y1)
    heat = cv2.warpAffine(g, roi, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    inside = cv2.warpAffine(np.ones_like(g), roi, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    colour = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET).astype(np.float32)
    weight = (alpha * inside)[..., None]
    region = image_bgr[y1:y2, x1:x2].astype(np.float32)
    image_bgr[y1:y2, x1:x2] = np.clip(region * (1 - weight) + colour * weight, 0, 255).astype(np.uint8)
