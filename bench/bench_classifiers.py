"""Classifier benchmark (not a test): emotion classifier versions (shipped or in `releases/`), faces/s in onnxruntime.

    .venv/bin/python bench/bench_classifiers.py [--iterations 20] [--threads 1 2] [--batch 1 32]

Each model runs on random input of its manifest's size (the preprocessing cost is the pipeline
benchmark's business); the ratio column compares with the first model listed (the baseline, by
default `emotion-ferplus8@3`) at the same batch size and thread count, measured in the same run: the graphs
take turns (`interleaved_p50`), so a drift in the machine's speed does not favour one of them.
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

DEFAULT_MODELS = [  # 4 is 3 re-exported with a `cam` output; 5 and -fast@3/@4: one MobileNetV2 (128/96/128 px)
    "emotion-ferplus8@3",
    "emotion-ferplus8@4",
    "emotion-ferplus8@5",
    "emotion-ferplus8-fast@3",
    "emotion-ferplus8-fast@4",
    "emotion-fer7@4",
    "emotion-fer7@5",
]


TURN = 5  # batches a graph runs before the next one takes its turn


def session(model_path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    # idle threads do not spin: the graphs take turns, and one's spinning pool would slow the next one's run
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])


def interleaved_p50(graphs: list[tuple[Path, tuple[int, ...]]], threads: int, iterations: int) -> list[float]:
    """Median seconds per batch of each graph (path, input shape). The graphs take turns of `TURN` batches, so a
    machine that speeds up or slows down during the run weighs on every graph alike (measured one after the
    other, two runs of the same graph differed by 1.5x on a shared VM); most batches of a turn find the graph's
    weights in the cache, as a service running it continuously does."""
    runs = []
    for path, shape in graphs:
        sess = session(path, threads)
        feed = {sess.get_inputs()[0].name: np.random.default_rng(0).random(shape, dtype=np.float32)}
        for _ in range(3):
            sess.run(None, feed)
        runs.append((sess, feed))
    times: list[list[float]] = [[] for _ in graphs]
    for _ in range(-(-iterations // TURN)):
        for (sess, feed), spent in zip(runs, times, strict=True):
            for _ in range(TURN):
                t = time.perf_counter()
                sess.run(None, feed)
                spent.append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


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
    graphs = []  # (label, network, accuracy, path, (channels, h, w))
    for ref in args.models:
        r = store.get(ref)
        m = r.manifest
        w, h = m.input.size or (48, 48)
        c = 1 if m.input.color == "GRAY" else 3
        paths = [(r.ref, r.model_path, "accuracy")]
        if r.int8_path is not None:
            paths.append((f"{r.ref} (int8)", r.int8_path, "int8_accuracy"))
        for label, path, metric in paths:
            acc = next((f"{v[metric]:.2%} {k}" for k, v in m.metrics.items() if k.endswith("_val") and metric in v),
                       "-")  # fmt: skip
            graphs.append((label, f"{m.family} {w}x{h}", acc, path, (c, h, w)))
    cases = [(b, t) for t in args.threads for b in args.batch]
    p50 = {  # (batch, threads) -> seconds per batch of each graph, in the order of `graphs`
        (batch, threads): interleaved_p50([(g[3], (batch, *g[4])) for g in graphs], threads, args.iterations)
        for batch, threads in tqdm(cases, desc="batch sizes and threads", leave=False)
    }
    print("| model | network, input | validation accuracy | batch | threads | p50 ms/batch | faces/s | vs first |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for i, (label, net, acc, _, _) in enumerate(graphs):  # by model, as listed
        for batch, threads in cases:
            sec, first = p50[batch, threads][i], p50[batch, threads][0]
            print(f"| {label} | {net} | {acc} | {batch} | {threads} | {sec * 1e3:.2f} | {batch / sec:,.0f} | "
                  f"{first / sec:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
