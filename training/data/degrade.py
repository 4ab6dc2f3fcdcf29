"""Image degradations of small face crops, shared by the robustness suite (fixed strengths) and the
training augmentation (random strengths, `random_degrade`).

Sizes are defined at 48 px (FER) and scale with the image: the blur's sigma and the downscale's side are
relative to a 48 px side, so a 96 px training image is degraded as its 48 px original would be.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

BASE_SIZE = 48  # the side at which the blur's sigma and the downscale's size are defined


def blur(img: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Gaussian blur of `sigma` pixels at 48 px (scaled with the image's side)."""
    s = sigma * img.shape[1] / BASE_SIZE
    return cv2.GaussianBlur(img, (0, 0), sigmaX=s, sigmaY=s, borderType=cv2.BORDER_REPLICATE)


def jpeg(img: np.ndarray, quality: int = 30) -> np.ndarray:
    """A JPEG round trip at `quality` (RGB images encoded as such, not as BGR)."""
    rgb = img.ndim == 3
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if rgb else img,
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])  # fmt: skip
    if not ok:
        raise ValueError("JPEG encoding failed")
    out = cv2.imdecode(buf, cv2.IMREAD_COLOR if rgb else cv2.IMREAD_GRAYSCALE)
    if out is None:
        raise ValueError("JPEG decoding failed")
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB) if rgb else out


Transform = Callable[[np.ndarray], np.ndarray]


def _through(img: np.ndarray, k: float, least: int, inner: Transform | None = None) -> np.ndarray:
    """`img` scaled by `k` (area averaging; each side at least `least` px), passed through `inner`, and scaled
    back up bilinearly to its own size."""
    h, w = img.shape[:2]
    size = (max(least, round(w * k)), max(least, round(h * k)))
    small = img if size == (w, h) else cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    small = small if inner is None else inner(small)
    return small if size == (w, h) else cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def jpeg_at(img: np.ndarray, quality: int, side: float) -> np.ndarray:
    """A JPEG round trip with the face at `side` px (resized there and back), so its 8x8 blocks cover as much
    of the face as they would in an image where the face is `side` px wide."""
    return _through(img, side / max(img.shape[:2]), 8, lambda small: jpeg(small, quality))


def downscale(img: np.ndarray, side: float = 24) -> np.ndarray:
    """Down to `side` px at 48 px (the same fraction of other sides), area averaging, and back up bilinearly."""
    return _through(img, side / BASE_SIZE, 1)


def tone(img: np.ndarray, brightness: float = 0.0, contrast: float = 1.0, gamma: float = 1.0) -> np.ndarray:
    """Contrast about the image's mean, then brightness (grey levels), then gamma (out = 255 (in/255)^gamma)."""
    x = img.astype(np.float32)
    if contrast != 1.0:
        x = (x - x.mean()) * contrast + x.mean()
    x = np.clip(x + brightness, 0, 255)
    if gamma != 1.0:
        x = 255.0 * (x / 255.0) ** gamma
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def random_degrade(
    img: np.ndarray, rng: np.random.Generator, prob: float, weights: tuple[float, float, float] | None = None
) -> np.ndarray:
    """With probability `prob`, one loss of detail (downscale to 16-40 px or blur of sigma 0.4-1.6, both at 48
    px, or a JPEG round trip at quality 15-70 with the face 48 px to the image's side wide, since a training
    image upsampled from 48 px hides the 8x8 blocks that compress a 48 px face), and independently with
    probability `prob` a random tone (brightness +-50, contrast 0.5-1.3, gamma 0.55-2.0): the conditions a
    service's crops meet and FER's images rarely show. The strengths bracket the robustness suite's.
    `weights`: the odds of the three losses of detail (downscale, blur, JPEG); None draws them equally."""
    if prob <= 0:
        return img
    if rng.random() < prob:
        kind = rng.integers(3) if weights is None else rng.choice(3, p=np.asarray(weights) / sum(weights))
        if kind == 0:
            img = downscale(img, rng.uniform(16, 40))
        elif kind == 1:
            img = blur(img, rng.uniform(0.4, 1.6))
        else:
            img = jpeg_at(img, int(rng.integers(15, 71)), rng.uniform(BASE_SIZE, max(BASE_SIZE, *img.shape[:2])))
    if rng.random() < prob:
        gamma = float(np.exp(rng.uniform(np.log(0.55), np.log(2.0))))
        img = tone(img, rng.uniform(-50, 50), rng.uniform(0.5, 1.3), gamma)
    return img


def consistency_view(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A second view of a training image for the consistency loss: the crop jittered as a detector's landmarks
    jitter between video frames (shift up to 1.5% of the side, scale and rotation up to 3% and 3 degrees), then,
    half the time, a harsh loss of detail at the robustness suite's strengths (a JPEG round trip at quality
    20-40 with the face 48 px wide, or a downscale to 20-28 px at 48 px)."""
    h, w = img.shape[:2]
    m = np.asarray(
        cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), rng.uniform(-3, 3), rng.uniform(0.97, 1.03)), np.float64
    )
    m[:, 2] += rng.uniform(-0.015, 0.015, 2) * [w, h]
    img = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if rng.random() < 0.5:
        img = (
            jpeg_at(img, int(rng.integers(20, 41)), BASE_SIZE)
            if rng.random() < 0.5
            else downscale(img, rng.uniform(20, 28))
        )
    return img
