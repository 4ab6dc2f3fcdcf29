"""`densenet121`: DenseNet-121 (dense blocks of 6/12/24/16 layers, growth 32, BN-ReLU-conv ordering).

Torchvision-like layout. On 48x48 faces the stem (7x7 stride 2 + max-pool) leaves 12x12 and the last
block runs at 1x1; pass `input_size` (a multiple of 32) for larger inputs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from training.models.layers import make_cfg
from training.models.registry import register_model


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.relu(self.norm2(self.conv1(self.relu(self.norm1(x))))))
        return torch.cat([x, y], 1)


class Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2))


class DenseNet(nn.Module):
    default_cfg: dict[str, Any]
    gradcam_layer = "features.final_relu"

    def __init__(
        self,
        num_classes: int,
        in_chans: int,
        blocks: tuple[int, ...] = (6, 12, 24, 16),
        growth: int = 32,
        init_features: int = 64,
        bn_size: int = 4,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(in_chans, init_features, 7, 2, 3, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(init_features))
        self.features.add_module("relu0", nn.ReLU())
        self.features.add_module("pool0", nn.MaxPool2d(3, 2, 1))
        c = init_features
        for i, n in enumerate(blocks):
            block = nn.Sequential(*[DenseLayer(c + j * growth, growth, bn_size) for j in range(n)])
            self.features.add_module(f"denseblock{i + 1}", block)
            c += n * growth
            if i < len(blocks) - 1:
                self.features.add_module(f"transition{i + 1}", Transition(c, c // 2))
                c //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.features.add_module("final_relu", nn.ReLU())
        self.classifier = nn.Linear(c, num_classes)
        self.num_features = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


@register_model("densenet121")
def densenet121(
    num_classes: int,
    in_chans: int = 1,
    pretrained: bool = False,
    input_size: int = 48,
    width_mult: float = 1.0,
    blocks: tuple[int, ...] = (6, 12, 24, 16),
) -> nn.Module:
    """DenseNet-121; `width_mult` scales the growth rate and stem width, `blocks` the layer counts."""
    if pretrained:
        raise ValueError("densenet121 has no pretrained weights in emoserve; train it from scratch")
    growth = max(4, int(32 * width_mult))
    model = DenseNet(num_classes, in_chans, tuple(blocks), growth, 2 * growth)
    model.default_cfg = make_cfg("densenet121", in_chans, input_size)
    return model
