"""Evaluation: accuracy, per-class precision/recall/F1, confusion-matrix PNG, calibration
(expected calibration error, temperature scaling), stratified k-fold CV and evaluation of an ONNX
model from the store on a dataset split (preprocessing read from its manifest).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


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


# ----------------------------------------------------------------------------- k-fold


def kfold_cv(config: dict[str, Any], data_dir: Path, out_dir: Path, folds: int = 5, log: Any = print) -> dict[str, Any]:
    """Stratified k-fold CV on the training split: train on k-1 folds, validate on the held-out fold."""
    from training.config import TrainConfig
    from training.data import load_dataset
    from training.data.splits import stratified_folds
    from training.train import train_run

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


# ----------------------------------------------------------------------------- ONNX models from the store


def preprocess_for(manifest: Any, images: np.ndarray) -> np.ndarray:
    """uint8 gray/RGB images -> the model input described by the manifest's InputSpec."""
    from training.data.dataset import resize_face

    spec = manifest.input
    w, h = spec.size or (images.shape[2], images.shape[1])
    out = []
    for img in images:
        if spec.color == "GRAY" and img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        elif spec.color != "GRAY" and img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        if spec.color == "BGR":
            img = img[:, :, ::-1]
        if img.shape[:2] != (h, w):
            img = resize_face(img, h, w)
        out.append(img)
    x = np.stack(out).astype(np.float32) * spec.scale
    if x.ndim == 3:
        x = x[..., None]
    x = (x - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if spec.layout == "NCHW" else x)


def onnx_logits(
    model_path: Path, manifest: Any, images: np.ndarray, batch_size: int = 256, desc: str | None = None
) -> np.ndarray:
    """Logits of an ONNX classifier on uint8 images, preprocessed as its manifest says (a progress bar with `desc`)."""
    import onnxruntime as ort
    from tqdm import tqdm

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    starts = tqdm(range(0, len(images), batch_size), desc=desc, disable=desc is None, leave=False,
                  mininterval=0.5 if sys.stderr.isatty() else 60)  # fmt: skip
    outs = [sess.run(None, {name: preprocess_for(manifest, images[i : i + batch_size])})[0] for i in starts]
    return np.concatenate(outs).astype(np.float32)


def served_probabilities(resolved: Any, raw: np.ndarray) -> np.ndarray:
    """The probabilities the service gives for model outputs `raw`: softmax of logits (or the model's own
    probabilities), with the manifest's temperature applied, as `service.pipeline.classifier` does."""
    from service.pipeline.classifier import outputs_probabilities

    z = np.log(np.clip(raw.astype(np.float64), 1e-12, None)) if outputs_probabilities(resolved) else raw
    return softmax(z, resolved.manifest.temperature or 1.0)


def evaluate_store_model(ref: str, data_dir: Path, split: str = "val", fmt: str = "auto",
                         store_root: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Evaluate `name@alias` from the model store on a dataset split ("train", "val", "test" or "all").

    The result has accuracy, balanced accuracy, macro F1, per-class metrics, the confusion matrix
    (`confusion`: `labels` and `matrix`, rows true, columns predicted) and the expected calibration
    error of the served probabilities. Label sets are matched by name: when the model's labels and the
    dataset's differ (8-class FER+ model on 7-class data or the other way round), the metrics are those
    of the argmax restricted to the shared classes (`accuracy_shared`; `accuracy` stays unrestricted).
    """
    from model_store import ModelStore
    from training.data import load_dataset

    if store_root is None:
        from service.settings import get_settings

        store_root = get_settings().model_root
    resolved = ModelStore(store_root).get(ref)
    m = resolved.manifest
    ds = load_dataset(data_dir, split, fmt)  # type: ignore[arg-type]
    probs = served_probabilities(resolved, onnx_logits(resolved.model_path, m, ds.images))
    model_labels = list(m.labels or [])
    result: dict[str, Any] = {"model": resolved.ref, "dataset": ds.name, "split": split, "n": len(ds)}
    labels, y, p = ds.labels, ds.targets, probs
    if model_labels != ds.labels:
        labels = [c for c in model_labels if c in ds.labels]
        keep = np.isin(ds.targets, [ds.labels.index(c) for c in labels])
        y = np.array([labels.index(ds.labels[t]) for t in ds.targets[keep]], dtype=np.int64)
        p = probs[keep][:, [model_labels.index(c) for c in labels]]
        p = p / p.sum(1, keepdims=True).clip(min=1e-300)
        full_pred = np.array([model_labels[i] for i in probs[keep].argmax(1)])
        result.update(shared_classes=labels, n_shared=int(keep.sum()))
    rep = classification_report(y, p, labels)
    rep["ece"] = expected_calibration_error(p, y) if len(y) else 0.0
    result.update(accuracy=rep["accuracy"], balanced_accuracy=rep["balanced_accuracy"], macro_f1=rep["macro_f1"],
                  ece=rep["ece"], per_class=rep["per_class"],
                  confusion={"labels": labels, "matrix": rep["confusion"].tolist()})  # fmt: skip
    if model_labels != ds.labels:
        result["accuracy_shared"] = rep["accuracy"]
        result["accuracy"] = float((full_pred == np.array(labels)[y]).mean()) if len(y) else 0.0
    result["_report"] = rep
    return result
