"""A training run: data, model, optimiser and schedule from a `TrainConfig`; checkpoints in the run folder.

    train_run(config, data_dir, out_dir, resume=False) -> metrics dict

The run folder holds `config.yaml`, `last.pt` (everything needed to resume), `best.pt` (best
validation accuracy), `history.json` and, at the end, `metrics.json` and `confusion.png`.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from training.checkpoints import WithPCA, fit_to_model, load_checkpoint
from training.config import TrainConfig
from training.data import FaceDataset, load_dataset
from training.data.augment import balanced_indices
from training.data.dataset import resize_face
from training.data.pca import fit_pca
from training.distill import distilled_targets
from training.loop import Runtime, WeightEMA, predict_logits, setup_runtime, to_tensor, train_epoch
from training.metrics import classification_report, fit_temperature, save_confusion_png
from training.models import create_model
from training.models.ensemble import LogitMean
from training.onnx_init import OnnxInitError, build_networks, check_reproduces, init_from_onnx, resolve_member


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def init_from_checkpoint(model: nn.Module, path: Path, classes: list[str]) -> list[str]:
    """Copy weights of matching shape from a checkpoint; class-indexed tensors (the head) are mapped by label name.

    Returns the names of the tensors that were not initialised.
    """
    ck = torch.load(path, map_location="cpu", weights_only=True)
    src, src_classes = ck["model"], list(ck["config"]["classes"])
    if ck["config"].get("second_labels"):  # a run trained with a second head: its main head's rows
        net, _, ck = load_checkpoint(path)
        src = net.state_dict()
    state = model.state_dict()
    missing = []
    for key, dst in state.items():
        w = src.get(key)
        if w is not None and w.shape == dst.shape and src_classes == classes:
            state[key] = w
        elif (
            w is not None
            and w.ndim >= 1
            and w.shape[1:] == dst.shape[1:]
            and (w.shape[0], dst.shape[0]) == (len(src_classes), len(classes))
        ):  # a class-indexed tensor: map rows by label, keep the fresh init of new classes
            for i, c in enumerate(classes):
                if c in src_classes:
                    dst[i] = w[src_classes.index(c)]
            state[key] = dst
        elif w is not None and w.shape == dst.shape:
            state[key] = w
        else:
            missing.append(key)
    model.load_state_dict(state)
    return missing


def init_model(model: nn.Module, source: str, train: FaceDataset, log: Any = print) -> list[str]:
    """Initialise `model` from a `.pt` checkpoint, an `.onnx` file with its manifest beside it, `NAME@ALIAS`,
    or `NAME@ALIAS#K`: member K (from 0) of a published ensemble.

    ONNX sources (BatchNorm folded) go through `training.onnx_init`, which re-estimates BatchNorm statistics
    on up to 4,096 training images and checks that the torch model then reproduces the ONNX logits. For a
    member, `model` takes member K's place in a rebuilt ensemble, so the whole graph is checked.
    """
    if source.endswith(".pt"):
        return init_from_checkpoint(model, Path(source), train.labels)

    src = resolve_member(source)
    manifest, onnx_path, target = src.manifest, src.onnx_path, model
    if src.member is not None:
        in_chans = 1 if train.images.ndim == 3 else int(train.images.shape[3])
        # The other members only carry the graph's weights: built at this model's input size, they fit one LogitMean.
        size = model.default_cfg["input_size"][-1]  # type: ignore[index]
        nets = build_networks(src.configs, train.num_classes, in_chans, input_size=size)
        nets[src.member] = model
        target = LogitMean(nets)
    spec = manifest.input
    mean, std = norm_of(model)
    if not (np.isclose(spec.scale * 255, 1) and np.allclose(spec.mean, mean) and np.allclose(spec.std, std)):
        raise OnnxInitError(f"{source}: its input normalisation {spec.mean}/{spec.std} differs from the model's")
    rng = np.random.default_rng(0)
    sample = train.images[np.sort(rng.choice(len(train), min(4096, len(train)), replace=False))]
    own_h, own_w = sample.shape[1:3]
    if spec.size is not None and (own_w, own_h) != tuple(spec.size):
        # The source was trained at another input size: load and check it at its own size (its graph is
        # fixed to it); the convolutions carry over and training adapts them to the new size.
        w, h = spec.size
        sample = np.stack([resize_face(img, h, w) for img in sample])
        log(f"[train] {source} takes {w}x{h} faces, this model {own_w}x{own_h}: loaded and checked at {w}x{h}")
    calib = to_tensor(sample, mean, std, Runtime(torch.device("cpu"), None, False))
    labels = list(manifest.labels or [])
    missing = init_from_onnx(target, onnx_path, labels, train.labels, calib)
    cols = [(i, labels.index(c)) for i, c in enumerate(train.labels) if c in labels]
    diff = check_reproduces(target, onnx_path, manifest, calib[:64], cols)
    log(f"[train] {onnx_path.name}: {len(cols)} classes mapped, max |torch - onnx| {diff:.1e}")
    return missing


def load_splits(cfg: TrainConfig, data_dir: Path) -> tuple[FaceDataset, FaceDataset]:
    train = load_dataset(data_dir, "train", cfg.format, **cfg.data_kwargs)
    val = load_dataset(data_dir, "val", cfg.format, **cfg.data_kwargs)
    if cfg.max_train_samples and len(train) > cfg.max_train_samples:
        rng = np.random.default_rng(cfg.seed)
        train = train.subset(np.sort(rng.choice(len(train), cfg.max_train_samples, replace=False)))
    return train, val


def norm_of(model: nn.Module) -> tuple[list[float], list[float]]:
    dc: dict[str, Any] = model.default_cfg  # type: ignore[assignment]
    return list(dc["mean"]), list(dc["std"])


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def make_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
    """Cosine with linear warm-up (stepped per batch), or reduce-on-plateau (stepped per epoch on val accuracy)."""
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=3)
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if cfg.schedule == "none":
            return 1.0
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _checkpoint_config(cfg: TrainConfig, train: FaceDataset) -> dict[str, Any]:
    """The config a checkpoint carries; with a second head, `num_classes` counts both heads' outputs and
    `second_labels` says what its columns (after `classes`) mean."""
    in_chans = 1 if train.images.ndim == 3 else int(train.images.shape[3])
    conf = {**cfg.to_dict(), "num_classes": train.num_classes, "in_chans": in_chans, "classes": list(train.labels),
            "dataset": train.name, "dataset_fingerprint": train.fingerprint}  # fmt: skip
    if cfg.second_head > 0:
        if train.second is None:
            raise ValueError(f"second_head needs a dataset with second labels ({train.name} has none; for FER+ "
                             "set data_kwargs fer2013: <the FER2013 image folders>)")  # fmt: skip
        conf["num_classes"] += len(train.second.labels)
        conf["second_labels"] = {"format": train.second.format, "classes": list(train.second.labels)}
    return conf


def _heads(cfg: TrainConfig, train: FaceDataset) -> list[tuple[int, float]]:
    main = [(train.num_classes, 1.0)]
    return [*main, (len(train.second.labels), cfg.second_head)] if cfg.second_head > 0 and train.second else main


def _second_accuracy(second_logits: np.ndarray, val: FaceDataset) -> float | None:
    """Accuracy of the second head (its logits, N x its classes) on the validation images with a second label."""
    if val.second is None or second_logits.shape[1] == 0:
        return None
    has = val.second.targets >= 0
    pred = second_logits[has].argmax(1)
    return float((pred == val.second.targets[has]).mean()) if has.any() else None


def train_run(
    config: TrainConfig | dict[str, Any], data_dir: Path | str | None, out_dir: Path | str, resume: bool = False,
    log: Any = print, splits: tuple[FaceDataset, FaceDataset] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Train one model; returns the final validation metrics (see module docstring for the files written).

    `splits` (train, val) overrides reading `data_dir` (k-fold CV passes its folds this way).
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config))
    data = Path(data_dir or cfg.data or "")
    if splits is None and not str(data_dir or cfg.data or ""):
        raise ValueError("no dataset: pass --data or set `data` in the config")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.yaml")
    seed_everything(cfg.seed)
    rt = setup_runtime(cfg)
    t0 = time.time()
    train, val = splits if splits is not None else load_splits(cfg, data)
    log(f"[train] {cfg.name}: {train.name} train={len(train)} val={len(val)} classes={train.labels} "
        f"({time.time() - t0:.1f}s to load)")  # fmt: skip
    ck_cfg = _checkpoint_config(cfg, train)
    model = create_model(cfg.model, ck_cfg["num_classes"], ck_cfg["in_chans"], cfg.pretrained, **cfg.model_kwargs)
    train, val = fit_to_model(model, train, val, log=log)
    if cfg.init_from:
        missing = init_model(model, cfg.init_from, train, log)
        log(f"[train] initialised from {cfg.init_from}" + (f"; not found: {missing}" if missing else ""))
    if cfg.pca:
        x = to_tensor(train.images[:10000], *norm_of(model), Runtime(torch.device("cpu"), None, False)).numpy()
        model = WithPCA(fit_pca(x, cfg.pca_variance, seed=cfg.seed), model)
    model = model.to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    norm = norm_of(model)
    targets = train.soft if (cfg.soft_targets and train.soft is not None) else train.targets
    if cfg.distill_from:
        targets = distilled_targets(train, targets, cfg.distill_from, cfg.distill_weight, cfg.distill_temperature, log)
    heads = _heads(cfg, train)
    if len(heads) > 1 and train.second is not None:
        main = targets if targets.ndim == 2 else np.eye(train.num_classes, dtype=np.float32)[targets]
        targets = np.concatenate([main.astype(np.float32), train.second.one_hot()], 1)
        log(f"[train] second head ({train.second.format}, weight {cfg.second_head}): "
            f"{int((train.second.targets >= 0).sum())} of {len(train)} training images have its label")  # fmt: skip
    steps = math.ceil(len(train) / cfg.batch_size / rt.world)
    if cfg.augment == "balanced":
        steps = math.ceil(int(train.counts().max()) * train.num_classes / cfg.batch_size / rt.world)
    opt = make_optimizer(cfg, model)
    sched = make_scheduler(cfg, opt, steps)
    net: nn.Module = model
    if rt.world > 1:
        ids = [rt.device.index] if rt.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    ema = WeightEMA(model, cfg.ema) if cfg.ema > 0 else None
    rng = np.random.default_rng(cfg.seed)
    start, best, history, elapsed = 0, -1.0, [], 0.0
    if resume and (out / "last.pt").exists():
        ck = torch.load(out / "last.pt", map_location=rt.device, weights_only=False)
        model.load_state_dict(ck["model"])
        if ema is not None and ck.get("ema") is not None:
            ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        start, best, history, elapsed = ck["epoch"], ck["best"], ck["history"], ck.get("elapsed", 0.0)
        log(f"[train] resumed after epoch {start} (best val acc {best:.4f})")
    n_params = sum(p.numel() for p in model.parameters())
    since_best = 0
    for epoch in range(start, cfg.epochs):
        te = time.time()
        idx = balanced_indices(train.targets, rng) if cfg.augment == "balanced" else np.arange(len(train))
        step = _step_fn(sched if cfg.schedule != "plateau" else None, ema, model)
        loss, acc = train_epoch(net, train.images[idx], targets[idx], opt, cfg, rt, rng, norm, step,
                                desc=f"epoch {epoch + 1}/{cfg.epochs}", heads=heads)  # fmt: skip
        evaluated = ema.module if ema is not None else model  # the weights that get validated and exported
        logits = predict_logits(evaluated, val.images, norm, rt, cfg.eval_batch_size)
        val_acc = float((logits[:, : val.num_classes].argmax(1) == val.targets).mean())
        second_acc = _second_accuracy(logits[:, val.num_classes :], val)
        if cfg.schedule == "plateau":
            sched.step(val_acc)
        dt = time.time() - te
        elapsed += dt
        history.append({"epoch": epoch + 1, "loss": loss, "train_acc": acc, "val_acc": val_acc, "time_s": dt,
                        "lr": opt.param_groups[0]["lr"]})  # fmt: skip
        if second_acc is not None:
            history[-1]["second_val_acc"] = second_acc
        improved = val_acc > best
        if improved:
            best, since_best = val_acc, 0
        else:
            since_best += 1
        if rt.main:
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            if improved:
                best_state = {k: v.detach().cpu() for k, v in evaluated.state_dict().items()}
                torch.save({"model": best_state, "config": ck_cfg, "epoch": epoch + 1, "val_accuracy": val_acc},
                           out / "best.pt")  # fmt: skip
            torch.save({"model": state, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "epoch": epoch + 1,
                        "ema": ema.state_dict() if ema is not None else None,
                        "best": best, "history": history, "elapsed": elapsed, "config": ck_cfg},
                       out / "last.pt.tmp")  # fmt: skip
            (out / "last.pt.tmp").replace(out / "last.pt")
            (out / "history.json").write_text(json.dumps(history, indent=1))
            second = f" second head {second_acc:.4f}" if second_acc is not None else ""
            log(f"[train] epoch {epoch + 1}/{cfg.epochs} loss {loss:.4f} train {acc:.4f} val {val_acc:.4f}"
                f"{' *' if improved else ''}{second} ({dt:.0f}s)")  # fmt: skip
        if cfg.patience and since_best >= cfg.patience:
            log(f"[train] early stop: no improvement for {cfg.patience} epochs")
            break
        if cfg.time_budget_s and elapsed + dt > cfg.time_budget_s and epoch + 1 < cfg.epochs:
            log(f"[train] time budget {cfg.time_budget_s:.0f}s reached; resume with --resume")
            break
    return finish_run(out, val, rt, n_params, elapsed, log)


def _step_fn(sched: Any, ema: WeightEMA | None, model: nn.Module) -> Any:
    """What runs after each optimiser step: the per-batch schedule and the weight average, when enabled."""
    if ema is None:
        return sched.step if sched is not None else None

    def step() -> None:
        if sched is not None:
            sched.step()
        ema.update(model)

    return step


def finish_run(
    out: Path, val: FaceDataset, rt: Runtime, n_params: int, elapsed: float, log: Any = print
) -> dict[str, Any]:
    """Evaluate the best checkpoint (fp32) on validation; write metrics.json and confusion.png."""

    model, _, ck = load_checkpoint(out / "best.pt")
    fp32 = Runtime(rt.device, None, False)
    logits = predict_logits(model.to(rt.device), val.images, norm_of(model), fp32)
    report = classification_report(val.targets, logits, val.labels)
    temp = fit_temperature(logits, val.targets)
    metrics: dict[str, Any] = {
        "val_accuracy": report["accuracy"], "macro_f1": report["macro_f1"], "params": n_params,
        "train_time_s": elapsed, "best_epoch": ck["epoch"], "temperature": temp["temperature"],
        "ece_before": temp["ece_before"], "ece_after": temp["ece_after"], "nll_before": temp["nll_before"],
        "nll_after": temp["nll_after"], "per_class": report["per_class"], "run_dir": str(out),
        "dataset_fingerprint": ck["config"]["dataset_fingerprint"], "val_size": len(val),
    }  # fmt: skip
    second = ck["config"].get("second_labels")
    if second is not None and val.second is not None:
        head, _, _ = load_checkpoint(out / "best.pt", head=second["format"])
        has = val.second.targets >= 0
        head_logits = predict_logits(head.to(rt.device), val.images, norm_of(head), fp32)
        metrics["second_head"] = {"format": second["format"], "n": int(has.sum()),
                                  "val_accuracy": _second_accuracy(head_logits, val)}  # fmt: skip
        log(f"[train] second head ({second['format']}): {metrics['second_head']['val_accuracy']:.4f} on the "
            f"{int(has.sum())} validation images with its label")  # fmt: skip
    if rt.main:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        save_confusion_png(report["confusion"], val.labels, out / "confusion.png")
        log(f"[train] best epoch {ck['epoch']}: val accuracy {report['accuracy']:.4f}, macro F1 "
            f"{report['macro_f1']:.4f}, T={temp['temperature']:.3f}")  # fmt: skip
    return metrics
