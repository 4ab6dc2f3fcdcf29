"""Optional PCA preprocessing: per channel, project images onto the principal components that keep
95% of the training-set variance and reconstruct them (a linear denoising of the pixels).

It is fitted with scikit-learn on the training images and applied as a fixed linear layer
(`PCAProjection`) in front of the network, so the exported ONNX model contains it and the serving
preprocessing does not change.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from sklearn.decomposition import PCA


class PCAProjection(nn.Module):
    """x -> mean + (x - mean) W^T W per channel, on flattened normalised pixels."""

    def __init__(self, means: torch.Tensor, components: list[torch.Tensor]) -> None:
        super().__init__()
        self.register_buffer("means", means)  # C x D
        k = max(c.shape[0] for c in components)
        padded = torch.zeros(len(components), k, means.shape[1])
        for i, c in enumerate(components):
            padded[i, : c.shape[0]] = c  # zero rows add nothing to the projection
        self.register_buffer("components", padded)  # C x K x D

    means: torch.Tensor
    components: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        flat = x.reshape(b, c, h * w) - self.means
        coef = torch.einsum("bcd,ckd->bck", flat, self.components)
        rec = torch.einsum("bck,ckd->bcd", coef, self.components) + self.means
        return rec.reshape(b, c, h, w)


def fit_pca(x: np.ndarray, variance: float = 0.95, max_samples: int = 10000, seed: int = 0) -> PCAProjection:
    """Fit per-channel PCA on float images N x C x H x W (a random subset of at most `max_samples`)."""
    rng = np.random.default_rng(seed)
    if len(x) > max_samples:
        x = x[rng.choice(len(x), max_samples, replace=False)]
    n, c = x.shape[:2]
    means, comps = [], []
    for ch in range(c):
        pca = PCA(n_components=variance, svd_solver="full", random_state=seed).fit(x[:, ch].reshape(n, -1))
        means.append(torch.from_numpy(pca.mean_.astype(np.float32)))
        comps.append(torch.from_numpy(pca.components_.astype(np.float32)))
    return PCAProjection(torch.stack(means), comps)
