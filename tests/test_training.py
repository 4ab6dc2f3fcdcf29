"""Training: config, ResNet, runtime selection, a short run on a learnable synthetic dataset, resume."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from training.config import TrainConfig

CLASSES = ["angry", "happy", "sad", "surprise"]


def synthetic_faces(root: Path, per_class: int = 60, val_per_class: int = 20, seed: int = 0) -> Path:
    """A learnable image-folder dataset: each class is a bar/blob pattern at a random place, plus noise."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for k, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.normal(100, 20, (48, 48))
                o = rng.integers(-6, 7, 2)
                if k == 0:
                    img[20 + o[0] : 28 + o[0], 6:42] += 100  # horizontal bar
                elif k == 1:
                    img[6:42, 20 + o[1] : 28 + o[1]] += 100  # vertical bar
                elif k == 2:
                    img[14 + o[0] : 34 + o[0], 14 + o[1] : 34 + o[1]] -= 80  # dark square
                else:
                    cv2.circle(img, (24 + int(o[1]), 24 + int(o[0])), 6, 255, -1)  # bright dot
                cv2.imwrite(str(root / split / name / f"{i}.png"), np.clip(img, 0, 255).astype(np.uint8))
    return root


def tiny_config(**kw: object) -> TrainConfig:
    base: dict[str, object] = {
        "name": "tiny", "model": "resnet18s", "model_kwargs": {"width": 8, "stem_stride": 2}, "epochs": 2,
        "batch_size": 32, "lr": 0.01, "weight_decay": 0.0, "warmup_epochs": 0, "augment": "none",
        "threads": 1, "amp": "none", "seed": 0,
    }  # fmt: skip
    base.update(kw)
    return TrainConfig.from_dict(base)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMOSERVE_CACHE_DIR", str(tmp_path / "cache"))


def test_config_yaml_roundtrip_and_validation(tmp_path: Path) -> None:
    cfg = tiny_config(optimizer="sgd")
    cfg.save(tmp_path / "c.yaml")
    assert TrainConfig.from_yaml(tmp_path / "c.yaml") == cfg
    with pytest.raises(ValueError, match="unknown config keys: bogus"):
        TrainConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig.from_dict({"optimizer": "adam2"})


def test_shipped_configs_load() -> None:
    for path in Path("training/configs").glob("*.yaml"):
        TrainConfig.from_yaml(path)


def test_resnet_shapes_and_size() -> None:
    from training.models import create_model

    m = create_model("resnet18s", num_classes=8, in_chans=1)
    assert m(torch.zeros(2, 1, 48, 48)).shape == (2, 8)
    assert sum(p.numel() for p in m.parameters()) < 5_000_000
    assert m.default_cfg["input_size"] == (1, 48, 48) and m.default_cfg["color"] == "GRAY"
    rgb = create_model("resnet18", num_classes=7, in_chans=3, width=16, stem_stride=2)
    assert rgb(torch.zeros(1, 3, 64, 64)).shape == (1, 7) and rgb.default_cfg["color"] == "RGB"


def test_runtime_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    from training.loop import setup_runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rt = setup_runtime(tiny_config(amp="auto"))
    assert rt.device.type == "cpu" and rt.amp_dtype is torch.bfloat16 and rt.world == 1
    assert setup_runtime(tiny_config(amp="fp16")).amp_dtype is torch.bfloat16  # fp16 autocast is CUDA only
    with pytest.raises(RuntimeError, match="cuda"):
        setup_runtime(tiny_config(device="cuda"))


def two_soft_classes(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """64 images of two learnable classes (a bright left half or not) with soft targets."""
    images = rng.integers(0, 50, (64, 48, 48)).astype(np.uint8)
    images[:32, :, :24] += 150
    soft = np.zeros((64, 2), np.float32)
    soft[:32] = [0.8, 0.2]
    soft[32:] = [0.1, 0.9]
    return images, soft


def test_soft_target_epoch_learns() -> None:
    from training.loop import Runtime, train_epoch
    from training.models import create_model

    rng = np.random.default_rng(0)
    images, soft = two_soft_classes(rng)
    torch.manual_seed(0)  # the same initial weights every run
    model = create_model("resnet18s", 2, 1, width=8, stem_stride=2)
    opt = torch.optim.AdamW(model.parameters(), 0.01)
    rt = Runtime(torch.device("cpu"), None, False)
    losses = [train_epoch(model, images, soft, opt, tiny_config(), rt, rng, ([0.5], [0.5]))[0] for _ in range(6)]
    assert losses[-1] < losses[0]


def test_short_run_beats_chance_and_resumes(tmp_path: Path) -> None:
    from training.checkpoints import load_checkpoint
    from training.train import train_run

    data = synthetic_faces(tmp_path / "data", per_class=150)
    out = tmp_path / "run"
    cfg = tiny_config(epochs=1)
    m1 = train_run(cfg, data, out, log=lambda s: None)
    assert (out / "best.pt").exists() and (out / "last.pt").exists() and (out / "config.yaml").exists()
    m2 = train_run(tiny_config(epochs=2, augment="standard", erasing=0.2), data, out, resume=True, log=lambda s: None)
    hist = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]  # epoch 1 not repeated: resumed
    assert m2["val_accuracy"] >= 0.6, m2  # chance is 0.25
    assert m2["val_accuracy"] >= m1["val_accuracy"] - 0.05
    assert cv2.imread(str(out / "confusion.png")) is not None
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_class"]) >= set(CLASSES) and metrics["params"] > 0
    _, loaded, ck = load_checkpoint(out / "best.pt")
    assert loaded.model == "resnet18s" and ck["config"]["classes"][:2] == ["angry", "disgust"]


def test_weight_ema_averages_weights_and_statistics() -> None:
    from training.loop import WeightEMA

    lin, bn = torch.nn.Linear(2, 1, bias=False), torch.nn.BatchNorm1d(1)
    model = torch.nn.Sequential(lin, bn)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema = WeightEMA(model, decay=0.9)
    with torch.no_grad():
        lin.weight.fill_(3.0)
        bn.running_mean.fill_(2.0)
        bn.num_batches_tracked.fill_(5)
    ema.update(model)  # first update: decay ramps to 2/11, so the average moves 9/11 of the way
    assert torch.allclose(ema.module[0].weight, torch.full((1, 2), 1 + 2 * 9 / 11))
    assert torch.allclose(ema.module[1].running_mean, torch.tensor([2 * 9 / 11]))
    assert int(ema.module[1].num_batches_tracked) == 5 and not ema.module[0].weight.requires_grad
    for _ in range(200):
        ema.update(model)
    assert torch.allclose(ema.module[0].weight, lin.weight, atol=1e-6)
    with pytest.raises(ValueError, match="ema"):
        tiny_config(ema=1.0).validate()


def test_ema_run_validates_the_average_and_resumes_it(tmp_path: Path) -> None:
    from training.train import train_run

    data = synthetic_faces(tmp_path / "data", per_class=150)
    out = tmp_path / "run"
    train_run(tiny_config(epochs=1, ema=0.9), data, out, log=lambda s: None)
    first = torch.load(out / "last.pt", weights_only=False)
    steps = first["ema"]["updates"]
    assert steps == 19  # 600 images / batch 32: one update per optimiser step
    m = train_run(tiny_config(epochs=2, ema=0.9), data, out, resume=True, log=lambda s: None)
    last = torch.load(out / "last.pt", weights_only=False)
    assert last["ema"]["updates"] == 2 * steps  # the average was restored, not restarted
    assert m["val_accuracy"] >= 0.6, m
    best = torch.load(out / "best.pt", weights_only=True)["model"]
    raw, avg = last["model"], last["ema"]["module"]
    key = next(k for k in raw if k.endswith("weight") and raw[k].ndim == 4)
    assert not torch.equal(raw[key], avg[key])  # the average is not the raw weights
    if m["best_epoch"] == 2:
        assert torch.equal(best[key], avg[key])  # what was validated and kept is the average


def test_images_are_resized_to_the_models_input_size(tmp_path: Path) -> None:
    from training.checkpoints import load_checkpoint
    from training.data import load_dataset
    from training.train import train_run

    data = synthetic_faces(tmp_path / "data", per_class=8, val_per_class=4)
    val = load_dataset(data, "val")
    big = val.resized(64, 64)
    assert big.images.shape == (len(val), 64, 64) and big.fingerprint == val.fingerprint
    assert np.array_equal(big.targets, val.targets) and val.resized(48, 48) is val
    lines: list[str] = []
    cfg = tiny_config(epochs=1, model="mobilenetv2", model_kwargs={"width_mult": 0.25, "input_size": 64})
    train_run(cfg, data, tmp_path / "run", log=lines.append)
    assert any("48x48 resized to the model's 64x64" in line for line in lines), lines
    model, _, _ = load_checkpoint(tmp_path / "run" / "best.pt")
    assert model.default_cfg["input_size"] == (1, 64, 64)


def test_balanced_plateau_sgd_pca_run(tmp_path: Path) -> None:
    from training.checkpoints import load_checkpoint
    from training.train import train_run

    data = synthetic_faces(tmp_path / "data", per_class=20, val_per_class=5)
    cfg = tiny_config(epochs=1, augment="balanced", schedule="plateau", optimizer="sgd", pca=True, mixup=0.2,
                      label_smoothing=0.1)  # fmt: skip
    m = train_run(cfg, data, tmp_path / "run", log=lambda s: None)
    assert 0.0 <= m["val_accuracy"] <= 1.0
    model, _, _ = load_checkpoint(tmp_path / "run" / "best.pt")
    assert model(torch.zeros(1, 1, 48, 48)).shape == (1, 7)


def test_cli_import_is_light_and_registers() -> None:
    import subprocess
    import sys

    code = ("import sys, typer, emoserve_cli.train as c; app = typer.Typer(); c.register(app); "
            "print(sorted(x.name for x in app.registered_commands)); print('torch' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert "'evaluate'" in out[0] and "'train'" in out[0] and "'export'" in out[0]
    assert out[1] == "False"


def test_cli_train_publish_evaluate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import typer
    from typer.testing import CliRunner

    import emoserve_cli.train as cli

    monkeypatch.setenv("EMOSERVE_MODEL_ROOT", str(tmp_path / "store"))
    data = synthetic_faces(tmp_path / "data", per_class=150)
    cfg = tiny_config(name="emotion-cli")
    cfg.save(tmp_path / "c.yaml")
    app = typer.Typer()
    cli.register(app)
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--config", str(tmp_path / "c.yaml"), "--data", str(data),
                              "--out", str(tmp_path / "run"), "--publish"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "published emotion-cli@1" in res.output
    res = runner.invoke(app, ["evaluate", "--model", "emotion-cli@production", "--data", str(data), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["n"] == 80 and out["accuracy"] >= 0.6
    res = runner.invoke(app, ["evaluate", "--model", "emotion-cli@1", "--data", str(data)])
    assert "precision" in res.output and "happy" in res.output


def test_kfold_cv(tmp_path: Path) -> None:
    from training.kfold import kfold_cv

    data = synthetic_faces(tmp_path / "data", per_class=15, val_per_class=1)
    res = kfold_cv(tiny_config(epochs=1).to_dict(), data, tmp_path / "cv", folds=2, log=lambda s: None)
    assert res["folds"] == 2 and len(res["accuracy"]) == 2
    assert all(0 <= a <= 1 for a in res["accuracy"])
    assert (tmp_path / "cv" / "fold2" / "metrics.json").exists()


def test_init_from_maps_head_by_label(tmp_path: Path) -> None:
    from training.models import create_model
    from training.train import init_from_checkpoint

    src = create_model("resnet18s", 3, 1, width=8)
    torch.save({"model": src.state_dict(), "config": {"classes": ["happy", "sad", "contempt"]}}, tmp_path / "c.pt")
    dst = create_model("resnet18s", 2, 1, width=8)
    missing = init_from_checkpoint(dst, tmp_path / "c.pt", ["sad", "angry"])
    assert missing == []
    assert torch.equal(dst.fc.weight[0], src.fc.weight[1])  # "sad" row moved
    assert not torch.equal(dst.fc.weight[1], src.fc.weight[0])  # "angry" keeps its fresh init
    assert torch.equal(dst.layer1[0].conv1.weight, src.layer1[0].conv1.weight)


def test_consistency_views_and_loss() -> None:
    """A consistency view is the same face slightly moved (and sometimes compressed); the loss is zero when
    the two predictions agree, and its gradient reaches only the second view's."""
    from training.data.degrade import consistency_view
    from training.loop import consistency_loss

    rng = np.random.default_rng(0)
    face = cv2.GaussianBlur(rng.integers(0, 255, (128, 128)).astype(np.uint8), (0, 0), 3)
    views = [consistency_view(face, np.random.default_rng(s)) for s in range(20)]
    assert all(v.shape == face.shape and v.dtype == np.uint8 for v in views)
    diffs = [float(np.abs(v.astype(float) - face).mean()) for v in views]
    assert all(0 < d < 20 for d in diffs), diffs  # moved, not replaced
    assert np.array_equal(consistency_view(face, np.random.default_rng(3)), views[3])  # seeded
    heads = [(4, 1.0), (3, 0.5)]
    anchor = torch.randn(8, 7, requires_grad=True)
    assert float(consistency_loss(anchor, anchor.detach().clone(), heads)) == pytest.approx(0.0, abs=1e-6)
    view = torch.randn(8, 7, requires_grad=True)
    loss = consistency_loss(anchor, view, heads)
    loss.backward()
    assert float(loss.detach()) > 0 and anchor.grad is None and view.grad is not None and view.grad.abs().sum() > 0


def test_consistency_epoch_sees_both_views() -> None:
    """With `consistency`, every step runs the batch and its second views through the model in one pass
    (twice the images), and the epoch still learns; the option refuses mixup and a negative weight."""
    from training.loop import Runtime, train_epoch
    from training.models import create_model

    rng = np.random.default_rng(0)
    images, soft = two_soft_classes(rng)
    torch.manual_seed(0)  # the same initial weights every run
    model = create_model("resnet18s", 2, 1, width=8, stem_stride=2)
    seen: list[int] = []
    model.register_forward_hook(lambda m, args, out: seen.append(int(args[0].shape[0])))
    opt = torch.optim.AdamW(model.parameters(), 0.01)
    rt = Runtime(torch.device("cpu"), None, False)
    cfg = tiny_config(augment="standard", consistency=1.0, batch_size=16)
    losses = [train_epoch(model, images, soft, opt, cfg, rt, rng, ([0.5], [0.5]))[0] for _ in range(6)]
    assert set(seen) == {32}  # 16 images and their 16 second views
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="negative"):
        tiny_config(consistency=-1.0)
    with pytest.raises(ValueError, match="set mixup 0"):
        tiny_config(augment="standard", consistency=1.0, mixup=0.2)
    with pytest.raises(ValueError, match="set augment standard"):
        tiny_config(consistency=1.0)
