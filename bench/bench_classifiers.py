"""Classifier benchmark (not a test): emotion classifier versions (shipped or in `releases/`), faces/s in onnxruntime.

    .venv/bin/python bench/bench_classifiers.py [--iterations 20] [--threads 1 2] [--batch 1 32]

Each model runs on random input of its manifest's size (the preprocessing cost is the pipeline
benchmark's business); the ratio column compares with the first model listed (the baseline, by
default `emotion-ferplus8@3`) at the same batch size and thread count, measured in the same run.
The accuracy column is the manifest's validation metric, so speed and accuracy sit side by side.
A model whose artifact has an int8 graph (`model.int8.onnx`, what the service runs on the CPU) gets a
second row, `(int8)`, with that graph's speed and accuracy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model_store import ModelStore  # noqa: E402
from model_store.storage import LocalStorage  # noqa: E402

DEFAULT_MODELS = [  # version 4 is 3 re-exported with a `cam` output; -fast@3/@4: one MobileNetV2 at 96/128 px
    "emotion-ferplus8@3",
    "emotion-ferplus8@4",
    "emotion-ferplus8-fast@3",
    "emotion-ferplus8-fast@4",
    "emotion-fer7@4",
    "emotion-fer7@5",
]


def faces_per_second(model_path: Path, shape: tuple[int, ...], threads: int, iterations: int) -> tuple[float, float]:
    """(p50 ms per batch, faces/s) of one session at one batch size."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    for _ in range(3):
        sess.run(None, {name: x})
    times = []
    for _ in range(iterations):
        t = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t)
    p50 = statistics.median(times)
    return p50 * 1e3, shape[0] / p50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="NAME@VERSION or NAME@ALIAS")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--root", type=Path, help="a model store to read (default: the repository's releases/)")
    args = parser.parse_args()
    # the earlier versions kept in the repository (or a store of your own), over the shipped layer; read only
    store = ModelStore(LocalStorage(args.root or REPO / "releases", read_only=True))
    rows = []
    base: dict[tuple[int, int], float] = {}
    cases = [(ref, b, t) for ref in args.models for t in args.threads for b in args.batch]
    for ref, batch, threads in tqdm(cases, desc="classifiers", leave=False):
        r = store.get(ref)
        m = r.manifest
        w, h = m.input.size or (48, 48)
        c = 1 if m.input.color == "GRAY" else 3
        graphs = [(r.ref, r.model_path, "accuracy")]
        if r.int8_path is not None:
            graphs.append((f"{r.ref} (int8)", r.int8_path, "int8_accuracy"))
        for label, path, metric in graphs:
            ms, fps = faces_per_second(path, (batch, c, h, w), threads, args.iterations)
            base.setdefault((batch, threads), fps)
            acc = next((f"{v[metric]:.2%} {k}" for k, v in m.metrics.items() if k.endswith("_val") and metric in v),
                       "-")  # fmt: skip
            rows.append((label, f"{m.family} {w}x{h}", acc, batch, threads, ms, fps, fps / base[(batch, threads)]))
    print("| model | network, input | validation accuracy | batch | threads | p50 ms/batch | faces/s | vs first |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for ref, net, acc, batch, threads, ms, fps, ratio in rows:
        print(f"| {ref} | {net} | {acc} | {batch} | {threads} | {ms:.2f} | {fps:,.0f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
