"""`vgg16`: VGG-16 (13 3x3 conv layers in 5 stages + 3 dense layers), with BatchNorm, for gray faces.

At the FER default of 48x48 the last stage is 1x1x512; the dense layers are 4096 wide (`head_dim`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from training.models.layers import ConvBNAct, make_cfg
from training.models.registry import register_model

VGG16_STAGES = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]


class VGG(nn.Module):
    default_cfg: dict[str, Any]

    def __init__(self, num_classes: int, in_chans: int, width_mult: float, head_dim: int, input_size: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_chans
        for c, n in VGG16_STAGES:
            c = max(4, int(c * width_mult))
            for _ in range(n):
                layers.append(ConvBNAct(cin, c))
                cin = c
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.gradcam_layer = f"features.{len(layers) - 2}"
        side = input_size
        for _ in VGG16_STAGES:
            side //= 2  # each 2x2 max-pool floors
        self.classifier = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(cin * side * side, head_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(head_dim, head_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(head_dim, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("vgg16")
def vgg16(
    num_classes: int,
    in_chans: int = 1,
    pretrained: bool = False,
    input_size: int = 48,
    width_mult: float = 1.0,
    head_dim: int | None = None,
) -> nn.Module:
    """VGG-16-BN; `input_size` >= 32 (48 gives 1x1x512 features); `width_mult` scales convs and dense layers."""
    if pretrained:
        raise ValueError("vgg16 has no pretrained weights in emoserve; train it from scratch")
    if input_size < 32:
        raise ValueError(f"vgg16 needs input_size >= 32, got {input_size}")
    head = head_dim if head_dim is not None else max(16, int(4096 * width_mult))
    model = VGG(num_classes, in_chans, width_mult, head, input_size)
    model.default_cfg = make_cfg("vgg16", in_chans, input_size)
    return model
