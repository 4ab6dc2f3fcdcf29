"""Alignment puts the landmarks where the template says; preprocessing follows the manifest."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from model_store import Manifest
from service.pipeline.align import Preprocessor, default_template
from tests.helpers.tiny_models import classifier_draft


def _manifest(variant: str = "gray", params: dict | None = None) -> Manifest:
    draft = classifier_draft(variant=variant, params=params)
    files = [{"path": "model.onnx", "sha256": "0" * 64, "size": 1}]
    return Manifest.model_validate({**draft, "version": 1, "files": files})


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]])


def test_default_template_frames_the_whole_face() -> None:
    t = default_template()
    assert t.shape == (5, 2)
    assert t[0, 0] < t[1, 0] and t[3, 0] < t[4, 0]  # left eye / mouth corner left of the right ones
    eyes_y, mouth_y = t[:2, 1].mean(), t[3:, 1].mean()
    assert 0.3 < eyes_y < 0.42 and 0.62 < mouth_y < 0.75  # room above for brows, below for the chin
    assert abs(t[:, 0].mean() - 0.5) < 0.02


@pytest.mark.parametrize(("angle", "scale"), [(0.0, 4.0), (20.0, 6.0), (-35.0, 3.0)])
def test_landmarks_land_on_the_template(angle: float, scale: float) -> None:
    pre = Preprocessor.from_manifest(_manifest())
    target = pre.template_px()  # (5, 2) in the 48x48 crop
    # place the face in a 400x400 image: image = A * crop
    A = _similarity(angle, scale, 150.0, 120.0)
    marks = (np.c_[target, np.ones(5)] @ A.T).astype(np.float32)
    M = pre.matrix((0, 0, 1, 1), marks)
    mapped = np.c_[marks, np.ones(5)] @ M.T
    assert np.abs(mapped - target).max() < 0.05

    # and the pixels follow: bright dots at the landmarks end up at the template points
    image = np.zeros((400, 400, 3), np.uint8)
    for x, y in marks:
        cv2.circle(image, (round(x), round(y)), radius=max(2, round(scale)), color=(255, 255, 255), thickness=-1)
    crop = pre.crop(image, (0, 0, 1, 1), marks)
    assert crop.shape == (48, 48, 3)
    for x, y in target:
        assert crop[round(y), round(x)].mean() > 128


def test_no_landmarks_square_crop_with_margin() -> None:
    pre = Preprocessor.from_manifest(_manifest(params={"crop_margin": 0.25}))
    image = np.zeros((300, 300, 3), np.uint8)
    image[100:200, 120:180] = 255  # a 60x100 box
    crop = pre.crop(image, (120, 100, 180, 200), None)
    # the square side is 100 * 1.5 = 150 -> 48 px: the box spans 100/150 of the height, centred
    rows = np.where(crop[:, :, 0].mean(axis=1) > 100)[0]
    cols = np.where(crop[:, :, 0].mean(axis=0) > 100)[0]
    assert abs(rows.min() - 8) <= 1 and abs(rows.max() - 39) <= 1
    assert abs((cols.min() + cols.max()) / 2 - 23.5) <= 1 and abs((cols.max() - cols.min() + 1) - 19) <= 2


def test_gray_nchw_normalisation() -> None:
    pre = Preprocessor.from_manifest(_manifest("gray"))  # scale 1/255, mean 0.5, std 0.5
    crop = np.zeros((48, 48, 3), np.uint8)
    crop[:, 24:] = 255
    x = pre.normalize([crop, crop])
    assert x.shape == (2, 1, 48, 48) and x.dtype == np.float32
    assert np.allclose(x[0, 0, 0, 0], -1.0) and np.allclose(x[0, 0, 0, 47], 1.0)


def test_rgb_nhwc_colour_order_and_normalisation() -> None:
    pre = Preprocessor.from_manifest(_manifest("rgb"))  # 64x64, scale 1, mean 127.5, std 127.5
    crop = np.zeros((64, 64, 3), np.uint8)
    crop[..., 2] = 255  # pure red in BGR
    x = pre.normalize([crop])
    assert x.shape == (1, 64, 64, 3)
    assert np.allclose(x[0, 0, 0], [1.0, -1.0, -1.0])  # R first


def test_manifest_template_override() -> None:
    template = [[0.3, 0.4], [0.7, 0.4], [0.5, 0.55], [0.35, 0.7], [0.65, 0.7]]
    pre = Preprocessor.from_manifest(_manifest(params={"landmark_template": template}))
    assert np.allclose(pre.template_px(), np.array(template) * 48)
    with pytest.raises(ValueError, match="landmark_template"):
        Preprocessor.from_manifest(_manifest(params={"landmark_template": [[0, 0]]}))
