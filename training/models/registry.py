"""Model registry: `create_model(name, num_classes, in_chans, pretrained)`.

Every model instance carries `default_cfg` (as timm does): a dict with `input_size` (C, H, W),
`mean`, `std` (per channel, applied to pixels scaled to 0..1), `color` ("GRAY" or "RGB") and
`architecture`. The exporter copies it into the manifest.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch.nn as nn

ModelFn = Callable[..., nn.Module]
_MODELS: dict[str, ModelFn] = {}

# Modules that define models (imported on first use).
_MODEL_MODULES = [
    "training.models.cnn",
    "training.models.resnet",
    "training.models.vgg",
    "training.models.densenet",
    "training.models.efficientnet",
    "training.models.inception",
    "training.models.vit",
    "training.models.mobilenet",
]


def register_model(name: str) -> Callable[[ModelFn], ModelFn]:
    def deco(fn: ModelFn) -> ModelFn:
        _MODELS[name] = fn
        return fn

    return deco


def _load_all() -> None:
    for mod in _MODEL_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:  # a real missing dependency inside an existing module
                raise


def list_models() -> list[str]:
    _load_all()
    return sorted(_MODELS)


def create_model(
    name: str, num_classes: int = 7, in_chans: int = 1, pretrained: bool = False, **kwargs: Any
) -> nn.Module:
    """Build a registered model; it has `default_cfg` describing its input."""
    _load_all()
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(_MODELS))}")
    model = _MODELS[name](num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kwargs)
    if not isinstance(getattr(model, "default_cfg", None), dict):
        raise TypeError(f"model {name!r} does not set default_cfg")
    return model
