"""Stratified train/validation split and stratified k-fold, both deterministic for a seed."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

VAL_FRACTION = 0.15
SPLIT_SEED = 1234


def stratified_split(
    targets: np.ndarray, val_fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) with each class split in the same proportion (default 85/15)."""
    idx = np.arange(len(targets))
    counts = np.bincount(targets)
    strat = targets if counts[counts > 0].min() >= 2 else None
    tr, va = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=strat)
    return np.sort(tr), np.sort(va)


def stratified_folds(
    targets: np.ndarray, folds: int = 5, seed: int = SPLIT_SEED
) -> list[tuple[np.ndarray, np.ndarray]]:
    """`folds` (train, val) index pairs; the val parts are disjoint, cover everything and keep class ratios."""
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(tr, va) for tr, va in skf.split(np.zeros(len(targets)), targets)]
