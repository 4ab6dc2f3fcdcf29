"""Explainability: Grad-CAM heat maps, feature-map grids and a contact sheet of explained faces.

    heat = gradcam(model, x)              # x: (C,H,W) or (1,C,H,W), already normalised; -> (H,W) in 0..1
    png = overlay(face, heat)             # BGR uint8, OpenCV JET colormap blended on the face
    grid = feature_grid(model, x, "features.0")
    page = explain_sheet([(face, heat, ["1: happy 0.93"])], "title")   # one row per face

The Grad-CAM layer is `layer` if given, else the model's `gradcam_layer` attribute (a dotted module
name), else the last Conv2d. Token models (ViT) provide `gradcam_reshape(tokens) -> (B,D,h,w)`.
Torch is needed here (imported inside the functions). The `emoserve explain` command, which finds the faces
of a photo with the service's detector and alignment, is emoserve_cli/explain.py.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    import torch.nn as nn


def find_layer(model: nn.Module, layer: str | None = None) -> nn.Module:
    """The module named `layer`, the model's `gradcam_layer`, or its last Conv2d."""
    import torch.nn as nn

    name = layer or getattr(model, "gradcam_layer", None)
    if isinstance(name, str):
        return model.get_submodule(name)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("model has no Conv2d layer; pass `layer`")
    return convs[-1]


def find_layers(model: nn.Module, layer: str | None = None) -> list[tuple[nn.Module, nn.Module]]:
    """(network, layer) pairs to hook: one per member of an ensemble (each its own layer) unless `layer` is given."""
    from training.models.ensemble import members_of

    nets = members_of(model) if layer is None else [model]
    return [(net, find_layer(net, layer)) for net in nets]


@contextlib.contextmanager
def _no_inplace(model: nn.Module) -> Iterator[None]:
    """Turn off in-place activations so that hooked tensors are not overwritten."""
    changed = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    for m in changed:
        m.inplace = False  # type: ignore[assignment]
    try:
        yield
    finally:
        for m in changed:
            m.inplace = True  # type: ignore[assignment]


def _as_batch(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(0) if x.dim() == 3 else x


def _to_map(model: nn.Module, t: torch.Tensor) -> torch.Tensor:
    reshape = getattr(model, "gradcam_reshape", None)
    if t.dim() == 3 and callable(reshape):
        out: torch.Tensor = reshape(t)
        return out
    if t.dim() != 4:
        raise ValueError(f"Grad-CAM layer output has shape {tuple(t.shape)}; need (B,C,h,w)")
    return t


def _raw_cam(
    model: nn.Module, x: torch.Tensor, target: int | None, layer: str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Grad-CAM map before its ReLU at the input size (H,W), logits (1,K)) for class `target` (default: the top)."""
    import torch
    import torch.nn.functional as F

    pairs = find_layers(model, layer)
    stores: list[dict[str, torch.Tensor]] = [{} for _ in pairs]

    def hook(store: dict[str, torch.Tensor]) -> Any:
        def fwd_hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            t = out[0] if isinstance(out, tuple) else out
            store["act"] = t
            t.register_hook(lambda g: store.__setitem__("grad", g))

        return fwd_hook

    was_training = model.training
    model.eval()
    handles = [module.register_forward_hook(hook(store)) for (_, module), store in zip(pairs, stores, strict=True)]
    try:
        with _no_inplace(model), torch.enable_grad():
            logits = model(x)
            cls = int(logits[0].argmax()) if target is None else int(target)
            model.zero_grad(set_to_none=True)
            logits[0, cls].backward()
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    cam = torch.zeros(x.shape[-2:])
    for (net, _), store in zip(pairs, stores, strict=True):  # an ensemble's map: its members' summed, then ReLU
        if "grad" not in store:
            raise RuntimeError("the Grad-CAM layer received no gradient; is it on the path to the output?")
        act, grad = _to_map(net, store["act"].detach()), _to_map(net, store["grad"].detach())
        weights = grad.mean(dim=(2, 3), keepdim=True)
        part = (weights * act).sum(1, keepdim=True)
        cam += F.interpolate(part, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    return cam, logits.detach()


def gradcam_logits(
    model: nn.Module, image: torch.Tensor, target: int | None = None, layer: str | None = None, flip: bool = False
) -> tuple[np.ndarray, torch.Tensor]:
    """Grad-CAM map (H,W, 0..1) for class `target` (default: the top class) and the logits (1,K).

    With `flip` (a model served with mirror averaging) the logits are those of the image and its mirror
    averaged, and the map is the mean of both maps, the mirror's mirrored back, as the served `cam` output is.
    """
    import torch

    x = _as_batch(image)[:1]
    if not flip:
        cam, logits = _raw_cam(model, x, target, layer)
    else:
        mirror = torch.flip(x, dims=[3])
        with torch.no_grad():
            logits = (model.eval()(x) + model(mirror)) * 0.5
        cls = int(logits[0].argmax()) if target is None else int(target)
        cam = (_raw_cam(model, x, cls, layer)[0] + torch.flip(_raw_cam(model, mirror, cls, layer)[0], dims=[1])) * 0.5
    cam = torch.relu(cam)
    peak = float(cam.max())
    heat = (cam / peak).numpy() if peak > 0 else np.zeros(cam.shape, dtype=np.float32)
    return heat.astype(np.float32), logits


def gradcam(
    model: nn.Module, image_tensor: torch.Tensor, target: int | None = None, layer: str | None = None,
    flip: bool = False,
) -> np.ndarray:  # fmt: skip
    """Grad-CAM heat map (H, W) float32 in 0..1 for `target` (default: the predicted class)."""
    return gradcam_logits(model, image_tensor, target, layer, flip)[0]


def overlay(face: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend the JET-coloured heat map onto the face (gray or BGR uint8); returns BGR uint8."""
    import cv2

    bgr = cv2.cvtColor(face, cv2.COLOR_GRAY2BGR) if face.ndim == 2 else face
    heat = cv2.resize(heatmap.astype(np.float32), (bgr.shape[1], bgr.shape[0]), interpolation=cv2.INTER_LINEAR)
    colored = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(bgr, 1 - alpha, colored, alpha, 0)


def feature_maps(model: nn.Module, image: torch.Tensor, layer: str | None = None) -> np.ndarray:
    """Activations (C, h, w) of `layer` (default: the Grad-CAM layer) for one image."""
    import torch

    store: list[torch.Tensor] = []
    net, module = find_layers(model, layer)[0]  # an ensemble: its first member's layer
    handle = module.register_forward_hook(lambda _m, _i, out: store.append(out[0] if isinstance(out, tuple) else out))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(_as_batch(image)[:1])
    finally:
        handle.remove()
        model.train(was_training)
    return _to_map(net, store[0])[0].numpy()


def feature_grid(
    model: nn.Module, image: torch.Tensor, layer: str | None = None, max_maps: int = 64, cell: int = 48
) -> np.ndarray:
    """A gray uint8 mosaic of the first `max_maps` channels of `layer`, each min-max scaled, `cell` px."""
    import cv2

    maps = feature_maps(model, image, layer)[:max_maps]
    cols = math.ceil(math.sqrt(len(maps)))
    rows = math.ceil(len(maps) / cols)
    grid = np.full((rows * (cell + 2), cols * (cell + 2)), 255, np.uint8)
    for i, m in enumerate(maps):
        lo, hi = float(m.min()), float(m.max())
        tile = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
        tile8 = cv2.resize((tile * 255).astype(np.uint8), (cell, cell), interpolation=cv2.INTER_NEAREST)
        r, c = divmod(i, cols)
        grid[r * (cell + 2) + 1 : r * (cell + 2) + 1 + cell, c * (cell + 2) + 1 : c * (cell + 2) + 1 + cell] = tile8
    return grid


def explain_sheet(
    rows: Sequence[tuple[np.ndarray, np.ndarray, Sequence[str]]], title: str, cell: int = 192
) -> np.ndarray:
    """A white BGR uint8 page: a title line, then one row per face: the face enlarged to `cell` px wide, the same
    face with its Grad-CAM overlay, and the caption lines beside them (the first one larger).

    rows: (face crop, gray or BGR uint8; heat map (h, w) in 0..1; caption lines).
    """
    import cv2

    font, pad, gap = cv2.FONT_HERSHEY_SIMPLEX, 12, 8
    tiles = []
    for face, heat, caption in rows:
        h = max(1, round(cell * face.shape[0] / face.shape[1]))
        big = cv2.resize(face, (cell, h), interpolation=cv2.INTER_CUBIC)
        big = cv2.cvtColor(big, cv2.COLOR_GRAY2BGR) if big.ndim == 2 else big
        tiles.append((big, overlay(big, heat), list(caption)))
    text_w = max([cv2.getTextSize(line, font, 0.7 if i == 0 else 0.55, 2 if i == 0 else 1)[0][0]
                  for *_, caption in tiles for i, line in enumerate(caption)] + [0])  # fmt: skip
    title_w = cv2.getTextSize(title, font, 0.7, 2)[0][0]
    width = max(pad + 2 * cell + gap + 2 * pad + text_w, title_w + 2 * pad)
    title_h = 44
    height = title_h + sum(big.shape[0] + pad for big, _, _ in tiles) + pad
    page = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(page, title, (pad, 30), font, 0.7, (0, 0, 0), 2, cv2.LINE_AA)
    y = title_h
    for big, over, caption in tiles:
        rh = big.shape[0]
        page[y : y + rh, pad : pad + cell] = big
        page[y : y + rh, pad + cell + gap : pad + 2 * cell + gap] = over
        x, ty = pad + 2 * cell + gap + 2 * pad, y + 26
        for i, line in enumerate(caption):
            scale, thick = (0.7, 2) if i == 0 else (0.55, 1)
            cv2.putText(page, line, (x, ty), font, scale, (0, 0, 0) if i == 0 else (70, 70, 70), thick, cv2.LINE_AA)
            ty += 30 if i == 0 else 24
        y += rh + pad
    return page


# ----------------------------------------------------------------------------- loading and preprocessing


def preprocess(image_bgr: np.ndarray, cfg: dict[str, Any]) -> tuple[torch.Tensor, np.ndarray]:
    """(normalised tensor (C,H,W), resized face uint8 for display) following the model's default_cfg."""
    import cv2
    import torch

    c, h, w = cfg["input_size"]
    if cfg.get("color", "GRAY") == "GRAY" or c == 1:
        face = image_bgr if image_bgr.ndim == 2 else cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
        face = cv2.resize(face, (w, h), interpolation=cv2.INTER_AREA)
        arr = face[None].astype(np.float32) / 255.0
    else:
        bgr = cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR) if image_bgr.ndim == 2 else image_bgr
        face = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)
        arr = cv2.cvtColor(face, cv2.COLOR_BGR2RGB).transpose(2, 0, 1).astype(np.float32) / 255.0
    mean = np.asarray(cfg["mean"], np.float32)[:, None, None]
    std = np.asarray(cfg["std"], np.float32)[:, None, None]
    return torch.from_numpy((arr - mean) / std), face


def load_checkpoint_model(
    checkpoint: Path, model_name: str | None = None, num_classes: int | None = None, **model_kwargs: Any
) -> tuple[nn.Module, list[str]]:
    """Rebuild a model from a state_dict file or a training checkpoint dict and return it with class names.

    Accepted: a bare state_dict (then `model_name` is needed), or `{"model": state_dict, "config": {...}}`
    where config may hold `model` (registry name), `model_kwargs`/`kwargs`, `num_classes`, `in_chans`
    and `classes`/`class_names`. Explicit arguments win over the checkpoint's config.
    """
    import torch

    from training.models import create_model

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict) and ckpt["config"].get("second_labels"):
        from training.checkpoints import load_checkpoint

        net, _, main = load_checkpoint(checkpoint)  # a run trained with a second head: its main head
        return net, list(main["config"]["classes"])
    config: dict[str, Any] = {}
    state = ckpt
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        state = ckpt["model"]
        config = dict(ckpt.get("config") or {})
        for key in ("classes", "class_names"):
            if key in ckpt and key not in config:
                config[key] = ckpt[key]
    name = model_name or config.get("model") or config.get("arch")
    if not isinstance(name, str):
        raise ValueError(f"{checkpoint} does not name its model; pass --model NAME")
    kwargs = dict(config.get("model_kwargs") or config.get("kwargs") or {})
    kwargs.update(model_kwargs)
    classes = list(config.get("classes") or config.get("class_names") or [])
    n = num_classes or config.get("num_classes") or (len(classes) if classes else 7)
    in_chans = int(config.get("in_chans", 1))
    model = create_model(name, int(n), in_chans, pretrained=False, **kwargs)
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, classes if len(classes) == int(n) else [f"class{i}" for i in range(int(n))]
