"""`explain=true`: a heat map per face from the shipped classifier's `cam` output, over REST, the SDK,
`/v1/annotate` and streams; and the maps agree with torch Grad-CAM on the same crops."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from emoserve_client import Client
from websockets.asyncio.client import connect

from service.pipeline.explain import GRID
from tests.api_server import Server, run_server
from tests.helpers.tiny_models import TEST_DETECTOR_REF, publish_test_models

CLASSIFIER = "emotion-ferplus8@production"  # shipped, with a `cam` output


def photo(seed: int = 0, size: tuple[int, int] = (320, 240)) -> bytes:
    """A bright, smooth JPEG: the test detector finds one face in its middle."""
    rng = np.random.default_rng(seed)
    img = rng.integers(140, 220, (size[1], size[0], 3)).astype(np.uint8)
    img = np.asarray(cv2.GaussianBlur(img, (0, 0), 4), dtype=np.uint8)
    return bytes(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Server]:
    root = publish_test_models(tmp_path_factory.mktemp("explain-models"))
    env = {
        "EMOSERVE_MODEL_ROOT": str(root),
        "EMOSERVE_DETECTOR": TEST_DETECTOR_REF,
        "EMOSERVE_CLASSIFIER": CLASSIFIER,
        "EMOSERVE_REDIS_URL": redis_url,
        "EMOSERVE_WS_RECLASSIFY_MS": "60000",  # no clock in reuse decisions: a busy machine must not change them
    }
    with run_server(env, tmp_path_factory.mktemp("explain-logs")) as s:
        yield s


def check_explanation(face: dict, box_of_image: tuple[int, int]) -> None:
    ex = face["explanation"]
    assert ex["label"] == face["emotion"]["label"]
    grid = np.asarray(ex["grid"])
    assert grid.shape == (GRID, GRID) and grid.min() >= 0.0 and grid.max() == pytest.approx(1.0, abs=1e-3)
    affine = np.asarray(ex["affine"])
    assert affine.shape == (2, 3)
    b = face["box"]
    centre = affine @ np.array([(GRID - 1) / 2, (GRID - 1) / 2, 1.0])  # the grid's centre lands on the face
    assert b["x1"] < centre[0] < b["x2"] and b["y1"] < centre[1] < b["y2"], (centre, b)
    width, height = box_of_image
    drawn = cv2.warpAffine(grid.astype(np.float32), affine.astype(np.float32), (width, height))
    assert drawn.max() > 0.5  # warpAffine lays it on the image, as the schema says


def test_analyze_with_and_without_explain(server: Server) -> None:
    data = photo()
    with Client(server.url) as client:
        plain = client.analyze(data)
        explained = client.analyze(data, explain=True)
    assert [f.explanation for f in plain.faces] == [None]
    assert len(explained.faces) == 1
    assert explained.faces[0].emotion == plain.faces[0].emotion  # the maps change nothing else
    check_explanation(explained.faces[0].model_dump(mode="json"), (320, 240))


def test_explain_in_a_json_body_and_in_a_batch(server: Server) -> None:
    import base64

    with server.client() as c:
        r = c.post("/v1/analyze", json={"image_base64": base64.b64encode(photo(1)).decode(), "explain": True})
        assert r.status_code == 200, r.text
        check_explanation(r.json()["faces"][0], (320, 240))
        files = [("images", ("a.jpg", photo(2), "image/jpeg")), ("images", ("b.jpg", photo(3), "image/jpeg"))]
        r = c.post("/v1/analyze/batch?explain=true", files=files)
        assert r.status_code == 200, r.text
        for body in r.json()["results"]:
            check_explanation(body["faces"][0], (320, 240))


def test_annotate_draws_the_maps(server: Server) -> None:
    data = photo(4)
    with server.client() as c:
        plain = c.post("/v1/annotate", content=data, headers={"content-type": "image/jpeg"})
        maps = c.post("/v1/annotate?explain=true", content=data, headers={"content-type": "image/jpeg"})
        face = c.post("/v1/analyze", content=data, headers={"content-type": "image/jpeg"}).json()["faces"][0]
    assert plain.status_code == maps.status_code == 200
    a = np.asarray(cv2.imdecode(np.frombuffer(plain.content, np.uint8), cv2.IMREAD_COLOR), int)
    b = np.asarray(cv2.imdecode(np.frombuffer(maps.content, np.uint8), cv2.IMREAD_COLOR), int)
    box = face["box"]
    x1, y1, x2, y2 = (round(box[k]) for k in ("x1", "y1", "x2", "y2"))
    inside = np.abs(a - b)[y1 + 4 : y2 - 4, x1 + 4 : x2 - 4].mean()
    corner = np.abs(a - b)[:20, :20].mean()  # far from the face: only JPEG noise differs
    assert inside > 20 and corner < 3, (inside, corner)


def test_a_stream_can_ask_for_maps(server: Server) -> None:
    url = server.url.replace("http://", "ws://") + "/v1/stream"

    async def go() -> list[dict]:
        async with connect(url, compression=None) as ws:
            await ws.send(json.dumps({"type": "config", "explain": True, "reuse": True, "reclassify_every": 2}))
            out = []
            for _ in range(3):
                await ws.send(photo(5))
                while (msg := json.loads(await asyncio.wait_for(ws.recv(), 30)))["type"] != "result":
                    pass
                out.append(msg["faces"][0])
            return out

    faces = asyncio.run(go())
    assert [f["classified"] for f in faces] == [True, False, True]
    for face in faces:  # a face whose emotion is carried over carries its map too
        check_explanation(face, (320, 240))
    assert faces[1]["explanation"]["grid"] == faces[0]["explanation"]["grid"]


def test_served_maps_agree_with_torch_gradcam(tmp_path: Path) -> None:
    """The served map of each face against `emoserve explain`'s torch Grad-CAM on the very same crop."""
    pytest.importorskip("torch")
    import torch

    from model_store import ModelStore
    from service.pipeline.classifier import EmotionClassifier
    from service.pipeline.explain import heat_grid
    from service.runtime.sessions import SessionPool
    from service.settings import Settings
    from training.explain import gradcam_logits
    from training.onnx_init import torch_model_from_store

    settings = Settings(model_root=tmp_path, int8=False)  # the float graph: the same network as torch's
    model = ModelStore(tmp_path).get(CLASSIFIER)
    spec = model.manifest.explain
    assert spec is not None
    side = (model.manifest.input.size or (96, 96))[0]
    pool = SessionPool(settings)
    try:
        classifier = EmotionClassifier(model, pool.load(model), settings)
        net, _ = torch_model_from_store(CLASSIFIER, tmp_path)
        rng = np.random.default_rng(7)
        crops = []
        for i in range(6):  # smooth random "faces" with a bright band at a different height each
            img = cv2.GaussianBlur(rng.integers(0, 255, (side, side, 3)).astype(np.uint8), (0, 0), 3 * side / 96)
            band = round((10 + 12 * i) * side / 96)
            img[band : band + round(12 * side / 96)] = 230
            crops.append(img)
        batch = classifier.preprocessor.normalize(crops)
        scores = classifier.run(batch)
        assert scores.cams is not None
        for i in range(len(crops)):
            label = int(np.argmax(scores.probs[i]))
            served = heat_grid(scores.cams[i, label])
            heat, logits = gradcam_logits(net, torch.from_numpy(batch[i]), label, flip=spec.flip_averaged)
            ref = cv2.resize(heat, (GRID, GRID), interpolation=cv2.INTER_AREA)
            assert int(logits[0].argmax()) == label
            assert np.corrcoef(served.ravel(), ref.ravel())[0, 1] >= 0.9
    finally:
        pool.close()
