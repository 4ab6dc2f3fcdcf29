"""`FaceDataset`: decoded face crops (uint8, N x H x W or N x H x W x 3) with canonical labels."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from training.data.cache import content_fingerprint
from training.data.second_opinion import SecondLabels


@dataclass
class FaceDataset:
    """A split of a face-emotion dataset.

    `targets` are class indices into `labels`; `soft` (optional, N x C float32) holds per-image target
    distributions (e.g. FER+ vote fractions). `second` (optional) holds each image's label in another
    convention (FER+ faces with their original FER2013 labels: `second_opinion.py`). Indexing gives
    `(image, label)` or `(image, soft_vector)` when soft targets exist.
    """

    images: np.ndarray
    targets: np.ndarray
    labels: list[str]
    split: str
    name: str = "dataset"
    soft: np.ndarray | None = None
    second: SecondLabels | None = None
    _fingerprint: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.targets = np.asarray(self.targets, dtype=np.int64)
        if len(self.images) != len(self.targets):
            raise ValueError("images and targets differ in length")
        if self.soft is not None and self.soft.shape != (len(self.targets), len(self.labels)):
            raise ValueError(f"soft targets must be N x {len(self.labels)}")
        if self.second is not None and len(self.second.targets) != len(self.targets):
            raise ValueError("second labels and targets differ in length")

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int | np.ndarray]:
        if self.soft is not None:
            return self.images[i], self.soft[i]
        return self.images[i], int(self.targets[i])

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = content_fingerprint(self.images, self.targets, self.labels)
        return self._fingerprint

    def counts(self) -> np.ndarray:
        return np.bincount(self.targets, minlength=self.num_classes)

    def subset(self, idx: np.ndarray, split: str | None = None) -> FaceDataset:
        idx = np.asarray(idx, dtype=np.int64)
        return FaceDataset(
            self.images[idx], self.targets[idx], list(self.labels), split or self.split, self.name,
            None if self.soft is None else self.soft[idx], None if self.second is None else self.second.subset(idx),
        )  # fmt: skip

    def resized(self, height: int, width: int) -> FaceDataset:
        """The same split with every image resized to height x width (fingerprint of the original kept)."""
        if self.images.shape[1:3] == (height, width):
            return self
        images = np.stack([resize_face(img, height, width) for img in self.images])
        return FaceDataset(images, self.targets, list(self.labels), self.split, self.name, self.soft, self.second,
                           self.fingerprint)  # fmt: skip


def resize_face(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize one face image: area averaging when shrinking, bilinear when enlarging (training and evaluation)."""
    interp = cv2.INTER_AREA if img.shape[0] > height else cv2.INTER_LINEAR
    return cv2.resize(img, (width, height), interpolation=interp)


def decode(path: str, size: int | None, gray: bool = True) -> np.ndarray:
    """Read one image as uint8 gray (H x W) or RGB (H x W x 3), resized to size x size when given."""
    flag = cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR
    img = cv2.imread(path, flag)
    if img is None:
        raise OSError(f"cannot decode image {path}")
    if not gray:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if size is not None and img.shape[:2] != (size, size):
        interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
        img = cv2.resize(img, (size, size), interpolation=interp)
    return img


def decode_all(paths: list[str], size: int | None, gray: bool = True) -> np.ndarray:
    """Decode many images into one stacked uint8 array (all must share a size when `size` is None)."""
    if not paths:
        shape = (0, size or 48, size or 48) if gray else (0, size or 48, size or 48, 3)
        return np.zeros(shape, np.uint8)
    return np.stack([decode(p, size, gray) for p in paths])
