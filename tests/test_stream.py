"""`WS /v1/stream` end to end: a real uvicorn process, real websockets, the test detector + tiny classifier."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from model_store import ModelStore
from service.pipeline.stream_schema import StreamConfig, StreamSettings
from service.settings import Settings
from tests.api_server import Server, run_server
from tests.helpers.tiny_models import publish_test_models, publish_tiny_classifier, tiny_models_env

RESULT_KEYS = {"type", "frame_id", "ts", "latency_ms", "faces", "dropped_since_last"}
FACE_KEYS = {
    "track_id",
    "box",
    "score",
    "landmarks",
    "emotion",
    "classified",
    "emotion_age",
}  # + explanation with `explain`
EMOTION_KEYS = {"label", "confidence", "scores", "smoothed_scores"}


def frame(seed: int = 0, size: tuple[int, int] = (320, 240), brightness: int = 180) -> bytes:
    """A bright noise JPEG (the test detector finds one face in the middle of bright images)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(brightness - 40, brightness + 40, (size[1], size[0], 3)).clip(0, 255).astype(np.uint8)
    img = np.asarray(cv2.GaussianBlur(img, (0, 0), 3), dtype=np.uint8)  # camera-like: compresses to a few tens of kB
    return bytes(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])[1])


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return publish_test_models(tmp_path_factory.mktemp("stream-models"))


def env(root: Path, **extra: str) -> dict[str, str]:
    # no clock in reuse decisions: a busy machine must not change which frames are classified
    return tiny_models_env(root, EMOSERVE_WS_MAX_FRAME_BYTES="200000", EMOSERVE_WS_RECLASSIFY_MS="60000", **extra)


@pytest.fixture(scope="module")
def server(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(env(model_root), tmp_path_factory.mktemp("stream-logs")) as s:
        yield s


def ws_url(server: Server, query: str = "") -> str:
    return server.url.replace("http://", "ws://") + "/v1/stream" + query


async def recv_json(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    """The next message other than the server's `hello` (tests/test_stream.py checks that one on its own)."""
    while (message := dict(json.loads(await asyncio.wait_for(ws.recv(), timeout))))["type"] == "hello":
        pass
    return message


def test_explain_without_maps_is_refused_once_at_config(server: Server) -> None:
    """The tiny classifier has no `cam` output: the config asking for maps gets one error and changes nothing."""

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        async with connect(ws_url(server), compression=None) as ws:
            await ws.send(json.dumps({"type": "config", "explain": True}))
            refused = await recv_json(ws)
            await ws.send(frame(0))
            return refused, await recv_json(ws)

    refused, answer = run(go())
    assert refused["type"] == "error" and refused["code"] == "explanation_unavailable" and refused["frame_id"] is None
    assert "tiny-emotion" in refused["message"]
    assert answer["type"] == "result" and "explanation" not in answer["faces"][0]  # the frame itself is fine


def test_hello_comes_first_with_the_analysis_size_and_limits(server: Server) -> None:
    async def go() -> dict[str, Any]:
        async with connect(ws_url(server), compression=None) as ws:
            return dict(json.loads(await asyncio.wait_for(ws.recv(), 10)))

    hello = run(go())
    assert hello == {
        "type": "hello", "analysis_size": 1280, "detect_size": 640, "max_frame_bytes": 200000, "max_fps": 60.0,
        "max_faces": 32,
    }  # fmt: skip


async def next_of(ws: ClientConnection, kind: str, timeout: float = 10.0) -> dict[str, Any]:
    while True:
        msg = await recv_json(ws, timeout)
        if msg["type"] == kind:
            return msg


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_results_carry_the_contract_fields(server: Server) -> None:
    async def go() -> list[dict[str, Any]]:
        async with connect(ws_url(server), compression=None) as ws:
            config = {"type": "config", "smoothing": 0.5, "track": True, "max_faces": 3, "reuse": False}
            await ws.send(json.dumps(config))  # reuse off: every frame classified, so the EMA moves
            await ws.send(json.dumps({"type": "ping"}))
            assert await recv_json(ws) == {"type": "pong"}
            out = []
            for i in range(5):
                await ws.send(json.dumps({"type": "frame", "id": f"f{i}", "ts": 1000.0 + i}))
                await ws.send(frame(i))
                out.append(await next_of(ws, "result"))
            return out

    results = run(go())
    assert [r["frame_id"] for r in results] == [f"f{i}" for i in range(5)]
    assert [r["ts"] for r in results] == [1000.0 + i for i in range(5)]
    for r in results:
        assert set(r) == RESULT_KEYS
        assert r["dropped_since_last"] == 0 and 0 < r["latency_ms"] < 5000
        assert len(r["faces"]) == 1
        face = r["faces"][0]
        assert set(face) == FACE_KEYS and set(face["emotion"]) == EMOTION_KEYS
        assert set(face["box"]) == {"x1", "y1", "x2", "y2"} and len(face["landmarks"]) == 5
        smoothed = face["emotion"]["smoothed_scores"]
        assert len(smoothed) == 7 and abs(sum(smoothed.values()) - 1) < 1e-3
        assert face["emotion"]["label"] == max(smoothed, key=smoothed.get)
    assert {r["faces"][0]["track_id"] for r in results} == {1}  # one stable track
    # smoothing: the EMA differs from the raw scores after the first frame
    last = results[-1]["faces"][0]["emotion"]
    assert last["smoothed_scores"] != pytest.approx(last["scores"], abs=1e-6)


@pytest.mark.parametrize("reuse", [True, False])
def test_reuse_says_what_each_emotion_rests_on(server: Server, reuse: bool) -> None:
    async def go() -> list[tuple[bool, int]]:
        async with connect(ws_url(server), compression=None) as ws:
            await ws.send(json.dumps({"type": "config", "reuse": reuse, "detect_every": 2, "reclassify_every": 3}))
            out = []
            for _ in range(5):  # the same frame, in lockstep
                await ws.send(frame(1))
                face = (await next_of(ws, "result"))["faces"][0]
                out.append((face["classified"], face["emotion_age"]))
            return out

    expected = [(True, 0), (False, 1), (False, 2), (True, 0), (False, 1)] if reuse else [(True, 0)] * 5
    assert run(go()) == expected


def test_a_stream_sets_its_own_reuse_change_and_classify_detected(server: Server) -> None:
    """`reuse_change` per stream: 0 makes every face count as changed (classified on every frame of the same
    image), the server's default reuses; `classify_detected` reaches the stream's policy."""

    async def go(config: dict[str, Any]) -> list[bool]:
        async with connect(ws_url(server), compression=None) as ws:
            await ws.send(json.dumps({"type": "config", "detect_every": 50, "reclassify_every": 50, **config}))
            seen = []
            for _ in range(4):
                await ws.send(frame(1))
                seen.append((await next_of(ws, "result"))["faces"][0]["classified"])
            return seen

    assert run(go({})) == [True, False, False, False]
    assert run(go({"reuse_change": 0, "classify_detected": True})) == [True] * 4
    policy = StreamSettings().merged(StreamConfig(reuse_change=6, classify_detected=True)).policy(Settings())
    assert (policy.change, policy.classify_detected) == (6.0, True)
    assert StreamSettings().policy(Settings()).classify_detected is Settings().ws_classify_detected
    mine = StreamSettings().merged(StreamConfig(confirm_changes=True)).policy(Settings(ws_follow_min_size=48))
    assert (mine.confirm_changes, mine.follow_min_size) == (True, 48.0)
    server_side = StreamSettings().policy(Settings(ws_confirm_changes=True))
    assert server_side.confirm_changes is True
    assert StreamSettings().merged(StreamConfig(confirm_changes=False)).policy(Settings(ws_confirm_changes=True)) \
        .confirm_changes is False  # fmt: skip


def test_track_false_gives_null_ids_and_raw_scores(server: Server) -> None:
    async def go() -> dict[str, Any]:
        async with connect(ws_url(server), compression=None) as ws:
            await ws.send(json.dumps({"type": "config", "track": False}))
            await ws.send(frame(1))
            return await next_of(ws, "result")

    face = run(go())["faces"][0]
    assert face["track_id"] is None
    assert face["emotion"]["smoothed_scores"] == pytest.approx(face["emotion"]["scores"], abs=1e-5)


def test_bad_frames_get_errors_and_the_stream_goes_on(server: Server) -> None:
    async def go() -> list[dict[str, Any]]:
        async with connect(ws_url(server), compression=None) as ws:
            await ws.send(json.dumps({"type": "frame", "id": 7}))
            await ws.send(b"this is not an image")
            first = await recv_json(ws)
            await ws.send("{not json")
            second = await recv_json(ws)
            await ws.send(json.dumps({"type": "config", "smoothing": 3}))
            third = await recv_json(ws)
            await ws.send(json.dumps({"type": "frame", "id": 8}))
            await ws.send(frame(2))
            fourth = await next_of(ws, "result")
            return [first, second, third, fourth]

    bad_frame, bad_json, bad_config, ok = run(go())
    assert bad_frame["type"] == "error" and bad_frame["code"] == "invalid_image" and bad_frame["frame_id"] == 7
    assert bad_json["type"] == "error" and bad_json["code"] == "invalid_options"
    assert bad_config["type"] == "error" and "smoothing" in bad_config["message"]
    assert ok["frame_id"] == 8 and len(ok["faces"]) == 1


def test_a_fast_sender_gets_drops_and_bounded_latency(server: Server) -> None:
    """200 frames at 200 fps: the server keeps the newest frame only, so it drops and stays current."""

    async def go() -> tuple[list[dict[str, Any]], float]:
        frames = [frame(i, (640, 480)) for i in range(8)]
        results: list[dict[str, Any]] = []
        async with connect(ws_url(server), compression=None) as ws:
            await ws.send(json.dumps({"type": "config", "fps_limit": 0}))

            async def reader() -> None:
                while True:
                    msg = await recv_json(ws, 20)
                    if msg["type"] == "result":
                        results.append(msg)
                        if msg["frame_id"] == 199:
                            return

            task = asyncio.create_task(reader())
            start = time.perf_counter()
            for i in range(200):
                await ws.send(json.dumps({"type": "frame", "id": i, "ts": time.time()}))
                await ws.send(frames[i % len(frames)])
                await asyncio.sleep(max(0.0, start + (i + 1) / 200 - time.perf_counter()))
            await asyncio.wait_for(task, 20)
            return results, time.perf_counter() - start

    results, elapsed = run(go())
    dropped = sum(r["dropped_since_last"] for r in results)
    assert dropped > 0, "a 200 fps sender must see drops"
    assert len(results) + dropped == 200  # every frame is either processed or reported dropped
    assert results[-1]["frame_id"] == 199  # the newest frame is never dropped
    latencies = sorted(r["latency_ms"] for r in results)
    assert latencies[int(0.95 * (len(latencies) - 1))] < 1000, latencies[-10:]
    assert elapsed < 15


def test_bursts_of_good_and_bad_frames_are_all_accounted_for(server: Server) -> None:
    """Results + dropped + errors == frames sent, whatever the timing: bursts with bad frames anywhere,
    the last one bad, sent as fast as the socket takes them while a second stream loads the server."""
    good = [frame(i, (640, 480)) for i in range(4)]
    bad = b"not an image"
    # a bad frame first, in the middle of bursts, twice in a row, and last
    plan = [bad] + [good[i % 4] for i in range(15)] + [bad, bad] + [good[i % 4] for i in range(20)] + [bad]

    async def stream(frames: list[bytes]) -> tuple[int, int, int]:
        results = dropped = errors = 0
        async with connect(ws_url(server), compression=None) as ws:
            for i, data in enumerate(frames):
                await ws.send(json.dumps({"type": "frame", "id": i}))
                await ws.send(data)
            while True:
                msg = await recv_json(ws, 30)
                if msg["type"] not in ("result", "error"):
                    continue
                results += msg["type"] == "result"
                errors += msg["type"] == "error"
                dropped += msg["dropped_since_last"]
                if msg["frame_id"] == len(frames) - 1:
                    return results, dropped, errors

    async def go() -> list[tuple[int, int, int]]:
        return list(await asyncio.gather(stream(plan), stream(list(reversed(plan)))))

    for _ in range(3):
        for (results, dropped, errors), sent in zip(run(go()), (plan, plan), strict=True):
            assert results + dropped + errors == len(sent), (results, dropped, errors)
            assert errors >= 1  # the last frame of the first stream is bad and never dropped


def test_oversize_frame_closes_with_1009(server: Server) -> None:
    async def go() -> tuple[dict[str, Any], int | None]:
        async with connect(ws_url(server), compression=None, max_size=None) as ws:
            await ws.send(json.dumps({"type": "frame", "id": 3}))
            await ws.send(b"\xff" * 300_000)  # over EMOSERVE_WS_MAX_FRAME_BYTES=200000
            error = await recv_json(ws)  # the frame is accounted for before the close
            with pytest.raises(ConnectionClosed) as info:
                await recv_json(ws)
            return error, info.value.rcvd.code if info.value.rcvd else None

    error, code = run(go())
    assert error["type"] == "error" and error["code"] == "image_too_large" and error["frame_id"] == 3
    assert error["dropped_since_last"] == 0
    assert code == 1009


def test_metrics_count_stream_frames(server: Server) -> None:
    text = server.client().get("/metrics").text
    assert "emoserve_ws_connections" in text
    assert 'emoserve_ws_frames_total{outcome="processed"}' in text
    assert 'emoserve_ws_frames_total{outcome="dropped"}' in text
    assert "emoserve_ws_frame_latency_seconds_bucket" in text


def test_stream_frames_show_in_stage_face_and_emotion_metrics(model_root: Path, tmp_path: Path) -> None:
    with run_server(env(model_root), tmp_path) as fresh:  # no REST request has reached this server

        async def go() -> None:
            async with connect(ws_url(fresh), compression=None) as ws:
                for i in range(3):
                    await ws.send(frame(i))
                    await next_of(ws, "result")

        run(go())
        text = fresh.client().get("/metrics").text
    assert 'emoserve_stage_duration_seconds_count{stage="detect"} 3.0' in text
    assert "emoserve_faces_per_image_count 3.0" in text
    emotions = [line for line in text.splitlines() if line.startswith("emoserve_emotions_total{")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in emotions) == 3


@pytest.fixture(scope="module")
def keyed_server(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(env(model_root, EMOSERVE_API_KEYS='["s3cret"]'), tmp_path_factory.mktemp("keyed-logs")) as s:
        yield s


@pytest.mark.parametrize("how", ["none", "wrong-query", "wrong-message", "frame-first"])
def test_auth_failure_closes_with_1008(keyed_server: Server, how: str) -> None:
    async def go() -> int | None:
        query = "?api_key=nope" if how == "wrong-query" else ""
        async with connect(ws_url(keyed_server, query), compression=None) as ws:
            if how == "wrong-message":
                await ws.send(json.dumps({"type": "auth", "api_key": "nope"}))
            elif how == "frame-first":
                await ws.send(frame(0))
            elif how == "none":
                await ws.send(json.dumps({"type": "ping"}))
            with pytest.raises(ConnectionClosed) as info:
                await recv_json(ws)
            return info.value.rcvd.code if info.value.rcvd else None

    assert run(go()) == 1008


@pytest.mark.parametrize("how", ["header", "message"])
def test_auth_success(keyed_server: Server, how: str) -> None:
    async def go() -> dict[str, Any]:
        headers = {"Authorization": "Bearer s3cret"} if how == "header" else {}
        async with connect(ws_url(keyed_server), additional_headers=headers, compression=None) as ws:
            if how == "message":
                await ws.send(json.dumps({"type": "auth", "api_key": "s3cret"}))
            await ws.send(frame(0))
            return await next_of(ws, "result")

    assert len(run(go())["faces"]) == 1


def test_a_key_in_the_url_is_refused_and_never_logged(keyed_server: Server) -> None:
    async def go() -> tuple[int | None, str]:
        async with connect(ws_url(keyed_server, "?api_key=s3cret"), compression=None) as ws:
            with pytest.raises(ConnectionClosed) as info:
                await recv_json(ws)
            rcvd = info.value.rcvd
            return (rcvd.code, rcvd.reason) if rcvd else (None, "")

    code, reason = run(go())
    assert code == 1008 and "URL" in reason
    time.sleep(0.2)
    assert "s3cret" not in keyed_server.logs() and "api_key=[redacted]" in keyed_server.logs()


@pytest.fixture(scope="module")
def guarded_server(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    extra = {"EMOSERVE_WS_MAX_STREAMS": "2", "EMOSERVE_WS_ALLOWED_ORIGINS": '["https://app.example"]'}
    with run_server(env(model_root, **extra), tmp_path_factory.mktemp("guarded-logs")) as s:
        yield s


def test_origins_outside_the_allowlist_are_refused(guarded_server: Server) -> None:
    async def go(origin: str | None) -> int | None:
        headers = {"Origin": origin} if origin else {}
        async with connect(ws_url(guarded_server), additional_headers=headers, compression=None) as ws:
            try:
                await ws.send(frame(0))
                await next_of(ws, "result")
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd else None
            return None

    assert run(go("http://evil.example")) == 1008
    assert run(go("https://app.example")) is None
    assert run(go(None)) is None  # not a browser: no Origin header


def test_streams_over_the_cap_close_with_1013_and_the_open_ones_go_on(guarded_server: Server) -> None:
    async def go() -> tuple[int | None, list[int]]:
        async with (
            connect(ws_url(guarded_server), compression=None) as a,
            connect(ws_url(guarded_server), compression=None) as b,
        ):
            for ws in (a, b):  # both are open and served
                await ws.send(frame(0))
                await next_of(ws, "result")
            async with connect(ws_url(guarded_server), compression=None) as c:
                with pytest.raises(ConnectionClosed) as info:
                    await recv_json(c)
                third = info.value.rcvd.code if info.value.rcvd else None
            served = []
            for ws in (a, b):
                await ws.send(frame(1))
                served.append(len((await next_of(ws, "result"))["faces"]))
            return third, served

    third, served = run(go())
    assert third == 1013 and served == [1, 1]


def test_sigterm_closes_open_streams_with_1001(model_root: Path, tmp_path: Path) -> None:
    with run_server(env(model_root), tmp_path) as srv:

        async def go() -> int | None:
            async with connect(ws_url(srv), compression=None) as ws:
                await ws.send(frame(0))
                await next_of(ws, "result")
                srv.proc.send_signal(signal.SIGTERM)
                with pytest.raises(ConnectionClosed) as info:
                    while True:  # keep streaming until the server goes away
                        await ws.send(frame(1))
                        await recv_json(ws)
                return info.value.rcvd.code if info.value.rcvd else None

        code = run(go())
        srv.proc.wait(timeout=90)  # a loaded machine: the shutdown grace (50 s) bounds it, not this test
        assert code == 1001, srv.logs()[-2000:]


# -- the real detector on real footage (../shared) -----------------------------------------------
@pytest.mark.shared
@pytest.mark.slow
def test_woman2_one_stable_track_and_smoothing_cuts_flips(tmp_path: Path) -> None:
    pytest.importorskip("service.pipeline.detectors.yunet", reason="needs the YuNet detector module")
    from tests.conftest import shared_path
    from tests.helpers.tiny_models import publish_yunet

    yunet = shared_path("models", "detectors", "yunet", "face_detection_yunet_2023mar.onnx")
    video = shared_path("media", "videos", "woman2.mp4")
    store = ModelStore(tmp_path / "root", shipped=None)
    publish_yunet(store, yunet)
    publish_tiny_classifier(store, tmp_path)
    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 29.97
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(bytes(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])[1]))
    cap.release()
    assert len(frames) > 400
    server_env = {**env(tmp_path / "root"), "EMOSERVE_DETECTOR": "yunet-2023mar@production"}
    server_env["EMOSERVE_WS_MAX_FPS"] = "0"

    async def go(url: str) -> list[dict[str, Any]]:
        results = []
        async with connect(url, compression=None) as ws:
            await ws.send(json.dumps({"type": "config", "smoothing": 0.8, "track": True}))
            for i, data in enumerate(frames):  # lockstep: every frame is processed
                await ws.send(json.dumps({"type": "frame", "id": i, "ts": i / fps}))
                await ws.send(data)
                results.append(await next_of(ws, "result", 30))
        return results

    with run_server(server_env, tmp_path) as srv:
        results = run(go(ws_url(srv)))
    with_face = [r for r in results if r["faces"]]
    assert len(with_face) >= 0.95 * len(frames), f"a face in {len(with_face)}/{len(frames)} frames"
    assert {r["faces"][0]["track_id"] for r in with_face} == {1}, "one stable track over the clip"
    from service.pipeline.tracking import label_flips

    def raw_label(r: dict[str, Any]) -> str | None:
        scores = r["faces"][0]["emotion"]["scores"] if r["faces"] else None
        return max(scores, key=scores.get) if scores else None

    raw = [raw_label(r) for r in results]
    smooth = [r["faces"][0]["emotion"]["label"] if r["faces"] else None for r in results]
    seconds = len(frames) / fps
    raw_rate, smooth_rate = label_flips(raw) / seconds, label_flips(smooth) / seconds
    print(f"label flips/s over {seconds:.1f} s: raw {raw_rate:.2f}, smoothed {smooth_rate:.2f}")
    assert smooth_rate < raw_rate
