"""Pipeline benchmark (not a test): per-stage latency and images/s, and classifier throughput.

    .venv/bin/python bench/bench_pipeline.py [--iterations 40] [--shared ../shared]

Needs ../shared (YuNet and photos). Builds a temporary store with YuNet (twice: in onnxruntime, the
default, and in OpenCV's FaceDetectorYN as the same-run baseline) and a generated ~1M-parameter
classifier (5 strided convs on 1x48x48); the classifier table adds the shipped default classifier.
End-to-end runs are single-stream
(`Pipeline.analyze_sync`, no batching delay); images are real photos cropped/resized/padded to
640x480 and 1280x720 with 1 face (obama.jpg) and 9 faces (12_angry_men.jpg).
Targets on 2 cores: 640x480 one-face p50 <= 10 ms; classifier >= 1,000 faces/s at batch 32.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model_store import ModelStore  # noqa: E402
from service.pipeline.analyze import Pipeline  # noqa: E402
from service.runtime import SessionPool  # noqa: E402
from service.settings import get_settings  # noqa: E402
from tests.helpers.tiny_models import (  # noqa: E402
    EMOTIONS,
    classifier_draft,
    conv_classifier_onnx,
    count_params,
    publish_yunet,
)


def _fit(image: np.ndarray, size: tuple[int, int], crop_top: float = 0.0) -> np.ndarray:
    """Crop to the target aspect (from `crop_top` of the spare height), then resize."""
    import cv2

    w, h = size
    ih, iw = image.shape[:2]
    if iw / ih > w / h:
        cw = round(ih * w / h)
        x0 = (iw - cw) // 2
        image = image[:, x0 : x0 + cw]
    else:
        ch = round(iw * h / w)
        y0 = round((ih - ch) * crop_top)
        image = image[y0 : y0 + ch]
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _letterbox(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize keeping the aspect, pad the rest grey (keeps all 9 faces of the wide photo)."""
    import cv2

    w, h = size
    s = min(w / image.shape[1], h / image.shape[0])
    small = cv2.resize(image, (round(image.shape[1] * s), round(image.shape[0] * s)), interpolation=cv2.INTER_AREA)
    canvas = np.full((h, w, 3), 114, np.uint8)
    y0, x0 = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
    canvas[y0 : y0 + small.shape[0], x0 : x0 + small.shape[1]] = small
    return canvas


def _images(shared: Path) -> dict[str, bytes]:
    import cv2

    one = cv2.imread(str(shared / "media/photos/obama.jpg"))
    nine = cv2.imread(str(shared / "media/photos/12_angry_men.jpg"))
    assert one is not None and nine is not None
    raw: dict[str, np.ndarray] = {
        "640x480, 1 face": _fit(one, (640, 480), 0.2),
        "640x480, 9 faces": _letterbox(nine, (640, 480)),
        "1280x720, 1 face": _fit(one, (1280, 720), 0.2),
        "1280x720, 9 faces": nine,
    }
    return {k: bytes(cv2.imencode(".jpg", v, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()) for k, v in raw.items()}


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


def bench_pipeline(
    store: ModelStore, det_ref: str, clf_ref: str, images: dict[str, bytes], iterations: int, threads: int
) -> list[list[str]]:
    import cv2

    cv2.setNumThreads(threads)  # a detector running through OpenCV uses OpenCV's threads
    settings = get_settings(model_root=Path(tempfile.gettempdir()), intra_op_threads=threads, session_concurrency=1)
    pipe = Pipeline.load(settings, store=store, detector_ref=det_ref, classifier_ref=clf_ref)
    rows = []
    for name, data in images.items():
        for _ in range(3):
            pipe.analyze_sync(data)
        stages: dict[str, list[float]] = {k: [] for k in ("decode", "detect", "align", "classify", "total")}
        faces = 0
        started = time.perf_counter()
        for _ in range(iterations):
            r = pipe.analyze_sync(data)
            faces = len(r.faces)
            for k in stages:
                stages[k].append(getattr(r.timings_ms, k))
        wall = time.perf_counter() - started
        rows.append(
            [name, str(threads), str(faces)]
            + [f"{statistics.median(stages[k]):.2f}" for k in ("decode", "detect", "align", "classify")]
            + [f"{_p(stages['total'], 50):.2f}", f"{_p(stages['total'], 90):.2f}", f"{iterations / wall:.1f}"]
        )
    pipe.close()
    return rows


def bench_classifier(model_path: Path, iterations: int, threads: int) -> list[list[str]]:
    pool = SessionPool(get_settings(model_root=Path(tempfile.gettempdir()), intra_op_threads=threads))
    session = pool.session_factory(model_path)
    rng = np.random.default_rng(0)
    rows = []
    for batch in (1, 8, 32):
        x = rng.standard_normal((batch, 1, 48, 48)).astype(np.float32)
        for _ in range(5):
            session.run(None, {"input": x})
        n = max(10, iterations * 32 // batch)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            session.run(None, {"input": x})
            times.append(time.perf_counter() - t)
        p50 = statistics.median(times)
        rows.append([str(batch), str(threads), f"{p50 * 1000:.2f}", f"{batch / p50:.0f}"])
    pool.close()
    return rows


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    console = Console(width=150)
    yunet = args.shared / "models/detectors/yunet/face_detection_yunet_2023mar.onnx"
    if not yunet.is_file():
        sys.exit(f"needs {yunet} (the ../shared folder)")
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        store = ModelStore(tmpdir / "store", shipped=None)
        det = publish_yunet(store, yunet)
        det_cv = publish_yunet(store, yunet, "yunet-opencv", runtime="opencv")  # the same-run baseline
        clf_path = conv_classifier_onnx(tmpdir / "conv1m.onnx")
        draft = {**classifier_draft("conv-1m"), "family": "bench-conv", "description": "benchmark conv net"}
        assert len(draft["labels"]) == len(EMOTIONS)
        store.publish(draft, {"model.onnx": clf_path}, alias="production")
        clf = store.get("conv-1m@production")
        console.print(
            f"detector {det.ref} (family {det.manifest.family}); classifier {clf.ref}, "
            f"{count_params(clf_path):,} parameters; {args.iterations} iterations per row"
        )

        images = _images(args.shared)
        table = Table(title="pipeline, single stream (ms; p50 per stage)")
        for col in (
            "YuNet in",
            "image",
            "threads",
            "faces",
            "decode",
            "detect",
            "align",
            "classify",
            "total p50",
            "total p90",
            "images/s",
        ):
            table.add_column(col, justify="left" if col in ("image", "YuNet in") else "right")
        for ref, runtime in ((det.ref, "onnxruntime"), (det_cv.ref, "opencv")):
            for threads in args.threads:
                for row in bench_pipeline(store, ref, clf.ref, images, args.iterations, threads):
                    table.add_row(runtime, *row)
        console.print(table)

        ctable = Table(title="classifier throughput (1x48x48 input)")
        for col in ("model", "batch", "threads", "p50 ms/batch", "faces/s"):
            ctable.add_column(col, justify="right")
        shipped = ModelStore(tmpdir / "empty").get("emotion-ferplus8@production")  # the shipped default
        for label, path in (("conv-1m (generated)", clf_path), (f"{shipped.ref} (2.8M, flip TTA)", shipped.model_path)):
            for threads in args.threads:
                for row in bench_classifier(path, args.iterations, threads):
                    ctable.add_row(label, *row)
        console.print(ctable)


if __name__ == "__main__":
    main()
