"""A second opinion on each FER+ face: its original FER2013 label, found by matching pixels.

FER+ relabelled the FER2013 images by ten votes each. `../shared` holds both sets: the FER+ PNGs (exact
pixels, FER+ file names) and FER2013 in the Kaggle folder layout (JPEGs of the same pixels, original
labels, file names that are not row numbers). So each FER+ face is matched to its FER2013 JPEG by content:
the nearest neighbour among 16x16 thumbnails, accepted when the mean absolute difference of the 48x48
pixels is at most `MAX_MAE` grey levels (JPEG noise is a few levels, another face tens). A face without
an accepted match gets -1. The match is cached with the decoded images.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cv2
import numpy as np
from sklearn.neighbors import NearestNeighbors

from training.data.cache import cached

MAX_MAE = 6.0
THUMB = 16


@dataclass
class SecondLabels:
    """Per-image labels of another convention: `targets` index `labels`, -1 where an image has none;
    `format` is the dataset format whose validation split scores a head trained on them."""

    targets: np.ndarray
    labels: list[str]
    format: str

    def subset(self, idx: np.ndarray) -> SecondLabels:
        return SecondLabels(self.targets[idx], list(self.labels), self.format)

    def one_hot(self) -> np.ndarray:
        """N x len(labels) float32; rows without a label are all zero (they add nothing to the loss)."""
        out = np.zeros((len(self.targets), len(self.labels)), np.float32)
        has = self.targets >= 0
        out[np.flatnonzero(has), self.targets[has]] = 1.0
        return out


def _thumbs(images: np.ndarray) -> np.ndarray:
    return (
        np.stack([cv2.resize(img, (THUMB, THUMB), interpolation=cv2.INTER_AREA) for img in images])
        .reshape(len(images), -1)
        .astype(np.float32)
    )


def match_faces(query: np.ndarray, reference: np.ndarray, max_mae: float = MAX_MAE) -> np.ndarray:
    """For each face of `query` (N x H x W uint8), the index of the same face in `reference` (same size), or -1."""
    if len(query) == 0 or len(reference) == 0:
        return np.full(len(query), -1, np.int64)
    nn = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(_thumbs(reference))
    idx = nn.kneighbors(_thumbs(query), return_distance=False)[:, 0]
    mae = np.abs(query.astype(np.int16) - reference[idx].astype(np.int16)).mean(axis=(1, 2))
    return np.where(mae <= max_mae, idx, -1).astype(np.int64)


def matched_labels(
    images: np.ndarray, reference: np.ndarray, ref_targets: np.ndarray, cache: bool = True
) -> np.ndarray:
    """The label of each face's match in `reference` (-1 where none), cached by both image sets' content."""
    h = hashlib.sha256()
    for arr in (images, reference, ref_targets):
        h.update(str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr).data)
    idx = cached(f"match-{h.hexdigest()[:24]}", lambda: {"idx": match_faces(images, reference)}, cache)["idx"]
    return np.where(idx >= 0, ref_targets[np.maximum(idx, 0)], -1).astype(np.int64)
