"""The browser demo in a real headless Chromium: a fake webcam (a .y4m file) -> the page -> WS /v1/stream.

Needs Debian's /usr/bin/chromium (`apt-get install -y chromium chromium-driver`) and the `playwright`
package (dev extra; it drives the system Chromium, no browser download).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.api_server import Server, run_server
from tests.conftest import SHARED
from tests.helpers.tiny_models import publish_test_models, tiny_models_env

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"


def write_y4m(frames: list[np.ndarray], path: Path, fps: int = 30) -> Path:
    """Raw YUV4MPEG2 (4:2:0): a one-line header, then `FRAME\\n` + the I420 planes per frame."""
    h, w = frames[0].shape[:2]
    with open(path, "wb") as fh:
        fh.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for bgr in frames:
            fh.write(b"FRAME\n")
            fh.write(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420).tobytes())
    return path


def source_frames(n: int = 60) -> list[np.ndarray]:
    """The first `n` frames of woman2.mp4 (from ../shared) or, without it, synthetic bright frames."""
    video = SHARED / "media" / "videos" / "woman2.mp4"
    frames: list[np.ndarray] = []
    if video.exists():
        cap = cv2.VideoCapture(str(video))
        while len(frames) < n:
            ok, img = cap.read()
            if not ok:
                break
            frames.append(img[: img.shape[0] // 2 * 2, : img.shape[1] // 2 * 2])
        cap.release()
    if not frames:
        rng = np.random.default_rng(0)
        base = cv2.GaussianBlur(rng.integers(120, 220, (336, 596, 3)).astype(np.uint8), (0, 0), 4)
        frames = [np.roll(base, 2 * i, axis=1) for i in range(n)]
    return frames


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # an analysis size below the video's, so that the page downscales its frames and maps the results back
    env = tiny_models_env(
        publish_test_models(tmp_path_factory.mktemp("browser-models")),
        EMOSERVE_DETECTOR_MAX_SIDE="320",
        EMOSERVE_DECODE_MIN_SIDE="320",
    )
    with run_server(env, tmp_path_factory.mktemp("browser-logs")) as s:
        yield s


def test_demo_page_streams_the_webcam_and_draws_results(server: Server, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("needs /usr/bin/chromium: apt-get install -y chromium chromium-driver")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (dev extra)")
    y4m = write_y4m(source_frames(), tmp_path / "webcam.y4m")
    args = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={y4m}",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=args
        )
        try:
            page = context.new_page()
            console: list[str] = []
            page.on("console", lambda m: console.append(m.text))
            page.goto(server.url + "/")
            page.wait_for_function("window.emoserve && window.emoserve.results >= 10", timeout=30_000)
            page.wait_for_function("window.emoserve.drawn.length >= 1", timeout=10_000)
            time.sleep(0.3)  # a few more animation frames with the boxes drawn
            state: dict[str, Any] = page.evaluate(
                "() => ({status: window.emoserve.status, fps: window.emoserve.fps,"
                " latency: window.emoserve.latencyMs, drawn: window.emoserve.drawn,"
                " last: window.emoserve.lastResult, stats: document.getElementById('fps').textContent,"
                " analysisSize: window.emoserve.analysisSize, width: document.getElementById('video').videoWidth,"
                " height: document.getElementById('video').videoHeight,"
                " faces: document.getElementById('faces').textContent})"
            )
            page.screenshot(path=str(ARTIFACTS / "browser-demo.png"))
            drawn = state["drawn"][0]
            b = drawn["box"]
            # the left edge of the box, half-way down, must have the stroke colour on the canvas
            pixel = page.evaluate(
                "([x, y]) => Array.from(document.getElementById('view').getContext('2d')"
                ".getImageData(x, y, 1, 1).data)",
                [round(b["x1"]), round((b["y1"] + b["y2"]) / 2)],
            )
        finally:
            context.close()
    assert state["status"] == "streaming", (state, console)
    assert state["last"]["type"] == "result" and state["last"]["faces"], state
    assert state["last"]["faces"][0]["track_id"] == 1
    assert drawn["label"] in state["faces"] and drawn["label"] in drawn["caption"]
    assert state["latency"] is not None and state["fps"] >= 1
    colour = [int(drawn["colour"][i : i + 2], 16) for i in (1, 3, 5)]
    assert all(abs(p - c) <= 40 for p, c in zip(pixel[:3], colour, strict=True)), (pixel, colour)
    assert (ARTIFACTS / "browser-demo.png").stat().st_size > 1000
    # frames went at the server's analysis size (320), the box came back in the video's pixels: the test
    # detector's face sits in the middle of the frame it saw
    assert state["analysisSize"] == 320 and state["width"] > 320
    assert abs((b["x1"] + b["x2"]) / 2 - state["width"] / 2) < 0.1 * state["width"], (b, state["width"])
    assert abs((b["y1"] + b["y2"]) / 2 - state["height"] / 2) < 0.1 * state["height"], (b, state["height"])


def test_api_docs_render_with_the_network_cut(server: Server, tmp_path: Path) -> None:
    """/docs in a real Chromium that may reach only the service: Swagger UI renders the operations."""
    if not CHROMIUM.exists():
        pytest.skip("needs /usr/bin/chromium: apt-get install -y chromium chromium-driver")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (dev extra)")
    blocked: list[str] = []

    def only_the_service(route: Any) -> None:
        if route.request.url.startswith(server.url):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    with sync_api.sync_playwright() as pw:
        flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=flags)
        try:
            page = browser.new_page()
            page.route("**/*", only_the_service)
            page.goto(server.url + "/docs")
            page.wait_for_selector(".opblock-summary-path", timeout=20_000)
            paths = page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.textContent)")
        finally:
            browser.close()
    assert "/v1/analyze" in " ".join(paths) and blocked == []
