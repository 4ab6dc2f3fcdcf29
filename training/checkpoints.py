"""Networks from configs and checkpoints: `build_model`, `load_checkpoint`, and `fit_to_model` (the splits
resized to a network's input). Below `training.train` and `training.export`, which both use them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from training.config import TrainConfig
from training.data import FaceDataset
from training.data.pca import PCAProjection
from training.models import create_model


class HeadError(ValueError):
    """A checkpoint has no head of the name asked for."""


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


def load_checkpoint(path: Path, head: str | None = None) -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """Rebuild the model of a `best.pt`/`last.pt` checkpoint: (model in eval mode, config, checkpoint dict).

    A network trained with a second head (`second_head`) comes back as an ordinary one-head network: its main
    head, or with `head` set to the second head's format (e.g. "fer2013") that head, with the config and the
    checkpoint's `classes` and `format` of that head.
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    conf = dict(ckpt["config"])
    cfg = TrainConfig.from_dict({k: v for k, v in conf.items() if k in TrainConfig.__dataclass_fields__})
    model = build_model(replace(cfg, pretrained=False), int(conf["num_classes"]), int(conf["in_chans"]), ckpt["model"])
    model.load_state_dict(ckpt["model"])
    second = conf.get("second_labels")
    if second is not None:
        n_main = len(conf["classes"])
        if head in (None, "main"):
            rows = list(range(n_main))
        elif head == second["format"]:
            rows = list(range(n_main, int(conf["num_classes"])))
            rel = cfg.data_kwargs.get(second["format"])  # where the run read that head's labels, from its data
            data = str(Path(cfg.data) / rel) if cfg.data and isinstance(rel, str) else cfg.data
            conf.update(classes=list(second["classes"]), format=second["format"], data_kwargs={}, data=data)
            conf.pop("second_labels")
            cfg = replace(cfg, format=second["format"], data_kwargs={}, data=data, second_head=0.0)
        else:
            raise HeadError(f"{path}: no head {head!r}; its heads are main and {second['format']}")
        keep_outputs(model, rows, int(conf["num_classes"]))
        conf["num_classes"] = len(rows)
        ckpt = {**ckpt, "config": conf}
    elif head not in (None, "main"):
        raise HeadError(f"{path}: no head {head!r}; it was trained with one head")
    model.eval()
    return model, cfg, ckpt


def keep_outputs(model: nn.Module, rows: list[int], outputs: int) -> None:
    """Cut the network's last linear layer (of `outputs` rows, one per logit) down to the rows `rows` (the same
    logits for those classes)."""
    name = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    old = model.get_submodule(name)
    if not isinstance(old, nn.Linear) or old.out_features != outputs:
        raise HeadError(f"the network's last linear layer ({name}) is not its {outputs}-logit head")
    new = nn.Linear(old.in_features, len(rows), bias=old.bias is not None)
    with torch.no_grad():
        new.weight.copy_(old.weight[rows])
        if old.bias is not None and new.bias is not None:
            new.bias.copy_(old.bias[rows])
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def fit_to_model(model: nn.Module, *splits: FaceDataset, log: Any = print) -> tuple[FaceDataset, ...]:
    """Resize the splits' images to the model's declared input size (what the exported manifest will say)."""
    _, h, w = model.default_cfg["input_size"]  # type: ignore[index]
    if splits[0].images.shape[1:3] == (h, w):
        return splits
    log(f"[train] images {splits[0].images.shape[1]}x{splits[0].images.shape[2]} resized to the model's {h}x{w}")
    return tuple(s.resized(h, w) for s in splits)
