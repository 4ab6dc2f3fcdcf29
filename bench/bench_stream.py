"""Stream benchmark (not a test): frames/s and latency p50/p95 for 1, 2 and 4 concurrent 640x480 streams.

    .venv/bin/python bench/bench_stream.py --url http://127.0.0.1:8000 --seconds 10

Without --url it starts a server itself (YuNet from ../shared when present, else the test detector;
the shipped emotion-ferplus8, else the tiny test classifier). Each stream sends frames in lockstep
(next frame when the result is back), so fps is what the server sustains and latency is the round
trip. Targets on 2 CPU cores: one stream >= 30 fps with p95 <= 50 ms; four streams >= 15 fps each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_frames(n: int = 30) -> list[bytes]:
    video = REPO.parent / "shared" / "media" / "videos" / "woman2.mp4"
    frames: list[bytes] = []
    if video.exists():
        cap = cv2.VideoCapture(str(video))
        while len(frames) < n:
            ok, img = cap.read()
            if not ok:
                break
            frames.append(bytes(cv2.imencode(".jpg", cv2.resize(img, (640, 480)), [cv2.IMWRITE_JPEG_QUALITY, 80])[1]))
    rng = np.random.default_rng(0)
    while len(frames) < n:
        img = cv2.GaussianBlur(rng.integers(100, 220, (480, 640, 3)).astype(np.uint8), (0, 0), 4)
        frames.append(bytes(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])[1]))
    return frames


async def one_stream(url: str, frames: list[bytes], seconds: float) -> tuple[int, list[float]]:
    from websockets.asyncio.client import connect

    latencies: list[float] = []
    async with connect(url, compression=None) as ws:
        await ws.send(json.dumps({"type": "config", "smoothing": 0.6, "fps_limit": 0}))
        end = time.perf_counter() + seconds
        i = 0
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            await ws.send(frames[i % len(frames)])
            while json.loads(await ws.recv())["type"] != "result":
                pass
            latencies.append((time.perf_counter() - t0) * 1000)
            i += 1
    return i, latencies


async def run_level(url: str, frames: list[bytes], streams: int, seconds: float) -> tuple[float, float, float]:
    out = await asyncio.gather(*(one_stream(url, frames, seconds) for _ in range(streams)))
    lat = np.concatenate([np.asarray(lats) for _, lats in out])
    per_stream_fps = float(np.mean([n / seconds for n, _ in out]))
    return per_stream_fps, float(np.percentile(lat, 50)), float(np.percentile(lat, 95))


def start_server(stack: ExitStack, classifier: str = "emotion-ferplus8@production") -> str:
    from model_store import ModelStore
    from tests.api_server import run_server
    from tests.helpers.tiny_models import publish_test_detector, publish_tiny_classifier, publish_yunet

    work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
    store = ModelStore(work / "root")  # with the shipped layer: the default classifiers
    yunet = REPO.parent / "shared" / "models" / "detectors" / "yunet" / "face_detection_yunet_2023mar.onnx"
    if yunet.exists():
        publish_yunet(store, yunet)
        detector = "yunet-2023mar@production"
    else:
        publish_test_detector(store, work)
        detector = "center-det@production"
    if classifier.split("@")[0] not in store.names():  # no shipped model: the tiny test classifier
        publish_tiny_classifier(store, work)
        classifier = "tiny-emotion@production"
    env = {
        "EMOSERVE_MODEL_ROOT": str(work / "root"),
        "EMOSERVE_DETECTOR": detector,
        "EMOSERVE_CLASSIFIER": classifier,
        "EMOSERVE_WS_MAX_FPS": "0",
        "EMOSERVE_LOG_LEVEL": "WARNING",
    }
    server = stack.enter_context(run_server(env, work))
    print(f"server: {detector} + {classifier}")
    return server.url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running service (default: start one)")
    parser.add_argument("--seconds", type=float, default=8.0, help="per concurrency level")
    parser.add_argument("--streams", default="1,2,4")
    parser.add_argument(
        "--classifier", default="emotion-ferplus8@production", help="e.g. emotion-ferplus8-fast@production"
    )
    args = parser.parse_args()
    frames = make_frames()
    with ExitStack() as stack:
        base = args.url or start_server(stack, args.classifier)
        url = base.replace("http", "ws", 1).rstrip("/") + "/v1/stream"
        asyncio.run(one_stream(url, frames, 1.0))  # warm-up
        print(f"{'streams':>7} | {'fps/stream':>10} | {'total fps':>9} | {'p50 ms':>7} | {'p95 ms':>7}")
        print("-" * 53)
        for n in (int(s) for s in args.streams.split(",")):
            fps, p50, p95 = asyncio.run(run_level(url, frames, n, args.seconds))
            print(f"{n:>7} | {fps:>10.1f} | {fps * n:>9.1f} | {p50:>7.1f} | {p95:>7.1f}")


if __name__ == "__main__":
    main()
