"""The Python SDK (clients/python/emoserve_client) against a real server: sync and async."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from emoserve_client import AnalysisResult, AsyncClient, Client, EmoserveAPIError, StreamClosed, StreamResult
from emoserve_client.models import StreamError

from tests.api_server import Server, run_server
from tests.helpers.tiny_models import publish_test_models, tiny_models_env


def image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(140, 220, (240, 320, 3)).astype(np.uint8), (0, 0), 3)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = publish_test_models(tmp_path_factory.mktemp("client-models"))
    env = tiny_models_env(root, EMOSERVE_WS_MAX_FRAME_BYTES="100000")
    with run_server(env, tmp_path_factory.mktemp("client-logs")) as s:
        yield s


def test_sync_client(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "face.png"
    cv2.imwrite(str(path), image(1))
    with Client(server.url) as c:
        for source in (path, path.read_bytes(), image(1)):
            result = c.analyze(source, max_faces=2)
            assert isinstance(result, AnalysisResult) and len(result.faces) == 1
        batch = c.analyze_batch([image(2), b"garbage", path])
        assert isinstance(batch[0], AnalysisResult) and isinstance(batch[2], AnalysisResult)
        assert isinstance(batch[1], EmoserveAPIError) and batch[1].code == "invalid_image"
        jpeg = c.annotate(image(3))
        decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), 1)
        assert jpeg[:2] == b"\xff\xd8" and decoded is not None and decoded.shape == (240, 320, 3)
        with pytest.raises(EmoserveAPIError) as info:
            c.analyze(b"not an image")
        assert info.value.status == 400 and info.value.code == "invalid_image"
        errors: list[StreamError] = []
        # The bad frame goes last: the newest frame is never dropped, so its error always comes back.
        # Any of frames 1-7 may be superseded on a busy machine; the error then reports them as dropped.
        frames = [image(i) for i in range(7)] + [b"bad frame"]
        results = list(c.stream(frames, fps=10, smoothing=0.5, on_error=errors.append))
    assert results and all(isinstance(r, StreamResult) for r in results)
    assert {f.track_id for r in results for f in r.faces} == {1}
    assert [e.frame_id for e in errors] == [7] and errors[0].code == "invalid_image"
    dropped = sum(r.dropped_since_last for r in results) + errors[0].dropped_since_last
    assert len(results) + dropped + len(errors) == 8


def test_async_client(server: Server) -> None:
    async def go() -> tuple[AnalysisResult, list[AnalysisResult | EmoserveAPIError], bytes, list[StreamResult]]:
        async with AsyncClient(server.url) as c:
            one = await c.analyze(image(4))
            batch = await c.analyze_batch([image(5), image(6)])
            jpeg = await c.annotate(image(7))

            async def frames():  # an async source works as well as a list
                for i in range(10):
                    yield image(i)

            results = [r async for r in c.stream(frames(), track=False)]
            return one, batch, jpeg, results

    one, batch, jpeg, results = asyncio.run(go())
    assert len(one.faces) == 1 and one.faces[0].emotion.label
    assert all(isinstance(r, AnalysisResult) for r in batch)
    assert jpeg[:2] == b"\xff\xd8"
    assert results[-1].frame_id == 9
    assert all(f.track_id is None for r in results for f in r.faces)
    assert len(results) + sum(r.dropped_since_last for r in results) == 10


def test_stream_closed_by_the_server_raises(server: Server) -> None:
    big = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)  # noise: a large JPEG

    async def go() -> None:
        async with AsyncClient(server.url) as c:
            async for _ in c.stream([image(0), big, image(1)]):
                pass

    with pytest.raises(StreamClosed) as info:
        asyncio.run(go())
    assert info.value.code == 1009


def test_cli_stream_writes_video_and_csv(server: Server, tmp_path: Path) -> None:
    """`emoserve stream VIDEO --max --out --csv` against the real server."""
    import csv
    import subprocess
    import sys

    video = tmp_path / "in.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"mp4v"), 30, (320, 240))
    for i in range(30):
        writer.write(image(i))
    writer.release()
    out, table = tmp_path / "annotated.mp4", tmp_path / "emotions.csv"
    cmd = [sys.executable, "-m", "emoserve_cli", "stream", str(video), "--url", server.url, "--max"]
    proc = subprocess.run([*cmd, "--out", str(out), "--csv", str(table)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "p95" in proc.stderr and "dropped" in proc.stderr
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 30  # every source frame, annotated with the latest result
    cap.release()
    rows = list(csv.DictReader(table.open()))
    assert rows and {"frame", "ts", "track_id", "x1", "label", "confidence", "happy"} <= set(rows[0])
    assert {r["track_id"] for r in rows} == {"1"}
    assert rows[-1]["frame"] == "29"


def test_sizing_downscales_arrays_and_maps_results_back() -> None:
    """`hello` sets the analysis size; arrays above it are sent smaller, bytes as they are; a result's
    boxes, landmarks and heat-map affine come back in the frame's own pixels."""
    from emoserve_client.streaming import Sizing

    sizing = Sizing(None, quality=80)
    hello = json.dumps(
        {
            "type": "hello",
            "analysis_size": 160,
            "detect_size": 160,
            "max_frame_bytes": 1000,
            "max_fps": 0,
            "max_faces": 8,
        }
    )
    assert sizing.hello(hello) and sizing.max_side == 160
    assert not Sizing(None, 80).hello('{"type": "pong"}')
    sent = cv2.imdecode(np.frombuffer(sizing.encode(0, image(0)), np.uint8), cv2.IMREAD_COLOR)
    assert sent is not None and sent.shape == (120, 160, 3)  # 320x240 -> longest side 160
    raw = b"\x89PNG-not-resized"
    assert sizing.encode(1, raw) == raw
    face = {
        "track_id": 1, "box": {"x1": 40.0, "y1": 30.0, "x2": 120.0, "y2": 90.0}, "score": 0.9,
        "landmarks": [[60.0, 50.0]] * 5,
        "emotion": {"label": "happy", "confidence": 0.9, "scores": {"happy": 0.9}, "smoothed_scores": {"happy": 0.9}},
        "explanation": {"label": "happy", "grid": [[1.0]], "affine": [[2.0, 0.0, 40.0], [0.0, 2.0, 30.0]]},
    }  # fmt: skip
    result = StreamResult.model_validate(
        {"frame_id": 0, "ts": 0.0, "latency_ms": 1.0, "faces": [face], "dropped_since_last": 0}
    )
    back = sizing.restore(result).faces[0]
    assert (back.box.x1, back.box.y1, back.box.x2, back.box.y2) == (80.0, 60.0, 240.0, 180.0)
    assert back.landmarks == [[120.0, 100.0]] * 5
    assert back.explanation is not None and back.explanation.affine == [[4.0, 0.0, 80.0], [0.0, 4.0, 60.0]]
    assert sizing.restore(result.model_copy(update={"frame_id": 1})).faces[0].box == result.faces[0].box
    # a newer server's message types and fields are skipped, not errors
    from emoserve_client.streaming import _handle

    assert _handle('{"type": "future", "x": 1}', None, 5, sizing) == (None, 5)
    extra = result.model_dump(mode="json") | {"new_field": 1}
    assert _handle(json.dumps(extra), None, -1, sizing)[1] == 0


@pytest.mark.parametrize("max_side", [None, 0])
def test_stream_results_are_in_the_frames_pixels(tmp_path: Path, max_side: int | None) -> None:
    """Against a server analysing at 160 px: 320x240 arrays go downscaled (None) or whole (0); either way the
    test detector's face, in the middle of what it saw, comes back in the middle of the 320x240 frame."""
    root = publish_test_models(tmp_path / "models")
    with (
        run_server(
            tiny_models_env(root, EMOSERVE_DETECTOR_MAX_SIDE="160", EMOSERVE_DECODE_MIN_SIDE="160"), tmp_path
        ) as s,
        Client(s.url) as c,
    ):
        results = list(c.stream([image(i) for i in range(3)], max_side=max_side, reuse=False))
    assert results
    for r in results:
        b = r.faces[0].box
        assert abs((b.x1 + b.x2) / 2 - 160) < 8 and abs((b.y1 + b.y2) / 2 - 120) < 8, b
        assert b.x2 - b.x1 > 40  # a face of the 320x240 frame, not of the 160x120 one sent
