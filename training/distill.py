"""Knowledge distillation targets: a published model's softened predictions mixed into the training labels.

The teacher (`NAME@ALIAS` in the model store, or an `.onnx` file with its manifest beside it; an ensemble is
fine, that is the usual teacher) runs once with onnxruntime over the unaugmented training images, as its
manifest says to preprocess them. Each image's target becomes

    (1 - weight) * label + weight * softmax(teacher_logits / temperature)

with the teacher's classes matched to the dataset's by name (classes the teacher lacks get 0 from it).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from tqdm import tqdm

from training.data.dataset import FaceDataset, resize_face


class DistillError(ValueError):
    """The teacher cannot label this dataset (no shared classes, wrong channels)."""


def teacher_logits(source: str, images: np.ndarray, batch_size: int = 256, threads: int = 0) -> tuple[
    np.ndarray, list[str]
]:  # fmt: skip
    """(N x C logits, labels) of the teacher `source` on uint8 images (N x H x W gray or N x H x W x 3)."""
    import onnxruntime as ort

    from training.onnx_init import resolve_source

    manifest, path = resolve_source(source)
    spec = manifest.input
    in_chans = 1 if images.ndim == 3 else int(images.shape[3])
    if in_chans != spec.channels:
        raise DistillError(f"{source} takes {spec.channels}-channel input, the dataset has {in_chans}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    mean = np.asarray(spec.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(1, -1, 1, 1)
    out = []
    steps = range(0, len(images), batch_size)
    for i in tqdm(steps, desc=f"teacher {source}", leave=False, mininterval=0.5 if sys.stderr.isatty() else 60):
        batch = images[i : i + batch_size]
        if spec.size is not None and batch.shape[1:3] != (spec.size[1], spec.size[0]):
            batch = np.stack([resize_face(img, spec.size[1], spec.size[0]) for img in batch])
        x = batch.astype(np.float32)[:, None] if batch.ndim == 3 else batch.astype(np.float32).transpose(0, 3, 1, 2)
        x = (x * np.float32(spec.scale) - mean) / std
        out.append(np.asarray(sess.run(None, {name: x})[0], np.float32))
    return np.concatenate(out), list(manifest.labels or [])


def mapped_probs(logits: np.ndarray, teacher_labels: list[str], labels: list[str], temperature: float) -> np.ndarray:
    """Teacher probabilities at `temperature` over the teacher's classes, re-ordered to `labels`, renormalised
    over the classes both share."""
    shared = [(i, teacher_labels.index(c)) for i, c in enumerate(labels) if c in teacher_labels]
    if not shared:
        raise DistillError(f"the teacher's classes {teacher_labels} share none with the dataset's {labels}")
    z = logits[:, [j for _, j in shared]] / temperature
    z = np.exp(z - z.max(1, keepdims=True))
    probs = np.zeros((len(logits), len(labels)), np.float32)
    probs[:, [i for i, _ in shared]] = z / z.sum(1, keepdims=True)
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
