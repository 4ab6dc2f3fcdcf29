"""The one way `training` runs ONNX models: onnxruntime on the CPU, raw inputs (`ort_run`) or uint8 face
images preprocessed as a manifest says (`onnx_logits`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from model_store.tensors import normalize


def ort_session(path: Path) -> Any:
    """An onnxruntime CPU session of the model file."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    """The first output of the model on one float32 input batch."""
    sess = ort_session(path)
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0])


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
    pixels = np.stack(out)
    return normalize(pixels[..., None] if pixels.ndim == 3 else pixels, spec)


def onnx_logits(
    model_path: Path, manifest: Any, images: np.ndarray, batch_size: int = 256, desc: str | None = None
) -> np.ndarray:
    """Logits of an ONNX classifier on uint8 images, preprocessed as its manifest says (a progress bar with `desc`)."""
    from tqdm import tqdm

    sess = ort_session(model_path)
    name = sess.get_inputs()[0].name
    starts = tqdm(range(0, len(images), batch_size), desc=desc, disable=desc is None, leave=False,
                  mininterval=0.5 if sys.stderr.isatty() else 60)  # fmt: skip
    outs = [sess.run(None, {name: preprocess_for(manifest, images[i : i + batch_size])})[0] for i in starts]
    return np.concatenate(outs).astype(np.float32)
