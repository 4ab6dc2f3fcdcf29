"""`emoserve evaluate` on every labelled layout: test-only sets, `--split all`, JSON metrics, one-line refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from typer.testing import CliRunner

from model_store import ModelStore
from service.cli import app
from tests.helpers.tiny_models import classifier_draft, tiny_classifier_onnx
from training.data import EMOTIONS_7

pytestmark = pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # sklearn, on our check

CLASSES = ["happy", "sad", "angry"]  # folder names; the dataset's labels are the canonical 7


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMOSERVE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    """A store with `tiny7@production`: the tiny linear classifier, labelled in the canonical 7-class order."""
    store = ModelStore(tmp_path / "root", shipped=None)
    draft = classifier_draft("tiny7")
    draft["labels"] = list(EMOTIONS_7)
    store.publish(draft, {"model.onnx": tiny_classifier_onnx(tmp_path / "tiny7.onnx")}, alias="production")
    return tmp_path / "root"


def _face(path: Path, seed: int) -> None:
    """A 48x48 gray noise image (varied, so that the tiny model predicts several classes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, (48, 48), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)


def _classes(folder: Path, n: int, seed: int = 0) -> int:
    """n, 2n and 3n images in the folders of CLASSES (unbalanced, so balanced accuracy differs from accuracy)."""
    for k, name in enumerate(CLASSES):
        for i in range(n * (k + 1)):
            _face(folder / name / f"{i}.png", seed + 100 * k + i)
    return n * 6


def _ferplus_test(folder: Path, n: int) -> int:
    """`folder/FER2013Test/label.csv` in the FER+ format; every 4th row is contempt. Returns the kept rows."""
    split = folder / "FER2013Test"
    split.mkdir(parents=True)
    with (split / "label.csv").open("w", newline="") as f:
        w = csv.writer(f)
        for i in range(n):
            votes = [0] * 10
            votes[7 if i % 4 == 3 else i % 3] = 9  # contempt, else neutral / happiness / surprise
            w.writerow([f"fer{i:07d}.png", "(0, 0, 48, 48)", *votes])
            _face(split / f"fer{i:07d}.png", i)
    return n


def _evaluate(root: Path, *args: str) -> tuple[int, str, str]:
    env = {"EMOSERVE_MODEL_ROOT": str(root), "COLUMNS": "200"}
    res = CliRunner().invoke(app, ["evaluate", "--model", "tiny7@production", *args], env=env)
    return res.exit_code, res.stdout, res.stderr


def _json(root: Path, data: Path, split: str) -> dict[str, Any]:
    code, out, err = _evaluate(root, "--data", str(data), "--split", split, "--json")
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def _check_metrics(res: dict[str, Any], n: int) -> None:
    """The JSON's numbers agree with its own confusion matrix (and with scikit-learn on it)."""
    labels, cm = res["confusion"]["labels"], np.array(res["confusion"]["matrix"])
    assert cm.shape == (len(labels), len(labels)) and cm.sum() == n
    y_true = np.repeat(np.arange(len(labels)), cm.sum(1))
    y_pred = np.concatenate([np.repeat(np.arange(len(labels)), row) for row in cm])
    assert res["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    acc = res.get("accuracy_shared", res["accuracy"])
    assert acc == pytest.approx(accuracy_score(y_true, y_pred)) == pytest.approx(np.trace(cm) / n)
    recalls = [m["recall"] for m in res["per_class"].values() if m["support"]]
    assert res["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    assert list(res["per_class"]) == labels
    assert [res["per_class"][c]["support"] for c in labels] == cm.sum(1).tolist()
    assert 0.0 <= res["ece"] <= 1.0


def test_test_only_image_folder(root: Path, tmp_path: Path) -> None:
    n = _classes(tmp_path / "data" / "test", 3)
    res = _json(root, tmp_path / "data", "test")
    assert res["n"] == n and res["split"] == "test" and res["confusion"]["labels"] == EMOTIONS_7
    _check_metrics(res, n)
    code, out, err = _evaluate(root, "--data", str(tmp_path / "data"), "--split", "val")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert f"has no val split: expected {tmp_path / 'data'}/val/<class>/*.jpg" in err
    assert "found split folders test" in err


def test_test_only_ferplus(root: Path, tmp_path: Path) -> None:
    data = tmp_path / "ferplus"
    n = _ferplus_test(data, 16)
    res = _json(root, data, "test")
    assert res["n"] == n and res["dataset"] == "ferplus"
    assert res["n_shared"] == n - 4  # the 4 contempt faces are outside the model's 7 classes
    _check_metrics(res, res["n_shared"])
    code, _, err = _evaluate(root, "--data", str(data), "--split", "train")
    assert code == 2 and err.strip().count("\n") == 0
    assert f"{data}/FER2013Train/label.csv (found FER2013Test)" in err


def test_bare_folder_all_and_refused_test(root: Path, tmp_path: Path) -> None:
    data = tmp_path / "photos"
    n = _classes(data, 10)
    res = _json(root, data, "all")
    assert res["n"] == n and res["split"] == "all"
    _check_metrics(res, n)
    assert _json(root, data, "val")["n"] == 9  # the 15% holdout, as before
    code, _, err = _evaluate(root, "--data", str(data), "--split", "test")
    assert code == 2 and err.strip().count("\n") == 0
    assert "expected" in err and "--split all reads all of it" in err


def test_split_folders_all_and_outputs(root: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    n = _classes(data / "train", 3) + _classes(data / "val", 2, seed=1000) + _classes(data / "test", 1, seed=2000)
    out_dir = tmp_path / "report"
    code, out, err = _evaluate(root, "--data", str(data), "--split", "all", "--out", str(out_dir))
    assert code == 0, err
    assert f"({n} images)" in out and "balanced accuracy" in out and "ECE" in out
    saved = json.loads((out_dir / "evaluation.json").read_text())
    assert saved["n"] == n
    _check_metrics(saved, n)
    png = cv2.imread(str(out_dir / "confusion.png"))
    assert png is not None and png.shape[0] > 100


def test_unknown_model_and_bad_split_are_one_line(root: Path, tmp_path: Path) -> None:
    _classes(tmp_path / "data", 2)
    env = {"EMOSERVE_MODEL_ROOT": str(root), "COLUMNS": "200"}
    res = CliRunner().invoke(app, ["evaluate", "--model", "nothing@production", "--data", str(tmp_path / "data")],
                             env=env)  # fmt: skip
    assert res.exit_code == 3 and res.stderr.strip().count("\n") == 0 and "nothing" in res.stderr
    code, _, err = _evaluate(root, "--data", str(tmp_path / "data"), "--split", "everything")
    assert code == 2 and "--split must be one of train, val, test, all" in err
