"""Grad-CAM, feature grids and the `emoserve explain` command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import typer  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from training import compare, explain  # noqa: E402
from training.models import create_model  # noqa: E402

SIZE = 32
H_BAR, V_BAR = (2, 10), (10, 2)  # (height, width) of the two objects


def _draw(img: torch.Tensor, shape: tuple[int, int], top: int, left: int) -> None:
    img[0, top : top + shape[0], left : left + shape[1]] = 1.0


def _batch(gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images with a horizontal and/or a vertical bar at random places; labels (has_h, has_v)."""
    x = torch.rand(n, 1, SIZE, SIZE, generator=gen) * 0.2
    y = (torch.rand(n, 2, generator=gen) < 0.5).float()
    for i in range(n):
        for k, shape in enumerate((H_BAR, V_BAR)):
            if y[i, k]:
                top = int(torch.randint(0, SIZE - shape[0] + 1, (1,), generator=gen))
                left = int(torch.randint(0, SIZE - shape[1] + 1, (1,), generator=gen))
                _draw(x[i], shape, top, left)
    return x, y


class BarNet(nn.Module):
    """A tiny CAM-style network: two convs, global average pool, linear (one logit per bar type)."""

    gradcam_layer = "features.3"

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
        )
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


@pytest.fixture(scope="module")
def bar_net() -> BarNet:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    net = BarNet()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(200):
        x, y = _batch(gen, 32)
        loss = nn.functional.binary_cross_entropy_with_logits(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = _batch(gen, 256)
    with torch.no_grad():
        acc = ((net(x) > 0).float() == y).float().mean()
    assert acc > 0.95, f"the bar detector did not learn (accuracy {acc:.2f}); the Grad-CAM test would be void"
    return net.eval()


def _quadrant_mass(heat: np.ndarray) -> dict[str, float]:
    h = SIZE // 2
    return {"tl": float(heat[:h, :h].sum()), "br": float(heat[h:, h:].sum())}


@pytest.mark.parametrize("swap", [False, True])
def test_gradcam_points_at_the_evidence(bar_net: BarNet, swap: bool) -> None:
    """One image, a horizontal bar in one corner and a vertical bar in the opposite one: the map for
    each class lies on that class's bar (checked both ways round, so position bias cannot pass)."""
    x = torch.rand(1, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 0.2
    h_at, v_at = ((20, 19), (4, 4)) if swap else ((4, 4), (19, 20))
    _draw(x, H_BAR, *h_at)
    _draw(x, V_BAR, *v_at)
    h_quad, v_quad = ("br", "tl") if swap else ("tl", "br")
    for cls, quad, other in ((0, h_quad, v_quad), (1, v_quad, h_quad)):
        heat = explain.gradcam(bar_net, x, target=cls)
        assert heat.shape == (SIZE, SIZE) and heat.dtype == np.float32
        assert heat.min() >= 0.0 and heat.max() == pytest.approx(1.0)
        mass = _quadrant_mass(heat)
        assert mass[quad] > 2 * mass[other], (cls, mass)  # activations alone give about 1x
        peak = np.unravel_index(int(heat.argmax()), heat.shape)
        top, left = h_at if cls == 0 else v_at
        shape = H_BAR if cls == 0 else V_BAR
        assert top - 3 <= peak[0] < top + shape[0] + 3 and left - 3 <= peak[1] < left + shape[1] + 3, peak


def test_gradcam_default_target_is_prediction(bar_net: BarNet) -> None:
    x = torch.rand(1, SIZE, SIZE) * 0.2
    _draw(x, V_BAR, 10, 10)
    heat, logits = explain.gradcam_logits(bar_net, x)
    assert int(logits.argmax()) == 1
    np.testing.assert_allclose(heat, explain.gradcam(bar_net, x, target=1))
    assert all(p.grad is None for p in bar_net.parameters())  # leaves no gradients behind


def test_gradcam_on_zoo_models() -> None:
    """Each architecture's `gradcam_layer` yields a map, token models included (ViT reshape)."""
    cases: list[tuple[str, dict[str, Any]]] = [
        ("cnn", {"width_mult": 0.0625}),
        ("vit_tiny", {"embed_dim": 32, "depth": 1, "num_heads": 2}),
    ]
    for name, kw in cases:
        model = create_model(name, 7, 1, **kw)
        heat = explain.gradcam(model, torch.rand(1, 48, 48), target=3)
        assert heat.shape == (48, 48) and np.isfinite(heat).all() and heat.max() <= 1.0
        assert model.training  # mode restored


def test_overlay_and_feature_grid(bar_net: BarNet) -> None:
    face = (np.random.default_rng(0).random((48, 48)) * 255).astype(np.uint8)
    heat = np.zeros((32, 32), np.float32)
    heat[:8, :8] = 1.0
    img = explain.overlay(face, heat)
    assert img.shape == (48, 48, 3) and img.dtype == np.uint8
    assert img[:8, :8, 2].mean() > img[-8:, -8:, 2].mean()  # hot (red in JET) where the map is high
    grid = explain.feature_grid(bar_net, torch.rand(1, SIZE, SIZE), "features.3", cell=20)
    assert grid.shape == (4 * 22, 4 * 22) and grid.dtype == np.uint8


def _app() -> typer.Typer:
    app = typer.Typer()
    explain.register(app)
    compare.register(app)
    return app


def test_explain_cli(tmp_path: Path) -> None:
    model = create_model("cnn", 7, 1, width_mult=0.0625)
    classes = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    ckpt = tmp_path / "best.pt"
    config = {"model": "cnn", "model_kwargs": {"width_mult": 0.0625}, "classes": classes}
    torch.save({"model": model.state_dict(), "config": config}, ckpt)
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    runner = CliRunner()
    args = ["explain", str(image), "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"), "--json"]
    res = runner.invoke(_app(), [*args, "--target", "happy", "--features", "features.0"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["target"] == "happy" and set(out["probabilities"]) == set(classes)
    cam = cv2.imread(out["gradcam"])
    assert cam is not None and cam.shape == (224, 224, 3)
    assert cv2.imread(out["features"]) is not None
    # a bare state_dict needs the architecture name
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    res = runner.invoke(
        _app(), ["explain", str(image), "-c", str(tmp_path / "sd.pt"), "-m", "cnn", "--num-classes", "7"]
    )
    assert res.exit_code != 0 and "size mismatch" in repr(res.exception)  # width differs from the default
    # a store reference goes to the store (see tests/test_export.py for one that exists)
    res = runner.invoke(
        _app(), ["explain", str(image), "--model", "emotion@prod"], env={"EMOSERVE_MODEL_ROOT": str(tmp_path)}
    )
    assert res.exit_code == 2 and "no model named 'emotion'" in " ".join(res.output.split())
    res = runner.invoke(_app(), ["explain", str(image)])
    assert res.exit_code == 2 and "--checkpoint" in res.output
