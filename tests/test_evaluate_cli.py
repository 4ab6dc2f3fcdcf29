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

from emoserve_cli import app
from model_store import ModelStore
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


def test_int8_scores_the_graph_the_cpu_serves(root: Path, tmp_path: Path) -> None:
    """`--int8` runs the artifact's `model.int8.onnx` (here another tiny graph, so its predictions differ) and says
    so; a model without one is refused in one line."""
    data = tmp_path / "data"
    n = _classes(data, 4)
    code, out, err = _evaluate(root, "--data", str(data), "--split", "all", "--int8")
    assert code == 2 and "tiny7@1 has no int8 graph" in err, (out, err)
    store = ModelStore(root, shipped=None)
    draft = classifier_draft("tiny7")
    draft["labels"] = list(EMOTIONS_7)
    files = {"model.onnx": tiny_classifier_onnx(tmp_path / "f.onnx"),
             "model.int8.onnx": tiny_classifier_onnx(tmp_path / "q.onnx", seed=3)}  # fmt: skip
    store.publish(draft, files, alias="production")
    results = {}
    for flags in ([], ["--int8"]):
        code, out, err = _evaluate(root, "--data", str(data), "--split", "all", "--json", *flags)
        assert code == 0, err
        results[bool(flags)] = json.loads(out)
        _check_metrics(results[bool(flags)], n)
    assert results[False]["graph"] == "float" and results[True]["graph"] == "int8"
    assert results[False]["confusion"] != results[True]["confusion"]
    code, out, err = _evaluate(root, "--data", str(data), "--split", "all", "--int8")
    assert code == 0 and "tiny7@2 (int8 graph)" in out, err


def test_unknown_model_and_bad_split_are_one_line(root: Path, tmp_path: Path) -> None:
    _classes(tmp_path / "data", 2)
    env = {"EMOSERVE_MODEL_ROOT": str(root), "COLUMNS": "200"}
    res = CliRunner().invoke(app, ["evaluate", "--model", "nothing@production", "--data", str(tmp_path / "data")],
                             env=env)  # fmt: skip
    assert res.exit_code == 3 and res.stderr.strip().count("\n") == 0 and "nothing" in res.stderr
    code, _, err = _evaluate(root, "--data", str(tmp_path / "data"), "--split", "everything")
    assert code == 2 and "--split must be one of train, val, test, all" in err


# ----------------------------------------------------------------------------- --robustness

SHIFT_NAMES = ["crop 0.8x", "crop 1.2x", "shift +10%", "shift -10%", "rotate +15", "rotate -15", "blur 1.0",
               "jpeg 30", "brightness +40", "brightness -40", "contrast 0.6", "gamma 1.8", "downscale 24"]  # fmt: skip


def test_robustness_json_table_and_file(root: Path, tmp_path: Path) -> None:
    """Every shift has a row in [0, 1]; the means, drops and worst drop follow from the rows; the 7-label model
    on 8-class FER+ data is scored on the shared classes, as without --robustness; a second run (text) agrees."""
    data = tmp_path / "ferplus"
    _ferplus_test(data, 24)
    out_dir = tmp_path / "report"
    code, out, err = _evaluate(root, "--data", str(data), "--split", "test", "--robustness", "--json",
                               "--out", str(out_dir))  # fmt: skip
    assert code == 0, err
    res = json.loads(out)
    rob = res["robustness"]
    assert [r["shift"] for r in rob["rows"]] == SHIFT_NAMES
    for r in rob["rows"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["balanced_accuracy"] <= 1.0, r
        assert r["drop_points"] == pytest.approx(100 * (res["accuracy"] - r["accuracy"]))
    assert rob["unshifted"] == {"accuracy": res["accuracy"], "balanced_accuracy": res["balanced_accuracy"]}
    assert res["n_shared"] == 18 and res == {**_json(root, data, "test"), "robustness": rob}  # same label matching
    assert rob["mean_accuracy"] == pytest.approx(np.mean([r["accuracy"] for r in rob["rows"]]))
    assert rob["mean_balanced_accuracy"] == pytest.approx(np.mean([r["balanced_accuracy"] for r in rob["rows"]]))
    worst = max(rob["rows"], key=lambda r: r["drop_points"])
    assert (rob["worst_shift"], rob["worst_drop"]) == (worst["shift"], worst["drop_points"])
    assert len({r["accuracy"] for r in rob["rows"]} | {res["accuracy"]}) > 1  # the shifts reach the model
    assert json.loads((out_dir / "robustness.json").read_text()) == rob
    assert json.loads((out_dir / "evaluation.json").read_text()) == res

    code, text, err = _evaluate(root, "--data", str(data), "--split", "test", "--robustness")
    assert code == 0, err
    for r in [*rob["rows"], {"shift": "unshifted", **rob["unshifted"]}]:
        assert f"{r['shift']:<16} {r['accuracy']:>8.4f} {r['balanced_accuracy']:>8.4f}" in text  # deterministic
    assert f"{'mean of shifts':<16} {rob['mean_accuracy']:>8.4f}" in text


def test_robustness_failure_is_one_line(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training import robustness as R

    monkeypatch.setattr(R, "SHIFTS", {"broken": lambda img: cv2.resize(img, (0, 0))})  # OpenCV refuses it
    _classes(tmp_path / "data" / "test", 1)
    code, out, err = _evaluate(root, "--data", str(tmp_path / "data"), "--split", "test", "--robustness")
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.strip().count("\n") == 0 and "shift 'broken' failed on a (48, 48) image" in err


def _square(side: int = 48, box: int = 10) -> np.ndarray:
    img = np.full((side, side), 50, np.uint8)
    lo = (side - box) // 2
    img[lo : lo + box, lo : lo + box] = 200
    return img


def _bright_box(img: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(img > 125)
    return int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())


def test_shift_functions() -> None:
    from training import robustness as R

    sq = _square()
    noise = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    rgb = np.random.default_rng(1).integers(0, 256, (100, 100, 3), dtype=np.uint8)
    assert list(R.SHIFTS) == SHIFT_NAMES
    for name, fn in R.SHIFTS.items():  # every shift keeps the shape and dtype, gray 48 px and RGB 100 px
        for img in (sq, rgb):
            out = fn(img)
            assert out.shape == img.shape and out.dtype == np.uint8, name
        assert np.array_equal(fn(sq), fn(sq)), name  # deterministic
    for img in (sq, noise, rgb):  # the identity of each family leaves the image as it is
        assert np.array_equal(R.affine(img), img) and np.array_equal(R.tone(img), img)
    assert _bright_box(sq) == (19, 28, 19, 28)
    assert _bright_box(R.SHIFTS["crop 0.8x"](sq)) == (18, 29, 18, 29)  # tight crop: the square grows (12.5 px)
    assert _bright_box(R.SHIFTS["crop 1.2x"](sq)) == (20, 27, 20, 27)  # loose crop: it shrinks (8.3 px)
    assert _bright_box(R.SHIFTS["shift +10%"](sq)) == (14, 23, 14, 23)  # window right/down: face up-left 4.8 px
    assert _bright_box(R.SHIFTS["shift -10%"](sq)) == (24, 33, 24, 33)
    loose = R.SHIFTS["crop 1.2x"](noise)
    assert (loose[0, :4] == noise[0, 0]).all()  # outside the image: its border replicated, not black
    rot = R.SHIFTS["rotate +15"](sq)
    assert (rot > 125).sum() == pytest.approx(100, abs=8) and not np.array_equal(rot > 125, sq > 125)
    assert np.array_equal(rot[:, ::-1], R.SHIFTS["rotate -15"](sq[:, ::-1]))  # mirror images of each other
    assert R.SHIFTS["blur 1.0"](noise).std() < 0.6 * noise.std()
    jpg = R.SHIFTS["jpeg 30"](noise)
    assert not np.array_equal(jpg, noise) and np.abs(jpg.astype(int) - noise).mean() > 5
    small = R.SHIFTS["downscale 24"](noise)
    assert small.shape == (48, 48) and not np.array_equal(small, noise)
    grey = np.full((48, 48), 128, np.uint8)
    assert R.SHIFTS["brightness +40"](grey).max() == 168 and R.SHIFTS["brightness -40"](grey).max() == 88
    assert R.SHIFTS["gamma 1.8"](grey).max() == round(255 * (128 / 255) ** 1.8)  # darker mid-tones
    con = R.SHIFTS["contrast 0.6"](noise).astype(float)
    assert con.std() == pytest.approx(0.6 * noise.std(), rel=0.02) and con.mean() == pytest.approx(noise.mean(), abs=1)
    with pytest.raises(R.RobustnessError, match="uint8 gray or RGB"):
        R.apply_shift("blur 1.0", R.blur, noise[None].astype(np.float32))
