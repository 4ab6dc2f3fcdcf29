"""Metrics against scikit-learn, calibration (ECE, temperature scaling), confusion PNG, manifest preprocessing."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from training.metrics import (
    classification_report,
    expected_calibration_error,
    fit_temperature,
    format_report,
    nll,
    save_confusion_png,
    softmax,
)

LABELS = ["angry", "happy", "sad"]
Y_TRUE = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
Y_PRED = np.array([0, 1, 0, 1, 1, 2, 1, 2, 0, 0])


def test_report_matches_sklearn() -> None:
    rep = classification_report(Y_TRUE, Y_PRED, LABELS)
    p, r, f, s = precision_recall_fscore_support(Y_TRUE, Y_PRED, zero_division=0)
    assert rep["accuracy"] == accuracy_score(Y_TRUE, Y_PRED) == 0.6
    assert rep["macro_f1"] == f1_score(Y_TRUE, Y_PRED, average="macro")
    for i, lab in enumerate(LABELS):
        pc = rep["per_class"][lab]
        assert (pc["precision"], pc["recall"], pc["f1"], pc["support"]) == (p[i], r[i], f[i], s[i])
    assert np.array_equal(rep["confusion"], confusion_matrix(Y_TRUE, Y_PRED))
    assert rep["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(Y_TRUE, Y_PRED))
    # a class without images has no recall to average: balanced accuracy is over the classes present
    assert classification_report(Y_TRUE, Y_PRED, [*LABELS, "fear"])["balanced_accuracy"] == rep["balanced_accuracy"]
    scores = np.eye(3)[Y_PRED] * 2.0
    assert classification_report(Y_TRUE, scores, LABELS)["accuracy"] == 0.6
    assert "macro F1" in format_report(rep) and "balanced accuracy" in format_report(rep)


def test_absent_class_gets_zero_not_error() -> None:
    rep = classification_report(np.array([0, 0]), np.array([0, 0]), ["a", "b"])
    assert rep["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_ece_known_value() -> None:
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 1, 0, 0])
    # bin (0.8, 0.9]: acc 0.5 vs conf 0.9 -> 0.4 * 0.5; bin (0.53, 0.6]: acc 1 vs conf 0.6 -> 0.4 * 0.5
    assert expected_calibration_error(probs, y, bins=15) == np.float64(0.4)


def test_temperature_scaling_fixes_overconfidence() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 2000)
    logits = rng.normal(0, 1, (2000, 5))
    logits[np.arange(2000), y] += 1.5  # informative, calibrated-ish logits ...
    hot = logits * 4.0  # ... made overconfident
    res = fit_temperature(hot, y)
    assert res["temperature"] > 2.0
    assert res["nll_after"] < res["nll_before"]
    assert res["ece_after"] < res["ece_before"]
    assert nll(hot, y, res["temperature"]) == res["nll_after"]
    assert np.allclose(softmax(hot).sum(1), 1)


def test_confusion_png(tmp_path: Path) -> None:
    path = save_confusion_png(confusion_matrix(Y_TRUE, Y_PRED), LABELS, tmp_path / "cm.png")
    img = cv2.imread(str(path))
    assert img is not None and img.shape[0] > 3 * 64 and img.std() > 10


def test_preprocess_from_manifest() -> None:
    from types import SimpleNamespace

    from model_store.manifest import InputSpec
    from training.onnx_run import preprocess_for

    spec = InputSpec(name="input", shape=["batch", 1, 40, 40], color="GRAY", size=(40, 40), mean=[0.5], std=[0.5])
    x = preprocess_for(SimpleNamespace(input=spec), np.full((3, 48, 48), 255, np.uint8))
    assert x.shape == (3, 1, 40, 40) and x.dtype == np.float32 and np.allclose(x, 1.0)
    rgb = InputSpec(name="input", shape=["batch", 3, 48, 48], color="RGB", size=(48, 48))
    assert preprocess_for(SimpleNamespace(input=rgb), np.zeros((2, 48, 48), np.uint8)).shape == (2, 3, 48, 48)
