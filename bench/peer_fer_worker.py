"""Runs the `fer` package (the peer) inside its own virtual environment; driven by bench/bench_peer.py.

    .venv-fer/bin/python bench/peer_fer_worker.py photos PATH... --repeat N    # detect + classify
    .venv-fer/bin/python bench/peer_fer_worker.py faces FACES.npy              # classify 48x48 crops

Prints one JSON object on stdout. Only the standard library, numpy, OpenCV and fer are imported here:
this file must not import emoserve (the peer's environment does not have it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["photos", "faces"])
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    import cv2
    import numpy as np
    from fer import __version__
    from fer.fer import FER

    # its defaults: OpenCV Haar cascade, the quantised mini-Xception (TFLite); for given face crops no
    # margin, so its classifier sees exactly the 48x48 crop it was trained on
    detector = FER() if args.mode == "photos" else FER(offsets=(0, 0))
    out: dict[str, object] = {"fer_version": __version__}
    if args.mode == "photos":
        results = []
        for path in args.paths:
            img = cv2.imread(path)
            detector.detect_emotions(img)  # warm-up
            times, found = [], []
            for _ in range(args.repeat):
                t = time.perf_counter()
                found = detector.detect_emotions(img)
                times.append(time.perf_counter() - t)
            boxes = [[int(v) for v in f["box"]] for f in found]  # x, y, w, h
            labels = [max(f["emotions"], key=f["emotions"].get) for f in found]
            results.append({"path": path, "faces": len(found), "times_s": times, "boxes": boxes, "labels": labels})
        out["photos"] = results
    else:
        crops = np.load(args.paths[0])  # uint8 N x 48 x 48
        labels = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
        n = len(crops)
        box = [(0, 0, crops.shape[2], crops.shape[1])]  # the crop is the face: skip detection
        preds = []
        t = time.perf_counter()
        for crop in crops:
            bgr = cv2.cvtColor(crop, cv2.COLOR_GRAY2BGR)
            emo = detector.detect_emotions(bgr, face_rectangles=box)[0]["emotions"]
            preds.append(labels.index(max(labels, key=lambda k: emo[k])))
        out.update(faces=n, seconds=time.perf_counter() - t, predictions=preds)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
