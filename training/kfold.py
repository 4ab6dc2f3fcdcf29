"""Stratified k-fold cross-validation of a training config (above `training.train`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from training.config import TrainConfig
from training.data import load_dataset
from training.data.splits import stratified_folds
from training.train import train_run


def kfold_cv(config: dict[str, Any], data_dir: Path, out_dir: Path, folds: int = 5, log: Any = print) -> dict[str, Any]:
    """Stratified k-fold CV on the training split: train on k-1 folds, validate on the held-out fold."""
    cfg = TrainConfig.from_dict(dict(config))
    full = load_dataset(data_dir, "train", cfg.format, **cfg.data_kwargs)
    accs, f1s = [], []
    for k, (tr, va) in enumerate(stratified_folds(full.targets, folds, cfg.seed)):
        splits = (full.subset(tr, "train"), full.subset(va, "val"))
        m = train_run(cfg, data_dir, out_dir / f"fold{k + 1}", log=log, splits=splits)
        accs.append(m["val_accuracy"])
        f1s.append(m["macro_f1"])
        log(f"[kfold] fold {k + 1}/{folds}: accuracy {accs[-1]:.4f}")
    return {"folds": folds, "accuracy": accs, "macro_f1": f1s, "accuracy_mean": float(np.mean(accs)),
            "accuracy_std": float(np.std(accs)), "macro_f1_mean": float(np.mean(f1s))}  # fmt: skip
