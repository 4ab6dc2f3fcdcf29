"""Figures for the docs: a Grad-CAM contact sheet of a store model on validation faces.

    python -m training.figures --model emotion-fer7@production --data ../shared/data/fer2013 \
        --out docs/img/gradcam_fer7.png [--per-class 2]

Each column is one class of the dataset; for each, the first `per-class` validation images (in file
order, so the sheet is reproducible) are shown as the face and its Grad-CAM overlay for the predicted
class, captioned "true -> predicted (p)", red when wrong.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np


def gradcam_sheet(ref: str, data_dir: Path, per_class: int = 2, cell: int = 144) -> np.ndarray:
    """BGR uint8 sheet: rows of (face, overlay) pairs, one column pair per class."""
    import cv2
    import torch

    from training.data import load_dataset
    from training.explain import gradcam_logits, overlay, preprocess
    from training.onnx_init import torch_model_from_store

    model, labels = torch_model_from_store(ref)
    cfg: dict[str, Any] = getattr(model, "default_cfg")  # noqa: B009
    ds = load_dataset(data_dir, "val")
    columns = []
    for k, name in enumerate(ds.labels):
        tiles = []
        for i in np.flatnonzero(ds.targets == k)[:per_class]:
            img = ds.images[i]
            bgr = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else img[:, :, ::-1].copy()
            x, face = preprocess(bgr, cfg)
            heat, logits = gradcam_logits(model, x)
            probs = torch.softmax(logits[0], 0)
            pred = int(probs.argmax())
            big = cv2.resize(face, (cell, cell), interpolation=cv2.INTER_CUBIC)
            big = cv2.cvtColor(big, cv2.COLOR_GRAY2BGR) if big.ndim == 2 else big
            pair = np.hstack([big, overlay(big, heat)])
            bar = np.full((22, pair.shape[1], 3), 255, np.uint8)
            colour = (0, 120, 0) if labels[pred] == name else (0, 0, 200)
            text = f"{name} -> {labels[pred]} ({float(probs[pred]):.2f})"
            cv2.putText(bar, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
            tiles.append(np.vstack([bar, pair]))
        columns.append(np.vstack(tiles))
    gap = np.full((columns[0].shape[0], 6, 3), 255, np.uint8)
    return np.hstack([c for col in columns for c in (col, gap)][:-1])


def main() -> None:
    import cv2

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="NAME@ALIAS of a model our training job published")
    ap.add_argument("--data", type=Path, required=True, help="dataset folder with a validation split")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--per-class", type=int, default=2)
    args = ap.parse_args()
    sheet = gradcam_sheet(args.model, args.data, args.per_class)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), sheet)
    print(f"{args.out}: {sheet.shape[1]}x{sheet.shape[0]}")


if __name__ == "__main__":
    main()
