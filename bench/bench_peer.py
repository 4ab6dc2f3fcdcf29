"""Peer benchmark (not a test): emoserve against the `fer` package, same images, same run.

    make bench-peer          # creates .venv-fer (fer + tensorflow-cpu) once, then runs this
    .venv/bin/python bench/bench_peer.py [--fer-python .venv-fer/bin/python] [--repeat 5] [--shared ../shared]

1. Photos (`../shared/media/photos`): detection + classification of every face, one image at a time,
   as each library is used: emoserve's `Pipeline.analyze_sync` (YuNet + the default classifier) and
   fer's `FER().detect_emotions` (Haar cascade + its quantised mini-Xception). Median seconds per image,
   images/s and faces found.
2. FER2013 validation crops (`../shared/data/fer2013/val`, 3,589 48x48 faces): accuracy on the 7
   classes and classifier faces/s. fer gets each crop as a given face box (no margin); emoserve runs
   its classifier sessions in batches of 32, the way the service batches faces.

fer runs in its own virtual environment (TensorFlow would otherwise share ours) through
`bench/peer_fer_worker.py`; both sides may use both cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def run_fer(python: Path, *args: str) -> dict[str, Any]:
    """Run the peer worker and parse its JSON."""
    proc = subprocess.run(
        [str(python), str(REPO / "bench" / "peer_fer_worker.py"), *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"fer worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def load_val_crops(shared: Path) -> tuple[np.ndarray, np.ndarray]:
    """FER2013 validation crops (uint8 N x 48 x 48) and their labels in LABELS order."""
    from training.data import load_dataset

    ds = load_dataset(shared / "data/fer2013", "val", "fer2013")
    assert ds.labels == LABELS, ds.labels
    return ds.images, ds.targets


def ours_photos(pipe: Any, photos: list[Path], repeat: int) -> list[dict[str, Any]]:
    rows = []
    for path in photos:
        data = path.read_bytes()
        result = pipe.analyze_sync(data)
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            result = pipe.analyze_sync(data)
            times.append(time.perf_counter() - t)
        boxes = [[round(f.box.x1), round(f.box.y1), round(f.box.x2 - f.box.x1), round(f.box.y2 - f.box.y1)]
                 for f in result.faces]  # fmt: skip
        rows.append({"path": str(path), "faces": len(result.faces), "times_s": times, "boxes": boxes,
                     "labels": [f.emotion.label for f in result.faces]})  # fmt: skip
    return rows


def side_by_side(path: Path, ours: dict[str, Any], peer: dict[str, Any], out: Path) -> None:
    """The photo twice, emoserve's faces (green) left and fer's (orange) right, with their labels."""
    import cv2

    panels = []
    for title, found, colour in (("emoserve", ours, (60, 200, 60)), ("fer", peer, (0, 140, 255))):
        img = cv2.imread(str(path))
        assert img is not None
        thick = max(2, img.shape[1] // 400)
        for (x, y, w, h), label in zip(found["boxes"], found["labels"], strict=True):
            cv2.rectangle(img, (x, y), (x + w, y + h), colour, thick)
            cv2.putText(img, label, (x, max(12, y - 6)), cv2.FONT_HERSHEY_SIMPLEX, thick * 0.45, colour, thick)
        cv2.putText(img, f"{title}: {len(found['boxes'])} faces", (10, 40 * thick // 2 + 20),
                    cv2.FONT_HERSHEY_SIMPLEX, thick * 0.6, colour, thick + 1)  # fmt: skip
        panels.append(img)
    sheet = np.hstack(panels)
    scale = min(1.0, 1800 / sheet.shape[1])
    sheet = cv2.resize(sheet, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), sheet, [cv2.IMWRITE_JPEG_QUALITY, 85])


def ours_faces(model_path: Path, manifest: Any, crops: np.ndarray, threads: int) -> tuple[np.ndarray, float]:
    """Predicted label index (in LABELS) per crop, and seconds, batches of 32 through one session."""
    import onnxruntime as ort

    from training.onnx_run import preprocess_for

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    labels = list(manifest.labels)
    cols = [labels.index(c) for c in LABELS]  # an 8-class model is read on the 7 shared classes
    preds = []
    t = time.perf_counter()
    for i in range(0, len(crops), 32):
        logits = sess.run(None, {name: preprocess_for(manifest, crops[i : i + 32])})[0]
        preds.append(logits[:, cols].argmax(1))
    return np.concatenate(preds), time.perf_counter() - t


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from model_store import ModelStore
    from service.pipeline.analyze import Pipeline
    from service.settings import get_settings
    from tests.helpers.tiny_models import publish_yunet

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fer-python", type=Path, default=REPO / ".venv-fer/bin/python")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="emotion-ferplus8@production,emotion-fer7@production")
    parser.add_argument("--figure", type=Path, help="write the photo where the two disagree most, side by side")
    args = parser.parse_args()
    console = Console(width=140)
    yunet = args.shared / "models/detectors/yunet/face_detection_yunet_2023mar.onnx"
    if not yunet.is_file():
        sys.exit(f"needs {yunet} (the ../shared folder)")
    if not args.fer_python.exists():
        sys.exit(f"needs the peer's environment {args.fer_python}: run `make bench-peer`")
    photos = sorted(p for p in (args.shared / "media/photos").iterdir() if p.suffix.lower() in {".jpg", ".png"})

    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(Path(tmp) / "store")  # plus the shipped layer: the default classifiers
        det = publish_yunet(store, yunet)
        refs = [r for r in args.models.split(",") if r.split("@")[0] in store.names()]
        settings = get_settings(model_root=Path(tmp) / "store", intra_op_threads=args.threads)
        pipe = Pipeline.load(settings, store=store, detector_ref=det.ref, classifier_ref=refs[0])
        import cv2

        cv2.setNumThreads(args.threads)
        console.print(f"[bold]photos[/]: {len(photos)} images, {args.repeat} timed runs each, after a warm-up")
        fer_photos = run_fer(args.fer_python, "photos", *map(str, photos), "--repeat", str(args.repeat))
        our_photos = ours_photos(pipe, photos, args.repeat)
        pipe.close()

        table = Table(title=f"detect + classify per photo (median ms); emoserve {det.ref} + {refs[0]}, "
                      f"fer {fer_photos['fer_version']} (Haar + mini-Xception)")  # fmt: skip
        for col in ("photo", "size", "emoserve faces", "fer faces", "emoserve ms", "fer ms", "speed-up"):
            table.add_column(col, justify="left" if col == "photo" else "right")
        tot_ours = tot_fer = 0.0
        for o, f in zip(our_photos, fer_photos["photos"], strict=True):
            mo, mf = statistics.median(o["times_s"]), statistics.median(f["times_s"])
            tot_ours, tot_fer = tot_ours + mo, tot_fer + mf
            img = cv2.imread(o["path"])
            assert img is not None
            table.add_row(Path(o["path"]).name, f"{img.shape[1]}x{img.shape[0]}", str(o["faces"]), str(f["faces"]),
                          f"{mo * 1000:.1f}", f"{mf * 1000:.1f}", f"{mf / mo:.2f}x")  # fmt: skip
        table.add_row("all (images/s)", "", str(sum(o["faces"] for o in our_photos)),
                      str(sum(f["faces"] for f in fer_photos["photos"])), f"{len(photos) / tot_ours:.1f}/s",
                      f"{len(photos) / tot_fer:.1f}/s", f"{tot_fer / tot_ours:.2f}x", style="bold")  # fmt: skip
        console.print(table)
        if args.figure:
            worst = max(
                range(len(photos)), key=lambda i: abs(our_photos[i]["faces"] - fer_photos["photos"][i]["faces"])
            )
            side_by_side(photos[worst], our_photos[worst], fer_photos["photos"][worst], args.figure)
            console.print(f"figure: {args.figure} ({photos[worst].name})")

        crops, y = load_val_crops(args.shared)
        console.print(f"[bold]FER2013 validation[/]: {len(crops)} crops")
        with tempfile.NamedTemporaryFile(suffix=".npy") as f:
            np.save(f.name, crops)
            fer_faces = run_fer(args.fer_python, "faces", f.name)
        ctable = Table(title="FER2013 validation (PublicTest), 7 classes: accuracy and classifier speed")
        for col in ("model", "accuracy", "macro F1", "faces/s", "speed vs fer", "accuracy vs fer"):
            ctable.add_column(col, justify="left" if col == "model" else "right")
        from sklearn.metrics import accuracy_score, f1_score

        fer_pred = np.array(fer_faces["predictions"])
        fer_acc = accuracy_score(y, fer_pred)
        fer_fps = len(crops) / fer_faces["seconds"]
        ctable.add_row(f"fer {fer_faces['fer_version']} mini-Xception (int8 TFLite)", f"{fer_acc:.4f}",
                       f"{f1_score(y, fer_pred, average='macro'):.4f}", f"{fer_fps:.0f}", "1.00x", "+0.0")  # fmt: skip
        for ref in refs:
            resolved = store.get(ref)
            pred, secs = ours_faces(resolved.model_path, resolved.manifest, crops, args.threads)
            acc = accuracy_score(y, pred)
            fps = len(crops) / secs
            ctable.add_row(f"emoserve {resolved.ref} ({len(resolved.manifest.labels or [])} classes)", f"{acc:.4f}",
                           f"{f1_score(y, pred, average='macro'):.4f}", f"{fps:.0f}", f"{fps / fer_fps:.2f}x",
                           f"{(acc - fer_acc) * 100:+.1f}")  # fmt: skip
        console.print(ctable)


if __name__ == "__main__":
    main()
