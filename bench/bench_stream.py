"""Stream benchmark (not a test): lockstep and paced streams, with reuse across frames on and off.

    .venv/bin/python bench/bench_stream.py [--url http://127.0.0.1:8000] [--seconds 8] [--reuse both]

Without --url it starts a server itself (YuNet from ../shared when present, else the test detector;
the shipped emotion-ferplus8, else the tiny test classifier).
- **Lockstep:** 1, 2 and 4 concurrent 640x480 streams; each sends its next frame when the result is
  back, so fps is what the server sustains and latency is the round trip.
- **Paced** (`--paced`, needs ../shared): woman2.mp4 at 30 fps and walkway_1080p.mp4 at 25 fps sent at
  their own pace, as a camera does: frames processed, dropped, errors (they must add up to the
  frames sent), round-trip p50/p95, and the track ids given out, against a reference run that
  analyses every frame (lockstep, reuse off, full frames); each clip as recorded and downscaled to
  the server's analysis size, as the SDK sends it after the server's `hello` (`--send-sizes`).
Each table row is measured with reuse on and off (`{"type": "config", "reuse": ...}`) against the
same server in the same run; the ratio is the comparison.
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


async def one_stream(url: str, frames: list[bytes], seconds: float, reuse: bool = True) -> tuple[int, list[float]]:
    from websockets.asyncio.client import connect

    latencies: list[float] = []
    async with connect(url, compression=None) as ws:
        await ws.send(json.dumps({"type": "config", "smoothing": 0.6, "fps_limit": 0, "reuse": reuse}))
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


async def run_level(
    url: str, frames: list[bytes], streams: int, seconds: float, reuse: bool
) -> tuple[float, float, float]:
    out = await asyncio.gather(*(one_stream(url, frames, seconds, reuse) for _ in range(streams)))
    lat = np.concatenate([np.asarray(lats) for _, lats in out])
    per_stream_fps = float(np.mean([n / seconds for n, _ in out]))
    return per_stream_fps, float(np.percentile(lat, 50)), float(np.percentile(lat, 95))


CLIPS = {"woman2": ("woman2.mp4", 30.0), "walkway": ("multiface/walkway_1080p.mp4", 25.0)}


def clip_frames(name: str, max_side: int = 0) -> list[bytes]:
    """Every frame of a shared clip, JPEG quality 80: at its own size, or downscaled to `max_side` as the SDK
    does for a server whose `hello` says that analysis size."""
    cap = cv2.VideoCapture(str(REPO.parent / "shared" / "media" / "videos" / CLIPS[name][0]))
    out: list[bytes] = []
    while True:
        ok, img = cap.read()
        if not ok:
            return out
        if max_side and max(img.shape[:2]) > max_side:
            k = max_side / max(img.shape[:2])
            img = cv2.resize(img, (round(img.shape[1] * k), round(img.shape[0] * k)), interpolation=cv2.INTER_AREA)
        out.append(bytes(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])[1]))


async def paced(url: str, frames: list[bytes], fps: float, reuse: bool, lockstep: bool = False) -> dict[str, float]:
    """Send `frames` at `fps` (or in lockstep) and account for every one of them."""
    from websockets.asyncio.client import connect

    sent: dict[int, float] = {}
    rtt: list[float] = []
    counts = {"processed": 0, "dropped": 0, "errors": 0}
    tracks: set[int] = set()
    async with connect(url, compression=None, max_size=None) as ws:
        await ws.send(json.dumps({"type": "config", "fps_limit": 0, "reuse": reuse}))
        done = asyncio.Event()

        async def reader() -> None:
            while True:
                msg = json.loads(await ws.recv())
                if msg["type"] not in ("result", "error"):
                    continue
                counts["processed" if msg["type"] == "result" else "errors"] += 1
                counts["dropped"] += msg.get("dropped_since_last", 0)
                rtt.append((time.perf_counter() - sent[msg["frame_id"]]) * 1000)
                tracks.update(f["track_id"] for f in msg.get("faces", []) if f["track_id"] is not None)
                done.set()
                if msg["frame_id"] == len(frames) - 1:
                    return

        task = asyncio.create_task(reader())
        start = time.perf_counter()
        for i, data in enumerate(frames):
            if lockstep and i > 0:  # the previous frame's answer is back
                await done.wait()
                done.clear()
            elif not lockstep:
                await asyncio.sleep(max(0.0, start + i / fps - time.perf_counter()))
            sent[i] = time.perf_counter()
            await ws.send(json.dumps({"type": "frame", "id": i}))
            await ws.send(data)
        await asyncio.wait_for(task, 120)
        elapsed = time.perf_counter() - start
    total = counts["processed"] + counts["dropped"] + counts["errors"]
    return {**counts, "sent": len(frames), "accounted": float(total == len(frames)),
            "fps": counts["processed"] / elapsed, "p50": float(np.percentile(rtt, 50)),
            "p95": float(np.percentile(rtt, 95)), "tracks": len(tracks)}  # fmt: skip


def paced_tables(url: str, modes: list[bool], sizes: list[int]) -> None:
    print(f"{'clip':>8} | {'sent px':>7} | {'reuse':>5} | {'sent':>4} | {'processed':>9} | {'dropped':>7} | "
          f"{'errors':>6} | {'exact':>5} | {'fps':>5} | {'p50 ms':>7} | {'p95 ms':>7} | {'track ids':>9} | "
          f"{'ref ids':>7}")  # fmt: skip
    print("-" * 122)
    for name, (_, fps) in CLIPS.items():
        reference = asyncio.run(paced(url, clip_frames(name), fps, reuse=False, lockstep=True))
        for size in sizes:
            frames = clip_frames(name, size)
            for reuse in modes:
                r = asyncio.run(paced(url, frames, fps, reuse))
                print(f"{name:>8} | {size or 'full':>7} | {'on' if reuse else 'off':>5} | {r['sent']:>4} | "
                      f"{r['processed']:>9} | {r['dropped']:>7} | {r['errors']:>6} | "
                      f"{'yes' if r['accounted'] else 'NO':>5} | {r['fps']:>5.1f} | {r['p50']:>7.1f} | "
                      f"{r['p95']:>7.1f} | {r['tracks']:>9} | {reference['tracks']:>7}")  # fmt: skip


def start_server(
    stack: ExitStack, classifier: str = "emotion-ferplus8@production", extra: dict[str, str] | None = None
) -> str:
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
        **(extra or {}),
    }
    server = stack.enter_context(run_server(env, work))
    print(f"server: {detector} + {classifier}" + "".join(f", {k}={v}" for k, v in (extra or {}).items()))
    return server.url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running service (default: start one)")
    parser.add_argument("--seconds", type=float, default=8.0, help="per concurrency level")
    parser.add_argument("--streams", default="1,2,4")
    parser.add_argument(
        "--classifier", default="emotion-ferplus8@production", help="e.g. emotion-ferplus8-fast@production"
    )
    parser.add_argument("--reuse", choices=["on", "off", "both"], default="both", help="reuse across frames")
    parser.add_argument("--set", action="append", default=[], metavar="EMOSERVE_NAME=VALUE",
                        help="a setting of the server started here (repeat): EMOSERVE_WS_REUSE_CHANGE=6")  # fmt: skip
    parser.add_argument("--paced", action="store_true", help="also the paced runs of the shared clips")
    parser.add_argument(
        "--send-sizes", default="0,640", help="paced frames' longest side: 0 = as recorded, 640 = the hello's size"
    )
    args = parser.parse_args()
    modes = {"on": [True], "off": [False], "both": [False, True]}[args.reuse]
    frames = make_frames()
    with ExitStack() as stack:
        extra = dict(item.split("=", 1) for item in args.set)
        base = args.url or start_server(stack, args.classifier, extra)
        url = base.replace("http", "ws", 1).rstrip("/") + "/v1/stream"
        asyncio.run(one_stream(url, frames, 1.0))  # warm-up
        print(f"{'streams':>7} | {'reuse':>5} | {'fps/stream':>10} | {'total fps':>9} | {'p50 ms':>7} | {'p95 ms':>7}")
        print("-" * 61)
        for n in (int(s) for s in args.streams.split(",")):
            for reuse in modes:
                fps, p50, p95 = asyncio.run(run_level(url, frames, n, args.seconds, reuse))
                on = "on" if reuse else "off"
                print(f"{n:>7} | {on:>5} | {fps:>10.1f} | {fps * n:>9.1f} | {p50:>7.1f} | {p95:>7.1f}")
        if args.paced:
            paced_tables(url, modes, [int(s) for s in args.send_sizes.split(",")])


if __name__ == "__main__":
    main()
