"""Knowledge distillation targets: a published model's softened predictions mixed into the training labels.

The teacher (`NAME@ALIAS` in the model store, or an `.onnx` file with its manifest beside it; an ensemble is
fine, that is the usual teacher) runs once with onnxruntime over the unaugmented training images, as its
manifest says to preprocess them (`training.onnx_run.onnx_logits`). Its logits are cached (the dataset
cache folder, keyed by the model file's and the images' content), so later runs with the same teacher
and data skip that pass. Each image's target becomes

    (1 - weight) * label + weight * softmax(teacher_logits / temperature)

with the teacher's classes matched to the dataset's by name (classes the teacher lacks get 0 from it).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from model_store.hashing import sha256_file
from training.data.cache import cached
from training.data.dataset import FaceDataset
from training.metrics import softmax
from training.onnx_run import onnx_logits


class DistillError(ValueError):
    """The teacher cannot label this dataset (no shared classes)."""


def teacher_key(model_path: Path, manifest: Any, images: np.ndarray) -> str:
    """Cache key of a teacher's logits: the model file, its preprocessing (the manifest's input spec)
    and the images."""
    h = hashlib.sha256(sha256_file(Path(model_path)).encode())
    h.update(manifest.input.model_dump_json().encode())
    h.update(str(images.shape).encode())
    h.update(np.ascontiguousarray(images).data)
    return "teacher-" + h.hexdigest()[:24]


def teacher_logits(source: str, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, list[str]]:
    """(N x C logits, labels) of the teacher `source` on uint8 images (N x H x W gray or N x H x W x 3);
    computed once per teacher and image set, then read from the cache."""
    from training.onnx_init import resolve_source

    manifest, path = resolve_source(source)
    logits = cached(
        teacher_key(path, manifest, images),
        lambda: {"logits": onnx_logits(path, manifest, images, batch_size, desc=f"teacher {source}")},
    )["logits"]
    return logits, list(manifest.labels or [])


def mapped_probs(logits: np.ndarray, teacher_labels: list[str], labels: list[str], temperature: float) -> np.ndarray:
    """Teacher probabilities at `temperature` over the teacher's classes, re-ordered to `labels`, renormalised
    over the classes both share."""
    shared = [(i, teacher_labels.index(c)) for i, c in enumerate(labels) if c in teacher_labels]
    if not shared:
        raise DistillError(f"the teacher's classes {teacher_labels} share none with the dataset's {labels}")
    probs = np.zeros((len(logits), len(labels)), np.float32)
    probs[:, [i for i, _ in shared]] = softmax(logits[:, [j for _, j in shared]], temperature)
    return probs


def distilled_targets(train: FaceDataset, base: np.ndarray, source: str, weight: float, temperature: float,
                      log: Any = print) -> np.ndarray:  # fmt: skip
    """N x C targets: `base` (class ids or distributions) mixed with the teacher's probabilities."""
    logits, teacher_labels = teacher_logits(source, train.images)
    probs = mapped_probs(logits, teacher_labels, list(train.labels), temperature)
    hard = base.astype(np.float32) if base.ndim == 2 else np.eye(len(train.labels), dtype=np.float32)[base]
    agree = float((probs.argmax(1) == hard.argmax(1)).mean())
    log(f"[train] distilling from {source} (weight {weight}, temperature {temperature}): "
        f"teacher agrees with {agree:.1%} of the training labels")  # fmt: skip
    return (1.0 - weight) * hard + weight * probs
