"""Prior correction sweep (not a test): what dividing a classifier's served probabilities by the training
prior^strength does to each class.

    .venv/bin/python bench/bench_prior.py [--model emotion-ferplus8@production] [--strengths 0 0.25 0.5 1]

Two label conventions, one run: FER+ valid (majority rule; the model's own labels) and FER2013 PublicTest
(the original labels; for an 8-class model the 7 shared classes). The original labels call more faces
angry, sad or fearful where FER+'s voters say neutral, so they show what a correction does to the
"it only says neutral" complaint. The prior is the model manifest's when it has one, else the class
frequencies of `--prior-data`'s training split (FER+ train, majority rule). Strength 0 is the model
without a correction: the baseline of the same run. The model runs once per set; each strength only
re-weights its probabilities.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model_store import ModelStore  # noqa: E402
from model_store.manifest import PriorCorrection  # noqa: E402
from model_store.storage import LocalStorage  # noqa: E402
from training.data import load_dataset  # noqa: E402
from training.evaluate import evaluate_loaded  # noqa: E402
from training.metrics import class_prior  # noqa: E402
from training.onnx_run import onnx_logits  # noqa: E402

DATA = REPO.parent / "shared" / "data"
SETS = {
    "FER+ valid": (DATA / "ferplus", "ferplus", {"rule": "majority"}),
    "FER2013 PublicTest": (DATA / "fer2013", "fer2013", {}),
}
SHOWN = ["angry", "disgust", "fear", "sad", "neutral", "happy", "surprise", "contempt"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="emotion-ferplus8@production")
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.1, 0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--prior-data", type=Path, default=DATA / "ferplus")
    ap.add_argument("--root", type=Path, help="a model store to read (default: the repository's releases/)")
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"needs {DATA} (the ../shared folder beside the checkout)")
    store = ModelStore(LocalStorage(args.root or REPO / "releases", read_only=True))  # over the shipped layer
    resolved = store.get(args.model)
    manifest = resolved.manifest
    labels = list(manifest.labels or [])
    if manifest.prior_correction is not None:
        prior = manifest.prior_correction.prior
    else:
        kw = {"rule": "majority"} if (args.prior_data / "FER2013Train").is_dir() else {}
        train = load_dataset(args.prior_data, "train", **kw)
        prior = class_prior(train.targets, train.labels, labels)
    print(f"{resolved.ref}: prior " + ", ".join(f"{c} {p:.3f}" for c, p in zip(labels, prior, strict=True)))
    table = Table(title=f"{resolved.ref}: probabilities divided by prior^strength")
    for col in ("set", "strength", "accuracy", "balanced", "ECE", *(c for c in SHOWN if c in labels)):
        table.add_column(col, justify="right")
    for name, (path, fmt, kw) in SETS.items():
        ds = load_dataset(path, "val", fmt, **kw)
        raw = onnx_logits(resolved.model_path, manifest, ds.images, desc=name)
        for s in args.strengths:
            m = manifest.model_copy(update={"prior_correction": PriorCorrection(prior=prior, strength=s)})
            r = evaluate_loaded(replace(resolved, manifest=m), ds, raw=raw)
            shared = r.get("accuracy_shared", r["accuracy"])
            recall = [f"{r['per_class'][c]['recall']:.3f}" if c in r["per_class"] else "" for c in SHOWN if c in labels]
            table.add_row(name, f"{s:g}", f"{shared:.2%}", f"{r['balanced_accuracy']:.3f}", f"{r['ece']:.3f}", *recall)
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
