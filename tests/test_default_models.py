"""The default models committed inside the package: intact, served, and as accurate as they claim."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_store import ModelStore
from service.pipeline.analyze import Pipeline
from service.settings import get_settings
from tests.conftest import shared_path
from tests.helpers.tiny_models import publish_yunet

DEFAULT = get_settings().classifier  # the service's default classifier reference
# the default is one of the first two; the third is the real-time variant of the first
SHIPPED = ["emotion-ferplus8@production", "emotion-fer7@production", "emotion-ferplus8-fast@production"]


def test_shipped_models_verify(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "root")  # an empty root over the shipped layer
    results = store.verify_all()
    assert results, "no model is shipped inside the package"
    assert [err for _, err in results if err] == []
    resolved = store.get(DEFAULT)
    assert resolved.layer == "shipped"
    m = resolved.manifest
    assert (
        m.task == "emotion_classifier"
        and m.labels is not None
        and m.labels[:7] == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    )
    assert resolved.model_path.stat().st_size < 20 * 1024 * 1024
    assert m.provenance.training is not None and m.provenance.training.dataset_fingerprint
    assert (resolved.path / "MODEL_CARD.md").is_file()


def test_both_shipped_classifiers_are_there() -> None:
    assert DEFAULT in SHIPPED
    store = ModelStore(Path("/nonexistent-root"))
    assert {ref: len(store.manifest(ref).labels or []) for ref in SHIPPED} == dict(zip(SHIPPED, [8, 7, 8], strict=True))


@pytest.mark.parametrize("ref", SHIPPED)
def test_shipped_model_reproduces_its_validation_accuracy(tmp_path: Path, ref: str) -> None:
    pytest.importorskip("torch", reason="evaluation lives in the training extra")
    from training.evaluate import evaluate_store_model

    store = ModelStore(tmp_path / "root")
    m = store.manifest(ref)
    dataset, claimed = next((k, v["accuracy"]) for k, v in m.metrics.items() if k.endswith("_val"))
    data = shared_path("data", dataset.removesuffix("_val"))
    result = evaluate_store_model(ref, data, "val", store_root=tmp_path / "root")
    assert result["n"] == m.metrics[dataset]["n"]
    assert result["accuracy"] == pytest.approx(claimed, abs=0.002)
    if "int8_accuracy" in m.metrics[dataset]:  # the graph the service runs on the CPU, and its own claim
        from training.evaluate import evaluate_loaded, int8_graph, load_for_evaluation

        resolved, ds = load_for_evaluation(ref, data, "val", store_root=tmp_path / "root")
        served = evaluate_loaded(int8_graph(resolved), ds)
        assert served["graph"] == "int8"
        assert served["accuracy"] == pytest.approx(m.metrics[dataset]["int8_accuracy"], abs=0.002)


def test_default_classifier_serves_a_group_photo(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "root")
    det = publish_yunet(store, shared_path("models", "detectors", "yunet", "face_detection_yunet_2023mar.onnx"))
    pipe = Pipeline.load(get_settings(model_root=tmp_path / "root"), store=store, detector_ref=det.ref)
    result = pipe.analyze_sync(shared_path("media", "photos", "12_angry_men.jpg").read_bytes())
    pipe.close()
    labels = store.manifest(DEFAULT).labels
    assert result.models.classifier.name == DEFAULT.partition("@")[0]
    assert len(result.faces) >= 8
    for face in result.faces:
        assert list(face.emotion.scores) == labels
        assert sum(face.emotion.scores.values()) == pytest.approx(1.0, abs=1e-4)
