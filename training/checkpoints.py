"""Networks from configs and checkpoints: `build_model`, `load_checkpoint`, and `fit_to_model` (the splits
resized to a network's input). Below `training.train` and `training.export`, which both use them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from training.config import TrainConfig
from training.data import FaceDataset
from training.data.pca import PCAProjection
from training.models import create_model


class WithPCA(nn.Module):
    """A PCA projection (training/data/pca.py) in front of a network."""

    def __init__(self, pca: PCAProjection, net: nn.Module) -> None:
        super().__init__()
        self.pca, self.net = pca, net
        self.default_cfg = dict(net.default_cfg)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.pca(x))


def build_model(cfg: TrainConfig, num_classes: int, in_chans: int, state: dict[str, Any] | None = None) -> nn.Module:
    """The network of `cfg`; with `state` (a checkpoint's state_dict) the PCA buffers get their saved shapes."""
    net = create_model(cfg.model, num_classes, in_chans, pretrained=cfg.pretrained, **cfg.model_kwargs)
    if not cfg.pca:
        return net
    if state is None:
        raise ValueError("a PCA model is built by fitting (train_run) or from a checkpoint state")
    comps = state["pca.components"]
    pca = PCAProjection(state["pca.means"].clone(), [c.clone() for c in comps])
    return WithPCA(pca, net)


def load_checkpoint(path: Path) -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """Rebuild the model of a `best.pt`/`last.pt` checkpoint: (model in eval mode, config, checkpoint dict)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    cfg = TrainConfig.from_dict({k: v for k, v in ckpt["config"].items() if k in TrainConfig.__dataclass_fields__})
    model = build_model(cfg, int(ckpt["config"]["num_classes"]), int(ckpt["config"]["in_chans"]), ckpt["model"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, cfg, ckpt


def fit_to_model(model: nn.Module, *splits: FaceDataset, log: Any = print) -> tuple[FaceDataset, ...]:
    """Resize the splits' images to the model's declared input size (what the exported manifest will say)."""
    _, h, w = model.default_cfg["input_size"]  # type: ignore[index]
    if splits[0].images.shape[1:3] == (h, w):
        return splits
    log(f"[train] images {splits[0].images.shape[1]}x{splits[0].images.shape[2]} resized to the model's {h}x{w}")
    return tuple(s.resized(h, w) for s in splits)
