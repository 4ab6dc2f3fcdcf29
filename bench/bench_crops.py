"""Serve-path check (not a test): do classifiers answer the same on the crops the service makes and on the
crops training saw?

    .venv/bin/python bench/bench_crops.py [--models emotion-ferplus8@production ...] [--every 15]

The service warps a sharp crop at the model's input size (96 px for the MobileNetV2 models) from the
full-resolution frame. FER's training images are 48 px faces, upsampled to the input size. For every
face YuNet finds in `../shared/media/photos` and in every `--every`-th frame of the shared videos, each
model classifies the service's crop and the same crop sent through 48 px first (area down, bilinear up:
the training path; a model whose input is 48 px gets the same crop both ways). The table gives the share
of faces whose label changes between the two, and the mean total-variation distance between the two
probability vectors, per model, measured in the same run on the same crops.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model_store import ModelStore  # noqa: E402
from model_store.storage import LocalStorage  # noqa: E402
from service.pipeline.analyze import Pipeline, select_faces  # noqa: E402
from service.settings import get_settings  # noqa: E402

MEDIA = REPO.parent / "shared" / "media"
TRAINING_SIDE = 48


def frames(every: int) -> list[np.ndarray]:
    """The shared photos, and every `every`-th frame of the shared videos."""
    out = [img for p in sorted((MEDIA / "photos").glob("*.jpg")) if (img := cv2.imread(str(p))) is not None]
    for video in sorted((MEDIA / "videos").rglob("*.mp4")) + sorted((MEDIA / "videos").rglob("*.mkv")):
        cap = cv2.VideoCapture(str(video))
        i = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if i % every == 0:
                out.append(frame)
            i += 1
        cap.release()
    return out


def through_training_size(crop: np.ndarray) -> np.ndarray:
    """The crop as FER's images reach training: down to 48 px (area), back up bilinearly."""
    h, w = crop.shape[:2]
    small = cv2.resize(crop, (TRAINING_SIDE, TRAINING_SIDE), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["emotion-ferplus8@production"])
    ap.add_argument("--every", type=int, default=15, help="video frames: one in this many")
    ap.add_argument("--root", type=Path, help="a model store to read (default: the repository's releases/)")
    args = ap.parse_args()
    if not MEDIA.is_dir():
        sys.exit(f"needs {MEDIA} (the ../shared folder beside the checkout)")
    settings = get_settings()
    store = ModelStore(LocalStorage(args.root or REPO / "releases", read_only=True))  # over the shipped layer
    images = frames(args.every)
    table = Table(title=f"serve path vs training path, {len(images)} images")
    for col in ("model", "faces", "label changes", "mean TV distance", "serve-path labels"):
        table.add_column(col)
    for ref in args.models:
        pipe = Pipeline.load(settings, store=store, classifier_ref=ref)
        pre, clf = pipe.classifier.preprocessor, pipe.classifier
        served, trained = [], []
        for img in images:
            faces = select_faces(pipe.detector.detect(img), settings.min_face_size, settings.max_faces)
            crops = [pre.crop(img, f.box, f.landmarks) for f in faces]
            if crops:
                served.append(clf.run(pre.normalize(crops)).probs)
                trained.append(clf.run(pre.normalize([through_training_size(c) for c in crops])).probs)
        pipe.close()
        if not served:
            sys.exit("no face found in the shared media")
        a, b = np.concatenate(served), np.concatenate(trained)
        changed = float(np.mean(a.argmax(1) != b.argmax(1)))
        tv = float(np.mean(np.abs(a - b).sum(1) / 2))
        counts = np.bincount(a.argmax(1), minlength=len(clf.labels))
        labels = ", ".join(f"{lab} {n}" for lab, n in zip(clf.labels, counts, strict=True) if n)
        table.add_row(ref, str(len(a)), f"{changed:.1%}", f"{tv:.3f}", labels)
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
