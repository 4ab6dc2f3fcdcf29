"""Evaluation of an ONNX model from the store on a dataset split (preprocessing read from its manifest):
accuracy, balanced accuracy, per-class metrics, the confusion matrix and the calibration of the served
probabilities (`training.metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model_store.store import ResolvedModel
from model_store.tensors import probabilities
from training.metrics import classification_report, expected_calibration_error
from training.onnx_run import onnx_logits

if TYPE_CHECKING:
    from training.data import FaceDataset


@dataclass(frozen=True)
class Int8Graph(ResolvedModel):
    """A resolved model whose int8 graph is the one run (what the service serves on the CPU)."""

    @property
    def model_path(self) -> Path:
        path = self.int8_path
        assert path is not None, "made by `int8_graph`, which refuses a model without one"
        return path


def int8_graph(resolved: ResolvedModel) -> Int8Graph:
    """`resolved` with its int8 graph in place of the float one; ValueError when it has none."""
    if resolved.int8_path is None:
        raise ValueError(f"{resolved.ref} has no int8 graph (its manifest lists no model.int8.onnx)")
    return Int8Graph(resolved.manifest, resolved.path, resolved.layer)


def served_probabilities(resolved: Any, raw: np.ndarray) -> np.ndarray:
    """The probabilities the service gives for model outputs `raw` (`model_store.tensors.probabilities`)."""
    return probabilities(resolved.manifest, raw)


def load_for_evaluation(ref: str, data_dir: Path, split: str = "val", fmt: str = "auto",
                        store_root: Path | None = None) -> tuple[Any, FaceDataset]:  # fmt: skip
    """`name@alias` resolved in the model store (the settings' root by default) and the dataset split."""
    from model_store import ModelStore
    from training.data import load_dataset

    if store_root is None:
        from model_store.store import default_root

        store_root = default_root()
    resolved = ModelStore(store_root).get(ref)
    return resolved, load_dataset(data_dir, split, fmt)  # type: ignore[arg-type]


def evaluate_loaded(resolved: Any, ds: FaceDataset, images: np.ndarray | None = None,
                    desc: str | None = None, raw: np.ndarray | None = None) -> dict[str, Any]:  # fmt: skip
    """The metrics of `evaluate_store_model` for a resolved model on `ds`, or on `images` in place of
    `ds.images` (same order and labels: a shifted copy); a progress bar with `desc`. `raw` (the model's
    outputs on those images, computed before) skips running the model."""
    m = resolved.manifest
    if raw is None:
        raw = onnx_logits(resolved.model_path, m, ds.images if images is None else images, desc=desc)
    probs = served_probabilities(resolved, raw)
    model_labels = list(m.labels or [])
    graph = "int8" if isinstance(resolved, Int8Graph) else "float"
    result: dict[str, Any] = {"model": resolved.ref, "graph": graph, "dataset": ds.name, "split": ds.split,
                              "n": len(ds)}  # fmt: skip
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


def evaluate_store_model(ref: str, data_dir: Path, split: str = "val", fmt: str = "auto",
                         store_root: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Evaluate `name@alias` from the model store on a dataset split ("train", "val", "test" or "all").

    The result has accuracy, balanced accuracy, macro F1, per-class metrics, the confusion matrix
    (`confusion`: `labels` and `matrix`, rows true, columns predicted) and the expected calibration
    error of the served probabilities. Label sets are matched by name: when the model's labels and the
    dataset's differ (8-class FER+ model on 7-class data or the other way round), the metrics are those
    of the argmax restricted to the shared classes (`accuracy_shared`; `accuracy` stays unrestricted).
    """
    result = evaluate_loaded(*load_for_evaluation(ref, data_dir, split, fmt, store_root))
    result["split"] = split
    return result
