"""Classification metrics: accuracy, balanced accuracy, per-class precision/recall/F1, the confusion
matrix and its PNG, calibration (expected calibration error, temperature scaling). A leaf of `training`."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from model_store.tensors import softmax  # the one softmax (the service serves the same)


def classification_report(y_true: np.ndarray, scores: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro F1, per-class precision/recall/F1/support and the confusion matrix.

    `scores` are N x C logits/probabilities (or N predicted class ids). Balanced accuracy is the mean
    recall of the classes that have images (a class absent from `y_true` has no recall to average).
    """
    y_pred = scores.argmax(1) if scores.ndim == 2 else np.asarray(scores)
    ids = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    return {
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        "balanced_accuracy": float(r[s > 0].mean()) if (s > 0).any() else 0.0,
        "macro_f1": float(np.mean(f)),
        "per_class": {
            lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, lab in enumerate(labels)
        },
        "confusion": confusion_matrix(y_true, y_pred, labels=ids),
    }


def class_prior(
    targets: np.ndarray, target_labels: list[str], labels: list[str], soft: np.ndarray | None = None
) -> list[float]:
    """The class frequencies a model was trained on, in the order of `labels`, summing to 1: the mean of the
    soft targets `soft` (N x len(target_labels)) when given, else the counts of `targets` (ids into
    `target_labels`). A class without training images gets the largest frequency of the others, so that a
    correction by this prior never favours a class the model has not seen."""
    if soft is not None:
        mass = np.asarray(soft, np.float64).sum(axis=0)
    else:
        mass = np.bincount(np.asarray(targets, np.int64), minlength=len(target_labels)).astype(np.float64)
    freq = np.array([mass[target_labels.index(c)] if c in target_labels else 0.0 for c in labels])
    if not (freq > 0).any():
        raise ValueError("no training targets to take a prior from")
    freq[freq <= 0] = freq.max()
    return [round(float(f), 6) for f in freq / freq.sum()]


def format_report(report: dict[str, Any]) -> str:
    """The per-class table as text."""
    lines = [f"{'class':<10} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8}"]
    for lab, m in report["per_class"].items():
        lines.append(f"{lab:<10} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>6.3f} {m['support']:>8d}")
    lines.append(f"accuracy {report['accuracy']:.4f}   balanced accuracy {report['balanced_accuracy']:.4f}   "
                 f"macro F1 {report['macro_f1']:.4f}")  # fmt: skip
    if "ece" in report:
        lines.append(f"ECE {report['ece']:.4f} (15 bins, the served probabilities)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- calibration


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE: sum over equal-width confidence bins of |accuracy - confidence| weighted by the bin's share."""
    conf = probs.max(1)
    correct = probs.argmax(1) == y
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    p = softmax(logits, temperature)
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Temperature T > 0 minimising the NLL of softmax(logits / T) (LBFGS on log T)."""
    import torch

    z = torch.from_numpy(logits.astype(np.float64))
    t = torch.from_numpy(np.asarray(y, dtype=np.int64))
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), t)
        loss.backward()
        return loss

    opt.step(closure)
    temp = float(log_t.detach().exp())
    return {
        "temperature": temp,
        "nll_before": nll(logits, y), "nll_after": nll(logits, y, temp),
        "ece_before": expected_calibration_error(softmax(logits), y),
        "ece_after": expected_calibration_error(softmax(logits, temp), y),
    }  # fmt: skip


# ----------------------------------------------------------------------------- confusion matrix PNG


def save_confusion_png(cm: np.ndarray, labels: list[str], path: Path, cell: int = 64) -> Path:
    """Draw the row-normalised confusion matrix (counts and %) with OpenCV."""
    n = len(labels)
    margin = 110
    img = np.full((margin + n * cell + 10, margin + n * cell + 10, 3), 255, np.uint8)
    rows = cm.sum(1, keepdims=True).clip(min=1)
    frac = cm / rows
    font = cv2.FONT_HERSHEY_SIMPLEX
    for i in range(n):
        for j in range(n):
            x0, y0 = margin + j * cell, margin + i * cell
            shade = int(255 - 200 * frac[i, j])
            cv2.rectangle(img, (x0, y0), (x0 + cell, y0 + cell), (255, shade, shade), -1)
            cv2.rectangle(img, (x0, y0), (x0 + cell, y0 + cell), (200, 200, 200), 1)
            colour = (255, 255, 255) if frac[i, j] > 0.6 else (0, 0, 0)
            cv2.putText(img, f"{frac[i, j] * 100:.0f}%", (x0 + 8, y0 + 28), font, 0.45, colour, 1, cv2.LINE_AA)
            cv2.putText(img, str(int(cm[i, j])), (x0 + 8, y0 + 48), font, 0.35, colour, 1, cv2.LINE_AA)
        cv2.putText(img, labels[i][:9], (5, margin + i * cell + 36), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, labels[i][:9], (margin + i * cell + 4, margin - 10), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "true \\ predicted", (5, 20), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)
    return path
