"""Batch augmentation in numpy/OpenCV for small face crops.

Policies: "none"; "standard" (random rotation, shift, shear, zoom, horizontal flip, as in the method:
rotation 10-15 degrees, shift/shear/zoom 0.1; then, with probability `degrade`, a loss of detail and a
tone change, see `training.data.degrade`); "balanced" (standard, plus oversampling of minority
classes each epoch until every class has as many samples as the largest, see `balanced_indices`).
Random erasing and mixup work on the float batch (`random_erasing`, `mixup`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from training.data.degrade import random_degrade

POLICIES = ("none", "standard", "balanced")


@dataclass(frozen=True)
class AugmentParams:
    rotation: float = 12.0  # degrees, +-
    shift: float = 0.1  # fraction of the side, +-
    shear: float = 0.1  # shear factor, +-
    zoom: float = 0.1  # scale in [1 - zoom, 1 + zoom]
    hflip: float = 0.5  # probability
    erasing: float = 0.0  # random-erasing probability (on float batches)
    degrade: float = 0.0  # probability of a loss of detail and of a tone change (`degrade.random_degrade`)
    degrade_weights: tuple[float, float, float] | None = None  # odds of downscale, blur, JPEG (None: equal)


def random_affine(img: np.ndarray, rng: np.random.Generator, p: AugmentParams) -> np.ndarray:
    """One random rotation/shift/shear/zoom (+ flip) of an H x W (x C) uint8 image, borders replicated."""
    h, w = img.shape[:2]
    ang = np.deg2rad(rng.uniform(-p.rotation, p.rotation))
    s = rng.uniform(1 - p.zoom, 1 + p.zoom)
    sh = rng.uniform(-p.shear, p.shear)
    c, si = np.cos(ang) * s, np.sin(ang) * s
    m = np.array([[c, -si], [si, c]]) @ np.array([[1.0, sh], [0.0, 1.0]])
    if rng.random() < p.hflip:
        m = m @ np.array([[-1.0, 0.0], [0.0, 1.0]])
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    t = centre - m @ centre + rng.uniform(-p.shift, p.shift, 2) * [w, h]
    return cv2.warpAffine(img, np.hstack([m, t[:, None]]), (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)  # fmt: skip


def augment_batch(images: np.ndarray, rng: np.random.Generator, policy: str, p: AugmentParams) -> np.ndarray:
    """Apply `policy` to a uint8 batch (B x H x W [x C]); returns a new array ("none" returns the input)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown augmentation {policy!r}; known: {', '.join(POLICIES)}")
    if policy == "none":
        return images
    return np.stack([random_degrade(random_affine(im, rng, p), rng, p.degrade, p.degrade_weights) for im in images])


def balanced_indices(targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every index once, plus minority-class indices drawn with replacement until all classes match the largest."""
    counts = np.bincount(targets)
    top = counts.max()
    extra = [rng.choice(np.flatnonzero(targets == c), top - n) for c, n in enumerate(counts) if 0 < n < top]
    return np.concatenate([np.arange(len(targets)), *extra]).astype(np.int64)


def random_erasing(x: torch.Tensor, prob: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """Zero a random rectangle (2-20% of the area, aspect 0.3-3.3) in each image with probability `prob`."""
    if prob <= 0:
        return x
    b, _, h, w = x.shape
    r = torch.rand(b, 5, generator=gen).numpy()
    for i in range(b):
        if r[i, 0] >= prob:
            continue
        area = h * w * (0.02 + 0.18 * r[i, 1])
        aspect = np.exp(np.log(0.3) + (np.log(3.3) - np.log(0.3)) * r[i, 2])
        eh, ew = min(h, round((area * aspect) ** 0.5)), min(w, round((area / aspect) ** 0.5))
        y0 = int(r[i, 3] * (h - eh + 1))
        x0 = int(r[i, 4] * (w - ew + 1))
        x[i, :, y0 : y0 + eh, x0 : x0 + ew] = 0.0
    return x


def mixup(
    x: torch.Tensor, y: torch.Tensor, alpha: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix a batch with a permutation of itself; `y` is a B x C target distribution."""
    if alpha <= 0:
        return x, y
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(len(x)))
    return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]
