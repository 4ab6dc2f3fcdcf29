"""Grad-CAM, feature grids, the explain sheet and the `emoserve explain` command (emoserve_cli/explain.py)."""

from __future__ import annotations

import json
import sys
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

from emoserve_cli import explain as explain_cli  # noqa: E402
from emoserve_cli.explain import CELL  # noqa: E402
from tests.conftest import shared_path  # noqa: E402
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
    explain_cli.register(app)
    compare.register(app)
    return app


def sheet_rows(sheet: np.ndarray) -> int:
    """Face rows of an explain sheet, counted from its pixels: runs of pixel lines where the overlay column
    (never white: the JET map is blended on every pixel) is inked across."""
    inked = (sheet[:, CELL + 40 : 2 * CELL] < 250).any(axis=2).mean(axis=1) > 0.9
    return int(inked[0]) + int(np.count_nonzero(inked[1:] & ~inked[:-1]))


def test_explain_sheet_has_a_row_per_face() -> None:
    rng = np.random.default_rng(0)
    rows = [((rng.random((48, 48)) * 255).astype(np.uint8), rng.random((6, 6)).astype(np.float32), [f"{i}: happy"])
            for i in range(3)]  # fmt: skip
    page = explain.explain_sheet(rows, "a title", CELL)
    assert sheet_rows(page) == 3 and page.shape[0] > 3 * CELL and page.dtype == np.uint8
    assert sheet_rows(explain.explain_sheet(rows[:1], "a title", CELL)) == 1


def test_explain_cli(tmp_path: Path) -> None:
    """A torch checkpoint on a generated image: the detector finds no face, so the image is explained as one
    crop (said on stderr); --crop does that without detecting; errors are one line and exit code 2."""
    model = create_model("cnn", 7, 1, width_mult=0.0625)
    classes = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    ckpt = tmp_path / "best.pt"
    config = {"model": "cnn", "model_kwargs": {"width_mult": 0.0625}, "classes": classes}
    torch.save({"model": model.state_dict(), "config": config}, ckpt)
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    runner = CliRunner()
    env = {"EMOSERVE_MODEL_ROOT": str(tmp_path / "root")}  # the shipped detector
    args = ["explain", str(image), "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"), "--json"]
    for crop in (False, True):
        res = runner.invoke(
            _app(), [*args, "--target", "happy", "--features", "features.0", *["--crop"] * crop], env=env
        )
        assert res.exit_code == 0, res.output
        assert ("no face found in face.png" in res.stderr) is not crop
        out = json.loads(res.stdout)
        assert out["mode"] == "crop" and out["photo"] is None and len(out["faces"]) == 1
        face = out["faces"][0]
        assert face["target"] == "happy" and list(face["probabilities"]) == classes
        assert sum(face["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
        assert face["box"] == [0, 0, 64, 64] and face["sheet"] == out["sheet"]
        sheet = cv2.imread(out["sheet"])
        assert sheet is not None and sheet_rows(sheet) == 1
        assert cv2.imread(face["features"]) is not None
    # a bare state_dict needs the architecture name; this one's width differs from the default
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    res = runner.invoke(
        _app(), ["explain", str(image), "-c", str(tmp_path / "sd.pt"), "-m", "cnn", "--num-classes", "7", "--crop"]
    )
    assert res.exit_code == 2 and "size mismatch" in res.output
    # a store reference goes to the store (see tests/test_export.py for one that exists)
    res = runner.invoke(_app(), ["explain", str(image), "--model", "emotion@prod"], env=env)
    assert res.exit_code == 2 and "no model named 'emotion'" in " ".join(res.output.split())
    res = runner.invoke(_app(), ["explain", str(image)], env=env)
    assert res.exit_code == 2 and "--checkpoint" in res.output
    for bad in (tmp_path / "missing.png", ckpt):  # no such file; not an image
        res = runner.invoke(_app(), ["explain", str(bad), "--checkpoint", str(ckpt)], env=env)
        assert res.exit_code == 2 and f"cannot read image {bad}" in " ".join(res.output.split()), res.output
        assert len(res.output.strip().splitlines()) == 1


def test_explain_without_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ModuleNotFoundError
    res = CliRunner().invoke(_app(), ["explain", str(tmp_path / "face.png"), "--crop"])
    assert res.exit_code == 1 and res.output.strip() == f"error: {explain_cli.TRAIN_EXTRAS}"


@pytest.mark.shared
@pytest.mark.slow
def test_explain_photo_explains_every_face_the_service_finds(tmp_path: Path) -> None:
    """`emoserve explain PHOTO --model emotion-ferplus8@production` on the real app: one sheet row per face,
    and the faces, their order and their probabilities are those `emoserve serve` gives for the photo
    (same detector, alignment, input tensor, mirror averaging and temperature)."""
    from emoserve_cli import app
    from service.pipeline.analyze import Pipeline
    from service.settings import get_settings

    photo = shared_path("media", "photos", "12_angry_men.jpg")
    root = tmp_path / "root"  # an empty store over the shipped layer: the default detector and classifier
    out_dir = tmp_path / "out"
    args = ["explain", str(photo), "--model", "emotion-ferplus8@production", "--out", str(out_dir), "--json"]
    res = CliRunner().invoke(app, args, env={"EMOSERVE_MODEL_ROOT": str(root)})
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    faces = out["faces"]
    assert out["mode"] == "faces" and out["model"] == "emotion-ferplus8@5" and len(faces) >= 8
    assert [f["face"] for f in faces] == list(range(1, len(faces) + 1))
    sheet = cv2.imread(out["sheet"])
    assert sheet is not None and sheet_rows(sheet) == len(faces)
    original, numbered = cv2.imread(str(photo)), cv2.imread(out["photo"])
    assert numbered is not None and numbered.shape == original.shape
    for f in faces:  # each numbered box is drawn on the photo
        x1, y1, x2, _ = (round(v) for v in f["box"])
        assert np.abs(numbered[y1, x1:x2].astype(int) - original[y1, x1:x2]).mean() > 30

    # explain rebuilds the float network from the ONNX weights: compare with the service's float graph (on the
    # CPU the service runs the int8 graph, whose probabilities differ by a few thousandths)
    settings = get_settings(model_root=root, int8=False)
    pipe = Pipeline.load(settings, classifier_ref="emotion-ferplus8@production")
    try:
        served = pipe.analyze_sync(photo.read_bytes()).faces
    finally:
        pipe.close()
    assert len(served) == len(faces)
    for f, s in zip(faces, served, strict=True):
        assert f["box"] == pytest.approx([s.box.x1, s.box.y1, s.box.x2, s.box.y2], abs=0.06)
        assert f["label"] == s.emotion.label
        got = np.array(list(f["probabilities"].values()))
        want = np.array([s.emotion.scores[k] for k in f["probabilities"]])
        assert np.abs(got - want).max() < 2e-3, (f["face"], got, want)


def test_explain_is_an_emoserve_command_that_imports_torch_lazily() -> None:
    import subprocess

    code = (
        "import sys; from emoserve_cli import app; print(sorted(c.name or '' for c in app.registered_commands)); "
        "print('torch' in sys.modules, 'cv2' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert "'explain'" in out[0] and "'compare'" in out[0] and out[0].count("'explain'") == 1
    assert out[1] == "False False"
