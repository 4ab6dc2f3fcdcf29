"""REST benchmark (not a test): requests/s and p50/p95/p99 of `POST /v1/analyze`.

    .venv/bin/python bench/bench_http.py [--requests 300] [--shared ../shared]

Starts the real service (`emoserve serve`) with 1 and then 2 workers on a loopback port, YuNet
and a generated ~1M-parameter classifier, the result cache off (every request runs the
pipeline), and sends a 640x480 one-face JPEG (obama.jpg) at concurrency 1, 4 and 16 from an
asyncio + httpx load generator in this process. The baseline ratio compares each row with
1 worker at concurrency 1 in the same run. Targets on 2 cores: p50 <= 15 ms at concurrency 1,
>= 80 requests/s at the best concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import httpx
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model_store import ModelStore  # noqa: E402
from tests.api_server import run_server  # noqa: E402
from tests.helpers.tiny_models import classifier_draft, conv_classifier_onnx, publish_yunet  # noqa: E402


def one_face_jpeg(shared: Path) -> bytes:
    img = cv2.imread(str(shared / "media" / "photos" / "obama.jpg"))
    if img is None:
        raise SystemExit(f"cannot read obama.jpg under {shared}")
    h, w = img.shape[:2]
    scale = max(640 / w, 480 / h)
    img = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    y0, x0 = (img.shape[0] - 480) // 2, (img.shape[1] - 640) // 2
    return bytes(cv2.imencode(".jpg", img[y0 : y0 + 480, x0 : x0 + 640], [cv2.IMWRITE_JPEG_QUALITY, 90])[1])


async def load(url: str, body: bytes, concurrency: int, total: int) -> tuple[list[float], float, int]:
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors
            while not queue.empty():
                queue.get_nowait()
                t0 = time.perf_counter()
                r = await client.post("/v1/analyze", content=body, headers={"content-type": "image/jpeg"})
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200 or len(r.json()["faces"]) != 1:
                    errors += 1

        for _ in range(3):  # warm-up
            await client.post("/v1/analyze", content=body, headers={"content-type": "image/jpeg"})
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return latencies, wall, errors


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) > 1 else values[0] * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--classifier", default="emotion-ferplus8@production", help="falls back to a generated 1M model")
    args = ap.parse_args()
    body = one_face_jpeg(args.shared)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store = ModelStore(work / "root", shipped=None)
        publish_yunet(store, args.shared / "models/detectors/yunet/face_detection_yunet_2023mar.onnx")
        onnx = conv_classifier_onnx(work / "clf.onnx")
        store.publish(classifier_draft("bench-emotion"), {"model.onnx": onnx}, alias="production")
        env = {
            "EMOSERVE_MODEL_ROOT": str(work / "root"),
            "EMOSERVE_CLASSIFIER": "bench-emotion@production",
            "EMOSERVE_CACHE_TTL_S": "0",
            "EMOSERVE_LOG_LEVEL": "WARNING",
        }
        rows = []
        baseline = None
        for workers in (1, 2):
            with run_server(env, work, workers=workers) as server:
                for concurrency in (1, 4, 16):
                    lat, wall, errors = asyncio.run(load(server.url, body, concurrency, args.requests))
                    rps = len(lat) / wall
                    baseline = baseline or rps
                    rows.append(
                        (workers, concurrency, rps, pct(lat, 50), pct(lat, 95), pct(lat, 99), errors, rps / baseline)
                    )
    table = Table(title="POST /v1/analyze, 640x480 one-face JPEG, YuNet + classifier, cache off")
    for col in ("workers", "concurrency", "requests/s", "p50 ms", "p95 ms", "p99 ms", "errors", "x baseline"):
        table.add_column(col, justify="right")
    for w, c, rps, p50, p95, p99, errors, ratio in rows:
        table.add_row(
            str(w), str(c), f"{rps:.1f}", f"{p50:.1f}", f"{p95:.1f}", f"{p99:.1f}", str(errors), f"{ratio:.2f}"
        )
    Console().print(table)


if __name__ == "__main__":
    main()
