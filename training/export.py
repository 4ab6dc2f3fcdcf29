"""Export a training run to ONNX, check parity with onnxruntime, and publish it to the model store.

    publish_run(run_dir, data_dir, name, store_root) -> Manifest

The ONNX file is one self-contained file (classic exporter, dynamic batch axis); with `flip_tta`
the graph outputs the mean of the logits of the image and its mirror image. Publishing is refused
(`ParityError`) when torch and onnxruntime disagree by more than 1e-4 on 64 validation images.
Optional int8: static QDQ per-channel quantisation, calibrated on training images, published only
when its accuracy is within `int8_max_drop` of the float model's.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn

from model_store.manifest import INT8_FILE
from model_store.store import SHIPPED_ROOT
from training.models.cam import CAM_OUTPUT, CamNet, supports_cam
from training.models.ensemble import FlipTTA
from training.onnx_run import ort_run

if TYPE_CHECKING:
    from training.config import TrainConfig

PARITY_ATOL = 1e-4
INPUT_NAME, OUTPUT_NAME = "input", "logits"


class ParityError(RuntimeError):
    """The ONNX model does not reproduce the torch model's outputs."""


class ExportRefused(ValueError):
    """An export option does not fit the run (said in the message)."""


INT8_CALIBRATION = 1024  # training faces that calibrate the int8 activations (256 lost 0.2 points on a 128 px net)


def export_onnx(
    model: nn.Module, path: Path, input_size: tuple[int, int, int], opset: int = 17,
    outputs: Sequence[str] = (OUTPUT_NAME,),
) -> Path:  # fmt: skip
    """Write `model` (eval, fp32) as one ONNX file with input `input` [batch, C, H, W] and the named outputs
    (`logits`, then `cam` for a `CamNet`), each with a dynamic batch axis."""
    model = model.eval().float().to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    dummy = torch.zeros(2, *input_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the classic exporter is deliberate: one file, no deps
        torch.onnx.export(
            model, (dummy,), str(path), input_names=[INPUT_NAME], output_names=list(outputs),
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *outputs)}, opset_version=opset, dynamo=False,
        )  # fmt: skip
    return path


def parity_check(model: nn.Module, path: Path, x: np.ndarray, atol: float = PARITY_ATOL) -> float:
    """Max |torch - onnxruntime| of the first output (the logits) over a batch; raises `ParityError` above `atol`."""
    with torch.no_grad():
        out = model.eval().float()(torch.from_numpy(x))
        ref = (out[0] if isinstance(out, tuple) else out).numpy()
    diff = float(np.abs(ref - ort_run(path, x)).max())
    if not diff <= atol:  # NaN fails too
        raise ParityError(f"ONNX parity check failed: max abs diff {diff:.3g} > {atol:g}; refusing to publish {path}")
    return diff


def quantize_int8(float_path: Path, calib: np.ndarray, out_path: Path) -> Path:
    """Static QDQ int8 quantisation calibrated on `calib` (N x C x H x W float32): uint8 activations and
    per-channel int8 weights (U8S8, the pair onnxruntime's x86 kernels run fastest: with signed activations the
    graph measured no faster than float here)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{INPUT_NAME: calib[i : i + 32]} for i in range(0, len(calib), 32)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(float_path), str(pre))
        quantize_static(str(pre), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
    return out_path


def git_commit(repo: Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo or Path(__file__).parent, capture_output=True,
                             text=True, timeout=10, check=True)  # fmt: skip
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def manifest_draft(
    name: str, cfg: dict[str, Any], default_cfg: dict[str, Any], labels: list[str],
    metrics: dict[str, dict[str, float]], temperature: float | None, provenance: dict[str, Any],
    description: str = "", licence: str = "unknown", cam: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The manifest fields (all but version/files) of an exported classifier; `cam` from `cam_spec` when the
    graph has a class-activation-map output."""
    c, h, w = default_cfg["input_size"]
    draft = {
        "name": name, "task": "emotion_classifier", "family": default_cfg["architecture"],
        "description": description,
        "inputs": [{"name": INPUT_NAME, "shape": ["batch", c, h, w], "layout": "NCHW", "color": default_cfg["color"],
                    "size": (w, h), "scale": 1.0 / 255.0, "mean": list(default_cfg["mean"]),
                    "std": list(default_cfg["std"])}],
        "outputs": [{"name": OUTPUT_NAME, "shape": ["batch", len(labels)]}],
        "labels": list(labels), "temperature": temperature, "metrics": metrics,
        "provenance": {"licence": licence, "training": provenance}, "licence": licence,
    }  # fmt: skip
    if cam:
        draft["outputs"].append(cam["output"])
        draft["explain"] = cam["explain"]
    return draft


def cam_spec(graph: nn.Module, input_size: Sequence[int], flip: bool) -> dict[str, Any]:
    """The manifest's `cam` output entry and `explain` block for a `CamNet` graph (its map size measured)."""
    with torch.no_grad():
        _, cam = graph.eval()(torch.zeros(1, *input_size))
    k, h, w = (int(v) for v in cam.shape[1:])
    return {"output": {"name": CAM_OUTPUT, "shape": ["batch", k, h, w]},
            "explain": {"method": "cam", "output": CAM_OUTPUT, "flip_averaged": bool(flip)}}  # fmt: skip


def explain_card_section(spec: dict[str, Any]) -> str:
    """The model card's paragraph on the graph's class-activation-map output."""
    _, k, h, w = spec["output"]["shape"]
    mirror = ", mirror-averaged like the logits" if spec["explain"]["flip_averaged"] else ""
    return (f"\n## Explanations\n\nThe graph also outputs `{CAM_OUTPUT}` [batch, {k}, {h}, {w}]: each class's "
            "activation map over the last feature map (Grad-CAM up to scale; an ensemble's maps are its members' "
            f"mean{mirror}). The service serves it with `explain=true`.\n")  # fmt: skip


def model_card(draft: dict[str, Any], cfg: dict[str, Any], params: int, report_text: str, extra: str = "",
               recall: dict[str, float] | None = None) -> str:  # fmt: skip
    """MODEL_CARD.md for a trained classifier; `recall` (label -> validation recall, the classes that have images:
    their mean is the balanced accuracy) adds a per-class line."""
    inp = draft["inputs"][0]
    runs = cfg.get("ensemble_runs")
    ensemble = f"\n- Ensemble: the mean of the logits of {len(runs)} runs: {', '.join(runs)}" if runs else ""
    metrics = "\n".join(f"- {ds}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items())
                        for ds, m in draft["metrics"].items())  # fmt: skip
    if recall:
        metrics += "\n- per-class recall: " + ", ".join(f"{lab}: {r:.3f}" for lab, r in recall.items())
    return f"""# {draft["name"]}

{draft["description"]}

- Architecture: `{draft["family"]}` ({params / 1e6:.2f}M parameters), config `{cfg.get("model_kwargs")}`{ensemble}
- Input: {inp["color"]} {inp["size"][0]}x{inp["size"][1]}, NCHW, x = (pixel/255 - {inp["mean"]}) / {inp["std"]}
- Output: logits over {", ".join(draft["labels"])}; temperature {draft["temperature"]}
- Training: dataset `{draft["provenance"]["training"]["dataset"]}` (fingerprint
  `{draft["provenance"]["training"]["dataset_fingerprint"]}`), {cfg.get("epochs")} epochs max, optimiser
  {cfg.get("optimizer")} lr {cfg.get("lr")}, {cfg.get("schedule")} schedule, augmentation {cfg.get("augment")},
  soft targets {cfg.get("soft_targets")}, flip TTA in graph {cfg.get("flip_tta")}
- Licence: {draft["licence"]}

## Validation metrics

{metrics}

```
{report_text}
```

## Limitations

Trained on 48x48 grayscale web faces (FER2013 images); accuracy drops on non-frontal, occluded or
low-light faces and on demographics under-represented in FER2013. Not for decisions about people.
{extra}
"""


@dataclass
class Member:
    """A trained network to export: its eval model, run config, checkpoint config and training time."""

    source: str
    model: nn.Module
    cfg: TrainConfig
    config: dict[str, Any]  # the checkpoint's config: classes, dataset_fingerprint, ...
    duration_s: float


def load_member(source: Path | str, head: str | None = None) -> Member:
    """A run folder's `best.pt` (its main head, or the second head named by `head`: see `load_checkpoint`), or
    `NAME@ALIAS` of a model our training job published (rebuilt from its ONNX), or `NAME@ALIAS#K`: member K
    (from 0) of such a published ensemble."""
    from training.checkpoints import load_checkpoint
    from training.config import TrainConfig

    if isinstance(source, str) and "@" in source and not Path(source).is_dir():
        from training.models.ensemble import EnsembleError, members_of

        if head not in (None, "main"):
            raise EnsembleError(f"{source}: a published graph has one head; --head {head} takes a run folder")
        from training.onnx_init import resolve_member, torch_model_from_store

        src = resolve_member(source)
        model, labels = torch_model_from_store(src.ref)
        run = src.manifest.provenance.training
        assert run is not None  # torch_model_from_store refuses models without a training config
        run_config = run.config
        if src.member is not None:
            model, run_config = members_of(model)[src.member], src.configs[src.member]
        share = len(src.configs) or 1
        fields = TrainConfig.__dataclass_fields__
        cfg = TrainConfig.from_dict({key: v for key, v in run_config.items() if key in fields})
        config = {**run_config, "classes": labels, "dataset_fingerprint": run.dataset_fingerprint}
        return Member(source, model, cfg, config, float(run.duration_s or 0.0) / share)
    run_dir = Path(source)
    model, cfg, ck = load_checkpoint(run_dir / "best.pt", head)
    log = run_dir / "history.json"
    history = json.loads(log.read_text()) if log.exists() else []
    return Member(run_dir.name, model, cfg, dict(ck["config"]), float(sum(h["time_s"] for h in history)))


def publish_run(
    run_dir: Path | str | Sequence[Path | str], data_dir: Path | None, name: str | None, store_root: Path,
    alias: str | None = "production",
    shipped: Path | None = SHIPPED_ROOT, int8: bool = False, int8_max_drop: float = 0.003,
    description: str | None = None,
    licence: str = "research-only (FER2013 images); FER+ labels MIT", log: Any = print, head: str | None = None,
    prior_correction: float = 0.0,
) -> Any:  # fmt: skip
    """Export `run_dir/best.pt`, check parity, compute validation metrics with onnxruntime and publish.

    The version is numbered after those of `store_root` and of the `shipped` layer beneath it (the package's),
    so a version published locally never shadows a shipped one of the same number.

    `run_dir` may also be `NAME@ALIAS` of a model this job published (see `load_member`). With several
    sources the published model is their ensemble (`LogitMean`, mean of the logits): they must share
    labels, input size and normalisation, and flip TTA. `name` and `description` default to the first
    source's config. `head` picks the second head of runs trained with one (`second_head`); the description
    then says so. A `prior_correction` strength above 0 puts the class frequencies of the dataset's training
    split into the manifest (`PriorCorrection`): the metrics are those of the corrected probabilities, as
    served, and `<dataset>_uncorrected` keeps the model's own.
    """
    from model_store import ModelStore
    from model_store.tensors import correct_prior, softmax
    from training.checkpoints import fit_to_model
    from training.data import load_dataset
    from training.loop import Runtime, to_tensor
    from training.metrics import (
        class_prior,
        classification_report,
        expected_calibration_error,
        fit_temperature,
        format_report,
    )
    from training.models.ensemble import EnsembleError, LogitMean

    sources = [run_dir] if isinstance(run_dir, Path | str) else list(run_dir)
    members = [load_member(src, head) for src in sources]
    first = members[0]
    cfg, conf = first.cfg, dict(first.config)
    if head is not None and head != "main" and description is None:
        description = f"{cfg.description} This graph is the network's {head} head ({', '.join(conf['classes'])})."
    for m in members[1:]:
        if m.config["classes"] != conf["classes"] or m.cfg.flip_tta != cfg.flip_tta:
            raise EnsembleError(f"{m.source}: its classes or flip TTA differ from {first.source}'s")
    model: nn.Module = LogitMean([m.model for m in members]) if len(members) > 1 else first.model
    cam = supports_cam(model)  # then the graph also outputs class activation maps (training.models.cam)
    net: nn.Module = CamNet(model, cfg.flip_tta) if cam else FlipTTA(model) if cfg.flip_tta else model
    default_cfg = dict(model.default_cfg)  # type: ignore[arg-type]
    cam_info = cam_spec(net, default_cfg["input_size"], cfg.flip_tta) if cam else None
    data = Path(data_dir or cfg.data or "")
    val = load_dataset(data, "val", cfg.format, **cfg.data_kwargs)
    (val,) = fit_to_model(model, val, log=log)
    rt = Runtime(torch.device("cpu"), None, False)
    x_val = to_tensor(val.images, default_cfg["mean"], default_cfg["std"], rt).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        outputs = (OUTPUT_NAME, CAM_OUTPUT) if cam else (OUTPUT_NAME,)
        onnx_path = export_onnx(net, Path(tmp) / "model.onnx", tuple(default_cfg["input_size"]), outputs=outputs)
        diff = parity_check(net, onnx_path, x_val[:64])
        log(f"[export] parity ok: max abs diff {diff:.2e}")
        logits = np.concatenate([ort_run(onnx_path, x_val[i : i + 512]) for i in range(0, len(x_val), 512)])
        rep = classification_report(val.targets, logits, val.labels)
        temp = fit_temperature(logits, val.targets)
        key = f"{val.name}_{val.split}"
        metrics = {key: {"accuracy": rep["accuracy"], "balanced_accuracy": rep["balanced_accuracy"],
                         "macro_f1": rep["macro_f1"], "ece": temp["ece_after"], "nll": temp["nll_after"],
                         "n": float(len(val))}}  # fmt: skip
        correction = None
        train = load_dataset(data, "train", cfg.format, **cfg.data_kwargs) if int8 or prior_correction > 0 else None
        if prior_correction > 0 and train is not None:
            if cfg.augment == "balanced":
                raise ExportRefused("--prior-correction: this run balanced its classes (augment: balanced), so it "
                                "did not learn the training prior; there is nothing to divide out")  # fmt: skip
            prior = class_prior(train.targets, train.labels, val.labels, train.soft if cfg.soft_targets else None)
            correction = {"prior": prior, "strength": prior_correction}
            probs = correct_prior(softmax(logits, temp["temperature"]), prior, prior_correction)
            metrics[f"{key}_uncorrected"] = metrics[key]
            rep = classification_report(val.targets, probs, val.labels)
            metrics[key] = {"accuracy": rep["accuracy"], "balanced_accuracy": rep["balanced_accuracy"],
                            "macro_f1": rep["macro_f1"], "ece": expected_calibration_error(probs, val.targets),
                            "nll": float(-np.log(np.clip(probs[np.arange(len(val)), val.targets], 1e-12, None)).mean()),
                            "n": float(len(val))}  # fmt: skip
            log(f"[export] prior correction {prior_correction}: accuracy {rep['accuracy']:.4f} balanced accuracy "
                f"{rep['balanced_accuracy']:.4f}")  # fmt: skip
        log(f"[export] onnx {key}: accuracy {rep['accuracy']:.4f} balanced accuracy {rep['balanced_accuracy']:.4f} "
            f"macro F1 {rep['macro_f1']:.4f} T {temp['temperature']:.3f}")  # fmt: skip
        files = {"model.onnx": onnx_path}
        extra = ""
        if int8 and train is not None:  # the int8 graph against the float graph, both without the correction
            pick = np.random.default_rng(0).permutation(len(train))[:INT8_CALIBRATION]
            (calib,) = fit_to_model(model, train.subset(pick), log=lambda s: None)
            x_calib = to_tensor(calib.images, default_cfg["mean"], default_cfg["std"], rt).numpy()
            own = f"{key}_uncorrected" if correction is not None else key
            extra = _int8(onnx_path, val, x_val, x_calib, metrics[own]["accuracy"], int8_max_drop, files, metrics,
                          own, log)  # fmt: skip
        config = cfg.to_dict()
        if len(members) > 1:
            config["ensemble"] = [m.cfg.to_dict() for m in members]
            conf["ensemble_runs"] = [f"{m.source} (seed {m.cfg.seed})" for m in members]
        provenance = {
            "git_commit": git_commit(), "dataset": f"{val.name} ({data.name})",
            "dataset_fingerprint": conf.get("dataset_fingerprint"), "config": config,
            "date": datetime.now(UTC).isoformat(), "duration_s": sum(m.duration_s for m in members),
        }  # fmt: skip
        draft = manifest_draft(name or cfg.name, conf, default_cfg, val.labels, metrics,
                               round(temp["temperature"], 4), provenance,
                               cfg.description if description is None else description, licence,
                               cam_info)  # fmt: skip
        if correction is not None:
            draft["prior_correction"] = correction
            extra += (f"\n## Prior correction\n\nServed probabilities are divided by the training class frequencies "
                      f"to the power {prior_correction} and renormalised (prior: "
                      + ", ".join(f"{c} {p:.3f}" for c, p in zip(val.labels, prior, strict=True))
                      + f"). The model's own metrics: {metrics[key + '_uncorrected']}.\n")  # fmt: skip
        params = sum(p.numel() for p in model.parameters())
        extra += explain_card_section(cam_info) if cam_info else ""
        recall = {lab: m["recall"] for lab, m in rep["per_class"].items() if m["support"]}  # classes with images
        card = model_card(draft, conf, params, format_report(rep), extra, recall=recall)
        store = ModelStore(store_root, shipped=shipped)
        manifest = store.publish(draft, files, card=card, alias=alias)
    log(f"[export] published {manifest.name}@{manifest.version} to {store_root}")
    return manifest


def _int8(onnx_path: Path, val: Any, x_val: np.ndarray, x_calib: np.ndarray, float_acc: float, max_drop: float,
          files: dict[str, Path], metrics: dict[str, dict[str, float]], key: str, log: Any) -> str:  # fmt: skip
    """Quantise (calibrated on `x_calib`, training images), check accuracy on `x_val` against the float model,
    add `model.int8.onnx` when within `max_drop`."""
    q = quantize_int8(onnx_path, x_calib, onnx_path.with_name(INT8_FILE))
    q_logits = np.concatenate([ort_run(q, x_val[i : i + 512]) for i in range(0, len(x_val), 512)])
    q_acc = float((q_logits.argmax(1) == val.targets).mean())
    log(f"[export] int8 accuracy {q_acc:.4f} (float {float_acc:.4f})")
    if float_acc - q_acc > max_drop:
        log(f"[export] int8 dropped: accuracy loss {float_acc - q_acc:.4f} > {max_drop}")
        return ""
    files[INT8_FILE] = q
    metrics[key]["int8_accuracy"] = q_acc
    return (f"\nAn int8 variant `{INT8_FILE}` (static QDQ: uint8 activations calibrated on {INT8_CALIBRATION:,} "
            f"training faces, per-channel int8 weights) is included and served on the CPU (`EMOSERVE_INT8`, default "
            f"true): accuracy {q_acc:.4f} against the float graph's {float_acc:.4f}.\n")  # fmt: skip


def publish_shipped(run_dir: Path | str | Sequence[Path | str], data_dir: Path | None, name: str | None,
                    shipped_root: Path | None = None, alias: str = "production", log: Any = print,
                    **kw: Any) -> Any:  # fmt: skip
    """Publish into the read-only layer committed with the package (`model_store/shipped/<name>/<version>/`).

    `alias` moves to the new version through `ship_alias` (the move joins the alias history, so a fresh
    install can roll back).
    """
    root = Path(shipped_root or SHIPPED_ROOT)
    manifest = publish_run(run_dir, data_dir, name, root, alias=None, shipped=None, log=log, **kw)
    ship_alias(root, manifest.name, alias, manifest.version)
    return manifest


def ship_alias(root: Path, name: str, alias: str, version: int) -> None:
    """Point `alias` of a model in the shipped layer at `version` and tidy up. The move goes into the alias
    history (`ModelStore.set_alias`), which `emoserve models rollback` on a fresh install steps back through."""
    from model_store import ModelStore

    store = ModelStore(root, shipped=None)
    if store.aliases(name).get(alias) != version:
        store.set_alias(name, alias, version)
    (root / name / ".lock").unlink(missing_ok=True)  # the writer's lock file is not part of the package
    staging = root / ".staging"
    if staging.is_dir() and not any(staging.iterdir()):
        staging.rmdir()
