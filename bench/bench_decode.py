"""Reduced JPEG decoding (not a test): a photo at several sizes, decoded whole and at a reduced scale.

    .venv/bin/python bench/bench_decode.py [PHOTO] [--iterations 10]

For each size: the median decode time whole (`decode_min_side` 0, the baseline) and reduced (the
default 1280: 1/2, 1/4 or 1/8 in libjpeg's DCT while the longest side stays >= 1280), the end-to-end
`analyze_sync` time with YuNet and the default classifier both ways (taken in turn, same run), and
whether the faces agree (same count, box IoU >= 0.9). Default photo:
../shared/media/photos/12_angry_men.jpg, upscaled (INTER_CUBIC) and JPEG-encoded at quality 90.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model_store import ModelStore  # noqa: E402
from service.pipeline.analyze import Pipeline  # noqa: E402
from service.pipeline.decode import decode_scaled  # noqa: E402
from service.pipeline.schema import AnalysisResult  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.helpers.tiny_models import publish_yunet  # noqa: E402

SIZES = [(1920, 1080), (3840, 2160), (4000, 3000)]
YUNET = REPO.parent / "shared" / "models" / "detectors" / "yunet" / "face_detection_yunet_2023mar.onnx"


def median_ms(fn: object, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def iou(a: object, b: object) -> float:
    ax1, ay1, ax2, ay2 = (getattr(a, k) for k in ("x1", "y1", "x2", "y2"))
    bx1, by1, bx2, by2 = (getattr(b, k) for k in ("x1", "y1", "x2", "y2"))
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    return inter / ((ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter)


def agree(a: AnalysisResult, b: AnalysisResult) -> bool:
    return len(a.faces) == len(b.faces) and all(max(iou(f.box, g.box) for g in b.faces) >= 0.9 for f in a.faces)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo", nargs="?", type=Path, default=REPO.parent / "shared/media/photos/12_angry_men.jpg")
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args()
    src = cv2.imread(str(args.photo))
    if src is None:
        raise SystemExit(f"cannot read {args.photo}")
    with tempfile.TemporaryDirectory() as root:
        store = ModelStore(Path(root))
        det = publish_yunet(store, YUNET)
        pipes = {side: Pipeline.load(Settings(model_root=Path(root), decode_min_side=side), store=store,
                                     detector_ref=det.ref) for side in (0, 1280)}  # fmt: skip
        rows = []
        try:
            for w, h in SIZES:
                img = cv2.resize(src, (w, h), interpolation=cv2.INTER_CUBIC)
                data = bytes(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
                dec = {s: median_ms(lambda s=s, d=data: decode_scaled(d, 100_000_000, s), args.iterations)
                       for s in (0, 1280)}  # fmt: skip
                results = {s: p.analyze_sync(data) for s, p in pipes.items()}
                e2e: dict[int, list[float]] = {0: [], 1280: []}
                for _ in range(args.iterations):
                    for s, p in pipes.items():
                        t = time.perf_counter()
                        p.analyze_sync(data)
                        e2e[s].append(time.perf_counter() - t)
                ms = {s: statistics.median(v) * 1e3 for s, v in e2e.items()}
                scale = decode_scaled(data, 100_000_000, 1280).scale
                rows.append((f"{w}x{h}", scale, dec[0], dec[1280], ms[0], ms[1280], len(results[0].faces),
                             agree(results[0], results[1280])))  # fmt: skip
        finally:
            for p in pipes.values():
                p.close()
    print(f"{args.photo.name}, medians of {args.iterations}")
    print("| size | decoded at | decode whole ms | reduced ms | speed | analyze whole ms | reduced ms | speed "
          "| faces | same faces |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for size, scale, d0, d1, a0, a1, n, same in rows:
        print(
            f"| {size} | {scale:.2f} | {d0:.1f} | {d1:.1f} | {d0 / d1:.2f}x | {a0:.1f} | {a1:.1f} | {a0 / a1:.2f}x | "
            f"{n} | {'yes' if same else 'NO'} |"
        )


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
