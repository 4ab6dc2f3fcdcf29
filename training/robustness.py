"""Robustness of a store model to image shifts: accuracy and balanced accuracy of `training.evaluate` on a
split whose uint8 face images (before the manifest's resize) are shifted, one shift at a time.

Every shift is deterministic OpenCV (two runs give the same table). Sizes are defined at 48 px (FER) and
scale with the image: the blur's sigma and the downscale's 24 px are relative to a 48 px side.

- crop scale: `crop 0.8x` is a tighter crop (zoom in 1.25x about the centre), `crop 1.2x` a looser one
  (zoom out, the border replicated like the service's BORDER_REPLICATE warp);
- crop shift: the crop window moves by 10% of the side, right and down (`shift +10%`, the face appears
  up-left) or left and up (`shift -10%`), both axes at once;
- rotation: +15 and -15 degrees about the centre (counter-clockwise positive, OpenCV's convention), two rows;
- blur: Gaussian, sigma 1.0 at 48 px; JPEG at quality 30; downscale to 24 px (area) and back up (bilinear);
- tone (`TONES`): brightness +-40 grey levels, contrast 0.6 about the image's mean, gamma 1.8 (darker).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from training.data.degrade import blur, downscale, jpeg, tone
from training.evaluate import evaluate_loaded

if TYPE_CHECKING:
    from training.data import FaceDataset

Shift = Callable[[np.ndarray], np.ndarray]


class RobustnessError(ValueError):
    """A shift cannot be applied to the dataset's images (not uint8 gray or RGB, or OpenCV refused them)."""


def affine(img: np.ndarray, crop: float = 1.0, shift: float = 0.0, angle: float = 0.0) -> np.ndarray:
    """The image as seen through a crop window `crop` times the side, moved by `shift` of the side (right and
    down when positive) and rotated by `angle` degrees about the centre; outside pixels replicate the border."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0 / crop)
    m[:, 2] -= m[:, :2] @ np.array([shift * w, shift * h])
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


TONES: dict[str, tuple[float, float, float]] = {  # brightness (grey levels), contrast, gamma
    "brightness +40": (40.0, 1.0, 1.0),
    "brightness -40": (-40.0, 1.0, 1.0),
    "contrast 0.6": (0.0, 0.6, 1.0),
    "gamma 1.8": (0.0, 1.0, 1.8),
}

SHIFTS: dict[str, Shift] = {
    "crop 0.8x": partial(affine, crop=0.8),
    "crop 1.2x": partial(affine, crop=1.2),
    "shift +10%": partial(affine, shift=0.1),
    "shift -10%": partial(affine, shift=-0.1),
    "rotate +15": partial(affine, angle=15.0),
    "rotate -15": partial(affine, angle=-15.0),
    "blur 1.0": blur,
    "jpeg 30": jpeg,
    **{name: partial(tone, brightness=b, contrast=c, gamma=g) for name, (b, c, g) in TONES.items()},
    "downscale 24": downscale,
}


def apply_shift(name: str, shift: Shift, images: np.ndarray) -> np.ndarray:
    """`shift` applied to every uint8 image of an N x H x W (x 3) batch; `RobustnessError` names a refusal."""
    if images.dtype != np.uint8 or not (images.ndim == 3 or (images.ndim == 4 and images.shape[3] == 3)):
        raise RobustnessError(f"shift {name!r} needs uint8 gray or RGB images, got {images.dtype} {images.shape}")
    try:
        return np.stack([shift(img) for img in images]) if len(images) else images
    except (cv2.error, ValueError) as exc:
        detail = getattr(exc, "err", None) or str(exc)  # cv2.error's own message, without its traceback lines
        raise RobustnessError(f"shift {name!r} failed on a {images.shape[1:]} image: {detail}") from exc


def robustness_report(resolved: Any, ds: FaceDataset, unshifted: dict[str, Any],
                      shifts: dict[str, Shift] | None = None, progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Accuracy and balanced accuracy of `resolved` on `ds` under each shift (`SHIFTS` by default), measured as
    `evaluate_loaded` does (label matching included), against `unshifted` (its result on `ds` as it is).

    Returns `rows` (shift, accuracy, balanced_accuracy, drop_points: unshifted minus shifted accuracy, in
    percentage points), `unshifted`, the means over the shifts and the worst drop with its shift.
    """
    rows = []
    todo = SHIFTS if shifts is None else shifts
    for i, (name, fn) in enumerate(todo.items(), 1):
        desc = f"shift {i}/{len(todo)} {name}" if progress else None
        res = evaluate_loaded(resolved, ds, apply_shift(name, fn, ds.images), desc=desc)
        drop = 100.0 * (unshifted["accuracy"] - res["accuracy"])
        rows.append({"shift": name, "accuracy": res["accuracy"], "balanced_accuracy": res["balanced_accuracy"],
                     "drop_points": drop})  # fmt: skip
    worst = max(rows, key=lambda r: r["drop_points"]) if rows else {"shift": None, "drop_points": 0.0}
    return {
        "rows": rows,
        "unshifted": {"accuracy": unshifted["accuracy"], "balanced_accuracy": unshifted["balanced_accuracy"]},
        "mean_accuracy": float(np.mean([r["accuracy"] for r in rows])) if rows else 0.0,
        "mean_balanced_accuracy": float(np.mean([r["balanced_accuracy"] for r in rows])) if rows else 0.0,
        "worst_drop": worst["drop_points"], "worst_shift": worst["shift"],
    }  # fmt: skip


def format_robustness(rob: dict[str, Any]) -> str:
    """The robustness table as text: one row per shift, then the unshifted row and the mean over the shifts."""
    base = rob["unshifted"]["accuracy"]
    lines = [f"{'shift':<16} {'accuracy':>8} {'balanced':>8} {'drop (points)':>13}"]
    for r in rob["rows"]:
        acc, bal, drop = r["accuracy"], r["balanced_accuracy"], r["drop_points"]
        lines.append(f"{r['shift']:<16} {acc:>8.4f} {bal:>8.4f} {drop:>13.2f}")
    lines.append(f"{'unshifted':<16} {base:>8.4f} {rob['unshifted']['balanced_accuracy']:>8.4f} {0.0:>13.2f}")
    mean_drop = 100.0 * (base - rob["mean_accuracy"])
    lines.append(f"{'mean of shifts':<16} {rob['mean_accuracy']:>8.4f} {rob['mean_balanced_accuracy']:>8.4f} "
                 f"{mean_drop:>13.2f}")  # fmt: skip
    lines.append(f"worst: {rob['worst_shift']} ({rob['worst_drop']:.2f} points)")
    return "\n".join(lines)
