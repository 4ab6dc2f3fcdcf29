"""Start a training run from a published ONNX classifier (fine-tuning without its torch checkpoint).

    init_from_onnx(model, onnx_path, src_labels, classes, calib) -> list[str]

The exporter folds every BatchNorm into the convolution before it, so the ONNX file holds one
weight and one bias per convolution. Convolutions are matched to the torch model's in execution
order (shapes must agree). Each folded pair is loaded as conv weight = folded weight and BatchNorm =
"plus the folded bias"; then one pass over `calib` images records every BatchNorm's input mean and
variance, which become its running statistics, with gamma = sqrt(var + eps) and beta = mean + bias.
The model's eval output is unchanged by that step (it still equals the ONNX graph), while in training
mode each BatchNorm again sees inputs whose batch statistics match its running ones.
The final Linear (the classifier head) is loaded with its rows mapped by label name.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.nn as nn

if TYPE_CHECKING:
    from model_store import Manifest


class OnnxInitError(ValueError):
    """The ONNX graph does not fit the torch model."""


Dense = tuple[np.ndarray, np.ndarray]  # (weight [out, in], bias [out]) of a Gemm/MatMul


def onnx_params(path: Path) -> tuple[list[tuple[np.ndarray, np.ndarray | None]], list[Dense]]:
    """(conv (weight, bias) pairs, dense (weight, bias) pairs) of an ONNX graph, each in first-execution order."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    init = {t.name: numpy_helper.to_array(t).copy() for t in graph.initializer}
    for node in graph.node:  # Identity nodes alias initialisers (shared weights of the flip-TTA branch)
        if node.op_type == "Identity" and node.input[0] in init:
            init[node.output[0]] = init[node.input[0]]
        if node.op_type == "Constant" and node.attribute and node.attribute[0].t.dims:
            init[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    convs: list[tuple[np.ndarray, np.ndarray | None]] = []
    dense: list[Dense] = []
    seen: set[int] = set()
    for node in graph.node:
        w = init.get(node.input[1]) if len(node.input) > 1 else None
        if w is None or id(w) in seen or node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        seen.add(id(w))
        bias = init.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if node.op_type == "Conv":
            convs.append((w, bias))
        else:
            trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
            dense.append((w if trans_b else w.T, bias if bias is not None else np.zeros(w.shape[0], np.float32)))
    if not dense:
        raise OnnxInitError(f"{path}: no Gemm/MatMul head found")
    return convs, dense


def execution_order(
    model: nn.Module, in_shape: tuple[int, ...]
) -> tuple[list[tuple[nn.Conv2d, nn.BatchNorm2d | None]], list[nn.Linear]]:
    """One eval forward pass: the convolutions in the order they first run, each with the BatchNorm fed by its
    output, and the Linear layers in the order they first run."""
    calls: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: calls.append((mod, inp[0], out)))
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.BatchNorm2d | nn.Linear)
    ]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, *in_shape))
    finally:
        for h in hooks:
            h.remove()
    convs: list[tuple[nn.Conv2d, nn.BatchNorm2d | None]] = []
    linears: list[nn.Linear] = []
    for i, (mod, _, out) in enumerate(calls):
        if isinstance(mod, nn.Conv2d) and all(mod is not c for c, _ in convs):
            bn = next((m for m, x, _ in calls[i + 1 :] if isinstance(m, nn.BatchNorm2d) and x is out), None)
            convs.append((mod, bn))
        elif isinstance(mod, nn.Linear) and all(mod is not m for m in linears):
            linears.append(mod)
    return convs, linears


def init_from_onnx(
    model: nn.Module, path: Path, src_labels: list[str], classes: list[str], calib: torch.Tensor
) -> list[str]:
    """Load a BN-folded ONNX classifier into `model` (see the module docstring); returns the classes left fresh.

    `calib`: normalised training images [N, C, H, W] for the BatchNorm statistics. An ensemble (`LogitMean`)
    is loaded member by member: its graph runs the members one after the other, each ending in its head.
    """
    from training.models.ensemble import members_of

    convs, dense = onnx_params(path)
    shape = tuple(calib.shape[1:])
    order, linears = execution_order(model, shape)
    if len(order) != len(convs):
        raise OnnxInitError(f"{path.name} has {len(convs)} convolutions, the model {len(order)}")
    for i, ((conv, _), (w, _)) in enumerate(zip(order, convs, strict=True)):
        if tuple(conv.weight.shape) != w.shape:
            raise OnnxInitError(f"conv {i}: ONNX {w.shape} vs model {tuple(conv.weight.shape)}")
    heads: set[int] = set()  # each network's last Linear (in execution order) is its classifier head
    for net in members_of(model):
        own = [fc for fc in linears if any(fc is m for m in net.modules())]
        if own:
            heads.add(id(own[-1]))
    if len(linears) != len(dense) or not heads:
        raise OnnxInitError(f"{path.name} has {len(dense)} dense layers, the model {len(linears)}")
    for i, (fc, (w, _)) in enumerate(zip(linears, dense, strict=True)):
        rows_ok = id(fc) in heads or fc.weight.shape[0] == w.shape[0]
        if tuple(fc.weight.shape[1:]) != w.shape[1:] or not rows_ok:
            raise OnnxInitError(f"{path.name}: dense layer {i} {w.shape} vs model {tuple(fc.weight.shape)}")
    with torch.no_grad():
        for i, ((conv, bn), (w, b)) in enumerate(zip(order, convs, strict=True)):
            conv.weight.copy_(torch.from_numpy(w))
            bias = torch.from_numpy(b) if b is not None else torch.zeros(w.shape[0])
            if bn is None:
                if conv.bias is None:
                    raise OnnxInitError(f"conv {i} has a bias in ONNX but neither bias nor BatchNorm in the model")
                conv.bias.copy_(bias)
                continue
            if conv.bias is not None:
                conv.bias.zero_()
            bn.weight.fill_(1.0)
            bn.bias.copy_(bias)
            bn.running_mean.zero_()  # type: ignore[union-attr]
            bn.running_var.fill_(1.0 - bn.eps)  # type: ignore[union-attr]
        missing: set[str] = set()
        for fc, (w, b) in zip(linears, dense, strict=True):
            if id(fc) not in heads:
                fc.weight.copy_(torch.from_numpy(w))
                if fc.bias is not None:
                    fc.bias.copy_(torch.from_numpy(b))
                continue
            for i, c in enumerate(classes):  # a classifier head: rows mapped by label name
                if c in src_labels:
                    fc.weight[i] = torch.from_numpy(w[src_labels.index(c)])
                    fc.bias[i] = float(b[src_labels.index(c)])
                else:
                    missing.add(c)
        _calibrate_batchnorm(model, [bn for _, bn in order if bn is not None], calib)
    return [c for c in classes if c in missing]


def _calibrate_batchnorm(model: nn.Module, bns: list[nn.BatchNorm2d], calib: torch.Tensor) -> None:
    """Set each BatchNorm's running stats to its input statistics on `calib`, keeping its eval output."""
    sums: dict[nn.Module, list[torch.Tensor]] = {bn: [] for bn in bns}

    def record(mod: nn.Module, inp: tuple[torch.Tensor, ...], _: torch.Tensor) -> None:
        x = inp[0].double()
        sums[mod].append(
            torch.stack(
                [x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), torch.full_like(x[0, :, 0, 0], x.numel() / x.shape[1])]
            )
        )

    hooks = [bn.register_forward_hook(record) for bn in bns]
    try:
        with torch.no_grad():
            model.eval()
            for start in range(0, len(calib), 256):
                model(calib[start : start + 256])
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        for bn in bns:
            s, s2, n = torch.stack(sums[bn]).sum(0)
            mean = s / n
            var = (s2 / n - mean * mean).clamp_min(1e-6)
            bn.running_mean.copy_(mean)  # type: ignore[union-attr]
            bn.running_var.copy_(var)  # type: ignore[union-attr]
            bn.bias.add_(mean.float())
            bn.weight.copy_(torch.sqrt(var + bn.eps).float())


def resolve_source(source: str, store_root: Path | None = None) -> tuple[Manifest, Path]:
    """(manifest, ONNX path) of `NAME@ALIAS` in the model store, or of an `.onnx` file with its manifest beside it."""
    from model_store import Manifest, ModelNotFound, ModelStore

    if source.endswith(".onnx"):
        path = Path(source)
        return Manifest.from_file(path.parent / "manifest.json"), path
    if store_root is None:
        from model_store.store import default_root

        store_root = default_root()
    try:
        resolved = ModelStore(store_root).get(source)
    except ModelNotFound as exc:  # e.g. an earlier version the package no longer ships: say how to get it
        from model_store.pull import missing_model_advice

        raise ModelNotFound(f"{exc}; {missing_model_advice(source)}") from exc
    return resolved.manifest, resolved.model_path


def refuse_ensemble(manifest: Manifest, source: str) -> None:
    """Raise `OnnxInitError` when `source` is an ensemble: a single network cannot start from it."""
    run = manifest.provenance.training
    if run is not None and run.config.get("ensemble"):
        raise OnnxInitError(
            f"{source} is itself an ensemble of {len(run.config['ensemble'])} networks; name one member as"
            f" {source}#K (K from 0) or one of its members' runs"
        )


class MemberSource(NamedTuple):
    """A resolved `NAME@ALIAS` (`member` None) or `NAME@ALIAS#K` (`member` K, `configs` all members' configs)."""

    ref: str
    manifest: Manifest
    onnx_path: Path
    member: int | None
    configs: list[dict[str, Any]]


def resolve_member(source: str, store_root: Path | None = None) -> MemberSource:
    """Resolve `source`; `OnnxInitError` for an ensemble without `#K`, or a K the ensemble does not have."""
    ref, has_k, k = source.partition("#")
    manifest, path = resolve_source(ref, store_root)
    if not has_k:
        refuse_ensemble(manifest, source)
        return MemberSource(ref, manifest, path, None, [])
    run = manifest.provenance.training
    configs: list[dict[str, Any]] = (run.config.get("ensemble") or [run.config]) if run is not None else []
    if len(configs) < 2 or not k.isdigit() or int(k) >= len(configs):
        raise OnnxInitError(f"{source}: it is no ensemble with a member {k!r} (members: {len(configs)})")
    return MemberSource(ref, manifest, path, int(k), configs)


def check_reproduces(
    model: nn.Module, onnx_path: Path, manifest: Manifest, x: torch.Tensor, cols: list[tuple[int, int]] | None = None
) -> float:
    """Max |torch - onnxruntime| on `x` (torch mirror-averaged when the graph does flip TTA, as its manifest says).

    `cols` pairs (torch column, ONNX column) to compare when the label sets differ. Raises `OnnxInitError` above 1e-3.
    """
    from training.models.ensemble import FlipTTA
    from training.onnx_run import ort_run

    run = manifest.provenance.training
    net = FlipTTA(model) if run and run.config.get("flip_tta") else model
    with torch.no_grad():
        ours = net.eval()(x).numpy()
    ref = ort_run(onnx_path, x.numpy())
    if cols is not None:
        ours, ref = ours[:, [i for i, _ in cols]], ref[:, [j for _, j in cols]]
    diff = float(np.abs(ours - ref).max())
    if not diff <= 1e-3:  # NaN fails too
        raise OnnxInitError(f"{onnx_path}: the torch model differs from the ONNX graph by {diff:.2e}")
    return diff


def build_networks(configs: list[dict[str, Any]], num_classes: int, in_chans: int, **override: Any) -> list[nn.Module]:
    """Fresh networks as the run configs (one per ensemble member) declare them, `override` on their model_kwargs."""
    from training.models import create_model

    return [create_model(str(c["model"]), num_classes, in_chans, False, **{**c.get("model_kwargs", {}), **override})
            for c in configs]  # fmt: skip


def torch_model_from_store(ref: str, store_root: Path | None = None) -> tuple[nn.Module, list[str]]:
    """Rebuild the torch model of a store artifact our training job produced (for Grad-CAM, fine-tuning).

    The architecture comes from the manifest's training config (one per member for an ensemble); weights
    from the ONNX file (BatchNorm statistics re-estimated on random inputs, which leaves eval outputs exact),
    then `check_reproduces`.
    Returns (eval model, labels).
    """
    from training.models.ensemble import LogitMean

    manifest, onnx_path = resolve_source(ref, store_root)
    run = manifest.provenance.training
    if run is None or "model" not in run.config:
        raise OnnxInitError(f"{ref} has no training config in its manifest (not made by `emoserve train`)")
    if run.config.get("pca"):
        raise OnnxInitError(f"{ref} has a PCA front end; rebuild it from its checkpoint instead")
    labels = list(manifest.labels or [])
    in_chans = len(manifest.input.mean)
    nets = build_networks(run.config.get("ensemble") or [run.config], len(labels), in_chans)
    model = LogitMean(nets) if len(nets) > 1 else nets[0]
    size = tuple(model.default_cfg["input_size"])  # type: ignore[index]
    x = torch.randn(16, *size, generator=torch.Generator().manual_seed(0))
    init_from_onnx(model, onnx_path, labels, labels, x)
    check_reproduces(model, onnx_path, manifest, x)
    return model.eval(), labels
