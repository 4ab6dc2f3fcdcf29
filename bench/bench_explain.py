"""What explanations cost (not a test): one photo analysed end to end, maps off and on.

    .venv/bin/python bench/bench_explain.py [PHOTO] [--iterations 15]

Rows: `emotion-ferplus8@3` (no `cam` output: the baseline), `@4` (the same weights with the `cam`
output) with explain=false and explain=true. The pipeline's blocking path (`analyze_sync`: decode,
detect, align, classify, and the maps when asked), median ms per image, the cases taken in turn in
each round so that a busy machine slows them alike; the ratio is against the baseline in the same run.
Default photo: ../shared/media/photos/12_angry_men.jpg (10 faces).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model_store import ModelStore  # noqa: E402
from model_store.storage import LocalStorage  # noqa: E402
from service.pipeline.analyze import Pipeline  # noqa: E402
from service.settings import Settings  # noqa: E402

CASES = [("emotion-ferplus8@3", False), ("emotion-ferplus8@4", False), ("emotion-ferplus8@4", True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo", nargs="?", type=Path, default=REPO.parent / "shared/media/photos/12_angry_men.jpg")
    parser.add_argument("--iterations", type=int, default=15)
    args = parser.parse_args()
    data = args.photo.read_bytes()
    with tempfile.TemporaryDirectory() as root:
        settings = Settings(model_root=Path(root))
        store = ModelStore(LocalStorage(REPO / "releases", read_only=True))  # version 3 too, over the shipped layer
        pipelines = {ref: Pipeline.load(settings, store=store, classifier_ref=ref) for ref, _ in CASES}
        try:
            faces = {case: len(pipelines[case[0]].analyze_sync(data, {"explain": case[1]}).faces) for case in CASES}
            times: dict[tuple[str, bool], list[float]] = {case: [] for case in CASES}
            for _ in tqdm(range(args.iterations), desc="rounds", leave=False):
                for ref, explain in CASES:
                    t = time.perf_counter()
                    pipelines[ref].analyze_sync(data, {"explain": explain})
                    times[(ref, explain)].append(time.perf_counter() - t)
        finally:
            for pipeline in pipelines.values():
                pipeline.close()
    ms = {case: statistics.median(t) * 1e3 for case, t in times.items()}
    base = ms[CASES[0]]
    rows = [
        (ref, explain, faces[(ref, explain)], ms[(ref, explain)], base / ms[(ref, explain)]) for ref, explain in CASES
    ]
    print(f"{args.photo.name}, median of {args.iterations}")
    print("| classifier | explain | faces | ms/image | speed vs @3 |")
    print("|---|---|---:|---:|---:|")
    for ref, explain, n, median, ratio in rows:
        print(f"| {ref} | {str(explain).lower()} | {n} | {median:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
