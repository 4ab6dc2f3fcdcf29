"""RetinaFace: the plain-torch network, its ONNX converter and the numpy decoding."""

from __future__ import annotations

from itertools import product
from math import ceil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn

from model_store import ModelStore, ResolvedModel
from model_store.catalog import Catalog, CatalogEntry
from model_store.pull import pull
from service.pipeline.detectors import FaceDetector, create_detector
from service.pipeline.detectors.retinaface import prior_boxes
from service.pipeline.detectors.retinaface_export import convert, export_onnx
from service.pipeline.detectors.retinaface_net import RetinaFace, build_retinaface
from tests.conftest import shared_path

REFERENCE_MIN_SIZES = [[16, 32], [64, 128], [256, 512]]  # biubug6 cfg_mnet / cfg_re50
NAME = "retinaface-mnet025"
# The shared mobilenet0.25_Final.pth was trained with a plain-ReLU body and half-size priors: the
# catalog entry declares it (converter_params body_leaky 0.0, decoding min_sizes); see catalog.yaml.


def session_factory(path: Path) -> Any:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def weights() -> Path:
    return shared_path("models", "detectors", "retinaface_mnet025", "mobilenet0.25_Final.pth")


@pytest.fixture(scope="module")
def entry() -> CatalogEntry:
    return Catalog.load().get(NAME)


@pytest.fixture(scope="module")
def rf_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """The catalog path: pulled from the ../shared mirror, converted, published as production."""
    store = ModelStore(tmp_path_factory.mktemp("store"), shipped=None)
    pull(store, NAME, mirror=shared_path("models"), progress=False)
    return store


@pytest.fixture(scope="module")
def model(rf_store: ModelStore) -> ResolvedModel:
    return rf_store.get(f"{NAME}@production")


@pytest.fixture(scope="module")
def onnx_path(model: ResolvedModel) -> Path:
    return model.model_path


@pytest.fixture(scope="module")
def detector(model: ResolvedModel) -> FaceDetector:
    return create_detector(model, session_factory)


def photo(name: str) -> np.ndarray:
    img = cv2.imread(str(shared_path("media", "photos", name)))
    assert img is not None, name
    return img


def test_catalog_declares_the_variant(entry: CatalogEntry, model: ResolvedModel) -> None:
    assert entry.converter_params == {"backbone": "mobilenet0.25", "body_leaky": 0.0}
    decoding = model.manifest.decoding
    assert decoding is not None and decoding.params["min_sizes"] == [[8, 16], [32, 64], [128, 256]]
    r50 = Catalog.load().get("retinaface-r50")
    assert r50.converter_params == {"backbone": "resnet50"}
    assert r50.manifest["decoding"]["params"]["min_sizes"] == REFERENCE_MIN_SIZES


def test_checkpoint_has_dead_relu_units(weights: Path) -> None:
    """The evidence for body_leaky 0.0: depthwise BN channels fed by a dead ReLU unit saw only zeros."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    for key in ("body.stage1.1.1.running_var", "body.stage2.1.1.running_var"):
        assert float(state[key].min()) < 1e-30, key


def test_mobilenet_state_dict_loads_strictly(weights: Path) -> None:
    state = torch.load(weights, map_location="cpu", weights_only=True)
    net = build_retinaface("mobilenet0.25", state)  # strict=True inside
    assert set(net.state_dict()) == {k.removeprefix("module.") for k in state}
    prefixed = {f"module.{k}": v for k, v in state.items()}
    build_retinaface("mobilenet0.25", prefixed)


def test_onnx_is_one_dynamic_file(onnx_path: Path) -> None:
    assert not onnx_path.with_name(onnx_path.name + ".data").exists()
    sess = session_factory(onnx_path)
    assert sess.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    outs = sess.run(None, {"input": np.zeros((2, 3, 100, 130), np.float32)})
    assert [o.shape for o in outs] == [(2, 608, 4), (2, 608, 2), (2, 608, 10)]
    assert prior_boxes(100, 130, REFERENCE_MIN_SIZES, [8, 16, 32]).shape == (608, 4)


def test_torch_onnx_parity_on_photo(weights: Path, onnx_path: Path, entry: CatalogEntry) -> None:
    img = cv2.resize(photo("two_people.jpg"), (640, 376), interpolation=cv2.INTER_AREA)
    x = (img.astype(np.float32) - np.array([104, 117, 123], np.float32)).transpose(2, 0, 1)[None].copy()
    state = torch.load(weights, map_location="cpu", weights_only=True)
    net = build_retinaface("mobilenet0.25", state, body_leaky=entry.converter_params["body_leaky"])
    with torch.no_grad():
        ref = [t.numpy() for t in net(torch.from_numpy(x))]
    got = session_factory(onnx_path).run(None, {"input": x})
    for r, g in zip(ref, got, strict=True):
        assert np.abs(r - g).max() < 1e-3


def test_resnet50_graph_round_trips_and_exports(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = RetinaFace("resnet50").eval()
    state = net.state_dict()
    assert "body.layer4.2.bn3.running_var" in state and "body.layer1.0.downsample.0.weight" in state
    assert not any(k.startswith("body.fc") for k in state)
    twin = build_retinaface("resnet50", {f"module.{k}": v for k, v in state.items()})
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = net(x), twin(x)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    with pytest.warns(DeprecationWarning):  # the classic (TorchScript) exporter is used on purpose
        path = export_onnx(net, tmp_path / "r50.onnx", sample_hw=(64, 64))
    out = session_factory(path).run(None, {"input": x.numpy()})
    assert np.abs(out[0] - a[0].numpy()).max() < 1e-3
    assert out[0].shape[1] == prior_boxes(64, 96, REFERENCE_MIN_SIZES, [8, 16, 32]).shape[0]


def test_prior_boxes_match_reference_loop() -> None:
    h, w = 70, 90
    ref = []
    for k, step in enumerate([8, 16, 32]):
        for i, j in product(range(ceil(h / step)), range(ceil(w / step))):
            for m in REFERENCE_MIN_SIZES[k]:
                ref.append([(j + 0.5) * step / w, (i + 0.5) * step / h, m / w, m / h])
    assert np.allclose(prior_boxes(h, w, REFERENCE_MIN_SIZES, [8, 16, 32]), np.array(ref), atol=1e-6)


def test_unknown_backbone_and_bad_params_are_refused(weights: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="backbone"):
        convert(weights, tmp_path, {"backbone": "resnet152"})
    with pytest.raises(ValueError, match="body_leaky"):
        convert(weights, tmp_path, {"backbone": "mobilenet0.25", "body_leaky": 1.5})
    with pytest.raises(ValueError, match="body_leaky"):
        RetinaFace("resnet50", body_leaky=0.0)
    with pytest.raises(ValueError, match="unknown RetinaFace converter params"):
        convert(weights, tmp_path, {"backbone": "mobilenet0.25", "leaky": 0.0})


def test_body_leaky_sets_the_mobilenet_slopes_only() -> None:
    def slopes(net: RetinaFace, prefix: str) -> set[float]:
        return {
            m.negative_slope for n, m in net.named_modules() if isinstance(m, nn.LeakyReLU) and n.startswith(prefix)
        }

    ref, relu = RetinaFace("mobilenet0.25"), RetinaFace("mobilenet0.25", body_leaky=0.0)
    assert slopes(ref, "body") == {0.1} and slopes(relu, "body") == {0.0}
    assert slopes(ref, "fpn") == slopes(relu, "fpn") == {0.1}
    assert slopes(ref, "ssh") == slopes(relu, "ssh") == {0.1}


def test_blank_image_has_no_faces(detector: FaceDetector) -> None:
    assert detector.detect(np.full((480, 640, 3), 128, np.uint8)) == []


def test_detects_the_face_on_obama(detector: FaceDetector) -> None:
    img = photo("obama.jpg")
    faces = detector.detect(img)
    assert len(faces) == 1 and faces[0].landmarks is not None
    x1, y1, x2, y2 = faces[0].box
    assert 0 <= x1 < x2 <= img.shape[1] and 0 <= y1 < y2 <= img.shape[0]
    assert 330 < (x1 + x2) / 2 < 650 and 150 < (y1 + y2) / 2 < 420  # the face (910x1137 photo)
    assert 150 < x2 - x1 < 350  # face-sized, not the doubled boxes of the reference priors
    eyes = faces[0].landmarks[:2]
    assert np.all((eyes[:, 0] > x1) & (eyes[:, 0] < x2) & (eyes[:, 1] > y1) & (eyes[:, 1] < y2))


# (min, max): 12_angry_men shows 9 faces that SCRFD and YuNet also find; test_image 6 likewise.
@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("12_angry_men.jpg", 8, 10), ("multiface.jpg", 6, 6), ("two_people.jpg", 2, 2), ("test_image.jpg", 6, 7)],
)
def test_group_photo_counts(detector: FaceDetector, name: str, low: int, high: int) -> None:
    faces = detector.detect(photo(name))
    assert low <= len(faces) <= high, f"{len(faces)} faces in {name}"
