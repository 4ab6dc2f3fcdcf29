"""Tiny ONNX models built with the `onnx` helper API (no torch), and functions publishing them.

* `tiny_classifier_onnx`: 7-logit emotion classifier; GRAY 1x48x48 NCHW or RGB 64x64x3 NHWC, dynamic
  batch, deterministic weights (a fixed linear map of the pixels), optionally ending in Softmax.
* `conv_classifier_onnx`: a ~1M-parameter conv net (for the benchmark).
* `center_detector_onnx` + the test-only detector family `test-center`: one face box in the middle of
  the image with landmarks at the classifier template's proportions; its score comes from the model.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np

from model_store import ModelStore, ResolvedModel

EMOTIONS = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
TEST_DETECTOR_FAMILY = "test-center"


def _save(model: Any, path: Path) -> Path:
    import onnx

    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _model(nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any], name: str) -> Any:
    from onnx import helper

    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def tiny_classifier_onnx(path: Path, *, variant: str = "gray", probabilities: bool = False, seed: int = 0) -> Path:
    """variant "gray": input [batch,1,48,48] NCHW; "rgb": input [batch,64,64,3] NHWC. Output `logits` [batch,7]."""
    from onnx import TensorProto, helper, numpy_helper

    shape: list[Any] = ["batch", 1, 48, 48] if variant == "gray" else ["batch", 64, 64, 3]
    features = int(np.prod([d for d in shape[1:]]))
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((features, len(EMOTIONS))) / np.sqrt(features)).astype(np.float32) * 4
    bias = np.linspace(-0.3, 0.3, len(EMOTIONS), dtype=np.float32)
    out_name = "probabilities" if probabilities else "logits"
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "B"], ["logits" if not probabilities else "z"]),
    ]
    if probabilities:
        nodes.append(helper.make_node("Softmax", ["z"], ["probabilities"], axis=1))
    model = _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch", len(EMOTIONS)])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")],
        f"tiny-{variant}",
    )
    return _save(model, path)


def conv_classifier_onnx(path: Path, *, seed: int = 0) -> Path:
    """~1M parameters: 5 strided 3x3 convs (1->32->64->128->256->256) on 1x48x48, GAP, Gemm to 7 logits."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    chans = [1, 32, 64, 128, 256, 256]
    strides = [2, 2, 2, 2, 1]
    nodes, inits = [], []
    x = "input"
    for i, (cin, cout) in enumerate(itertools.pairwise(chans)):
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(cout, np.float32), f"b{i}")]
        nodes += [
            helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1], strides=[strides[i]] * 2),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        x = f"r{i}"
    fc = (rng.standard_normal((len(EMOTIONS), chans[-1])) * 0.05).astype(np.float32)
    inits += [numpy_helper.from_array(fc, "fc"), numpy_helper.from_array(np.zeros(len(EMOTIONS), np.float32), "fcb")]
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"], transB=1),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 48, 48])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(EMOTIONS)])],
        inits,
        "conv-1m",
    )
    return _save(model, path)


def count_params(path: Path) -> int:
    import onnx

    return int(sum(np.prod(t.dims) for t in onnx.load(str(path)).graph.initializer))


def classifier_draft(
    name: str = "tiny-emotion",
    *,
    variant: str = "gray",
    probabilities: bool = False,
    temperature: float | None = None,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A manifest draft matching `tiny_classifier_onnx(variant, probabilities)`."""
    if variant == "gray":
        spec: dict[str, Any] = {
            "name": "input",
            "shape": ["batch", 1, 48, 48],
            "layout": "NCHW",
            "color": "GRAY",
            "size": [48, 48],
            "scale": 1 / 255,
            "mean": [0.5],
            "std": [0.5],
        }
    else:
        spec = {
            "name": "input",
            "shape": ["batch", 64, 64, 3],
            "layout": "NHWC",
            "color": "RGB",
            "size": [64, 64],
            "scale": 1.0,
            "mean": [127.5, 127.5, 127.5],
            "std": [127.5, 127.5, 127.5],
        }
    out = "probabilities" if probabilities else "logits"
    draft: dict[str, Any] = {
        "name": name,
        "task": "emotion_classifier",
        "family": "tiny-linear",
        "description": "test-only linear classifier",
        "inputs": [spec],
        "outputs": [{"name": out, "shape": ["batch", len(EMOTIONS)]}],
        "labels": EMOTIONS,
        "licence": "MIT",
    }
    if temperature is not None:
        draft["temperature"] = temperature
    if params:
        draft["decoding"] = {"params": params}
    return draft


def publish_tiny_classifier(
    store: ModelStore,
    workdir: Path,
    name: str = "tiny-emotion",
    *,
    variant: str = "gray",
    probabilities: bool = False,
    temperature: float | None = None,
    alias: str = "production",
) -> ResolvedModel:
    """Build the tiny classifier and publish it as `name@alias`."""
    onnx_path = tiny_classifier_onnx(workdir / f"{name}-{variant}.onnx", variant=variant, probabilities=probabilities)
    draft = classifier_draft(name, variant=variant, probabilities=probabilities, temperature=temperature)
    store.publish(draft, {"model.onnx": onnx_path}, alias=alias)
    return store.get(f"{name}@{alias}")


# -- a test-only detector -----------------------------------------------------------------------
def center_detector_onnx(path: Path) -> Path:
    """Input `image` [1,3,h,w] float; output `score` [1] = sigmoid(mean(image) / 255 * 4 + 1)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("ReduceMean", ["image"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "k"], ["mk"]),
        helper.make_node("Add", ["mk", "one"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["s"]),
        helper.make_node("Reshape", ["s", "shape1"], ["score"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(4 / 255, np.float32), "k"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array([1], np.int64), "shape1"),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [1])],
        inits,
        "center-detector",
    )
    return _save(model, path)


class CenterDetector:
    """Test-only: one face in the middle of the image (half its width), landmarks at face proportions."""

    family = TEST_DETECTOR_FAMILY

    def __init__(self, model: ResolvedModel, session_factory: Any, **_options: Any) -> None:
        self.session = session_factory(model.model_path)
        self.threshold = model.manifest.decoding.score_threshold if model.manifest.decoding else 0.5

    def detect(self, image_bgr: np.ndarray, threshold: float | None = None) -> list[Any]:
        from service.pipeline.detectors import DetectedFace

        h, w = image_bgr.shape[:2]
        x = np.ascontiguousarray(image_bgr.transpose(2, 0, 1)[None], dtype=np.float32)
        score = float(self.session.run(None, {"image": x})[0][0])
        if score < (self.threshold if threshold is None else threshold):
            return []
        side = min(w, h) / 2
        x1, y1 = (w - side) / 2, (h - side) / 2
        rel = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.78], [0.65, 0.78]], np.float32)
        marks = rel * side + np.array([x1, y1], np.float32)
        return [DetectedFace((x1, y1, x1 + side, y1 + side), score, marks)]


def register_test_detector() -> None:
    """Register the `test-center` family (idempotent)."""
    from service.pipeline.detectors import register_detector

    register_detector(TEST_DETECTOR_FAMILY)(CenterDetector)


def publish_test_detector(store: ModelStore, workdir: Path, name: str = "center-det") -> ResolvedModel:
    register_test_detector()
    path = center_detector_onnx(workdir / "center-det.onnx")
    draft = {
        "name": name,
        "task": "face_detector",
        "family": TEST_DETECTOR_FAMILY,
        "inputs": [{"name": "image", "shape": [1, 3, "h", "w"], "color": "BGR", "scale": 1.0}],
        "decoding": {"score_threshold": 0.5},
        "licence": "MIT",
    }
    store.publish(draft, {"model.onnx": path}, alias="production")
    return store.get(f"{name}@production")


def publish_yunet(
    store: ModelStore, onnx_path: Path, name: str = "yunet-2023mar", *, runtime: str | None = None
) -> ResolvedModel:
    """Publish the real YuNet file (from ../shared) with the catalog's manifest fields (`runtime`: opencv...)."""
    import yaml

    catalog = yaml.safe_load((Path(__file__).resolve().parents[2] / "model_store" / "catalog.yaml").read_text())
    entry = catalog["models"]["yunet-2023mar"]
    draft = {
        "name": name,
        "task": entry["task"],
        "family": entry["family"],
        "licence": entry["licence"],
        **entry["manifest"],
    }
    if runtime:
        decoding = dict(draft["decoding"])
        draft["decoding"] = {**decoding, "params": {**decoding.get("params", {}), "runtime": runtime}}
    store.publish(draft, {"model.onnx": onnx_path}, alias="production")
    return store.get(f"{name}@production")


# -- a whole store of test models, and the settings that serve it ---------------------------------
TEST_DETECTOR_REF = "center-det@production"
TEST_CLASSIFIER_REF = "tiny-emotion@production"


def publish_test_models(work: Path, *, classifier_versions: int = 1) -> Path:
    """A store at `work/root` with the test detector and the tiny classifier (production = v1).

    Versions after the first are copies of v1 (for promotion and reload tests). Returns the root.
    """
    store = ModelStore(work / "root", shipped=None)
    publish_test_detector(store, work)
    publish_tiny_classifier(store, work)
    for _ in range(classifier_versions - 1):
        draft = store.manifest("tiny-emotion@1").model_dump(exclude={"version", "files", "created"})
        store.publish(draft, {"model.onnx": store.get("tiny-emotion@1").model_path})
    return work / "root"


def tiny_models_env(root: Path, **extra: str) -> dict[str, str]:
    """`EMOSERVE_*` settings that serve the store of `publish_test_models`."""
    return {
        "EMOSERVE_MODEL_ROOT": str(root),
        "EMOSERVE_DETECTOR": TEST_DETECTOR_REF,
        "EMOSERVE_CLASSIFIER": TEST_CLASSIFIER_REF,
        **extra,
    }
