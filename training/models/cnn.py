"""`cnn`: the method's plain CNN for 48x48 grayscale faces.

Four conv blocks (two 3x3 conv + BN + ReLU, 2x2 max-pool, dropout 0.25), then two dense layers of
512 units with BN, ReLU and dropout 0.5, and the linear classifier.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from training.models.layers import ConvBNAct, make_cfg
from training.models.registry import register_model


class FerCNN(nn.Module):
    default_cfg: dict[str, Any]
    gradcam_layer = "features.3.1"

    def __init__(
        self, num_classes: int, in_chans: int = 1, width_mult: float = 1.0, input_size: int = 48, dense: int = 512
    ) -> None:
        super().__init__()
        widths = [max(4, int(c * width_mult)) for c in (64, 128, 256, 512)]
        blocks: list[nn.Module] = []
        cin = in_chans
        for c in widths:
            blocks.append(nn.Sequential(ConvBNAct(cin, c), ConvBNAct(c, c), nn.MaxPool2d(2), nn.Dropout(0.25)))
            cin = c
        self.features = nn.Sequential(*blocks)
        side = input_size // 16
        dense = max(8, int(dense * width_mult))
        self.classifier = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(cin * side * side, dense, bias=False),
            nn.BatchNorm1d(dense),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(dense, dense, bias=False),
            nn.BatchNorm1d(dense),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(dense, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("cnn")
def cnn(
    num_classes: int,
    in_chans: int = 1,
    pretrained: bool = False,
    input_size: int = 48,
    width_mult: float = 1.0,
    dense: int = 512,
) -> nn.Module:
    """The method's CNN; `width_mult` scales every layer, `input_size` must be a multiple of 16."""
    if pretrained:
        raise ValueError("cnn has no pretrained weights; train it from scratch")
    if input_size % 16:
        raise ValueError(f"cnn needs input_size divisible by 16, got {input_size}")
    model = FerCNN(num_classes, in_chans, width_mult, input_size, dense)
    model.default_cfg = make_cfg("cnn", in_chans, input_size)
    return model
