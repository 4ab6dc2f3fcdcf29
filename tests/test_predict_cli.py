"""`emoserve predict`: JSON matching the schema, an annotated JPEG, and a helpful refusal without a classifier."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from emoserve_cli import app
from model_store import ModelStore
from service.errors import ModelNotFound, spec_for
from service.pipeline.schema import AnalysisResult
from tests.helpers.tiny_models import publish_test_detector, publish_tiny_classifier

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def images(tmp_path: Path) -> list[Path]:
    paths = []
    for i in range(2):
        img = np.clip(np.random.default_rng(i).normal(120, 40, (120, 160, 3)), 0, 255).astype(np.uint8)
        path = tmp_path / f"img{i}.jpg"
        cv2.imwrite(str(path), img)
        paths.append(path)
    return paths


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    store = ModelStore(tmp_path / "root", shipped=None)
    publish_test_detector(store, tmp_path, name="center-det")
    publish_tiny_classifier(store, tmp_path, name="tiny-emotion")
    return tmp_path / "root"


def _invoke(root: Path, *args: str) -> tuple[int, str, str]:
    env = {
        "EMOSERVE_MODEL_ROOT": str(root),
        "EMOSERVE_DETECTOR": "center-det@production",
        "EMOSERVE_CLASSIFIER": "tiny-emotion@production",
        "COLUMNS": "200",
    }
    result = CliRunner().invoke(app, ["predict", *args], env=env)
    return result.exit_code, result.stdout, result.stderr


def test_json_for_one_and_several_images(root: Path, images: list[Path]) -> None:
    code, out, err = _invoke(root, "--json", str(images[0]))
    assert code == 0, err
    one = AnalysisResult.model_validate(json.loads(out))
    assert one.image.width == 160 and len(one.faces) == 1
    assert abs(sum(one.faces[0].emotion.scores.values()) - 1) < 1e-5

    code, out, err = _invoke(root, "--json", *map(str, images))
    assert code == 0, err
    many = [AnalysisResult.model_validate(body) for body in json.loads(out)]
    assert len(many) == 2


def test_table_and_annotate(root: Path, images: list[Path], tmp_path: Path) -> None:
    out_path = tmp_path / "out" / "annotated.jpg"
    code, out, err = _invoke(root, str(images[0]), "--annotate", str(out_path), "--classifier", "tiny-emotion@1")
    assert code == 0, err
    assert "img0.jpg" in out and "%" in out
    data = out_path.read_bytes()
    assert data[:3] == b"\xff\xd8\xff"
    drawn = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    original = cv2.imread(str(images[0]))
    assert drawn is not None and original is not None
    assert drawn.shape == (120, 160, 3)
    assert not np.array_equal(drawn, original)


def test_no_classifier_refuses_with_a_hint(tmp_path: Path, images: list[Path]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOSERVE_")}
    # a store with a detector but no classifier named by EMOSERVE_CLASSIFIER (the shipped default
    # classifier exists in every store, so point the setting at one that does not)
    publish_test_detector(ModelStore(tmp_path / "root"), tmp_path)
    env.update(
        {
            "EMOSERVE_MODEL_ROOT": str(tmp_path / "root"),
            "COLUMNS": "200",
            "EMOSERVE_DETECTOR": "center-det@production",
            "EMOSERVE_CLASSIFIER": "emotion-none@production",
            "EMOSERVE_PLUGINS": '["tests.helpers.tiny_models:register_test_detector"]',
            "PYTHONPATH": str(REPO),
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", "emoserve_cli", "predict", str(images[0])],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == spec_for(ModelNotFound("x")).exit_code != 0
    assert "no emotion classifier in the store" in proc.stderr
    assert "emoserve models publish" in proc.stderr
