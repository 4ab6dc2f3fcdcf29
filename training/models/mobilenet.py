"""MobileNetV2 (`mobilenetv2`) and the method's custom MobileNet for faces (`mobilenet_fer`).

The backbone keeps torchvision's parameter names (`features.0.0` conv, `features.0.1` BN,
`features.N.conv...` inverted residuals, `features.18` the 1x1 conv to 1280), so the ImageNet weights
load. `mobilenet_fer` adds, over the backbone's 1280-channel map:

1. patch extraction: parallel 1x1 / 3x3 / 5x5 convolutions (BN + ReLU), concatenated;
2. channel attention: global average pool, two dense layers (reduction 16), sigmoid re-weighting;
3. global average pool, dropout 0.5, a dense layer of 256 units, dropout and the classifier.

Gray input (in_chans=1) is replicated to RGB and ImageNet-normalised inside the model (`GrayToRGB`),
so default_cfg says GRAY with mean 0 / std 1 and the architecture is identical with or without the
pretrained weights. ImageNet weights are for width_mult=1.0 only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from training.models.layers import IMAGENET_MEAN, IMAGENET_STD, ConvBNAct, backbone_cfg, input_adapter, make_divisible
from training.models.registry import register_model

# (expand t, channels c, repeats n, stride s)
V2_SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = round(cin * expand)
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNAct(cin, hidden, 1, act=nn.ReLU6))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


def mobilenetv2_features(width_mult: float = 1.0) -> tuple[nn.Sequential, int]:
    """The torchvision MobileNetV2 `features` stack and its output channels."""
    cin = make_divisible(32 * width_mult)
    last = make_divisible(1280 * max(1.0, width_mult))
    layers: list[nn.Module] = [ConvBNAct(3, cin, 3, 2, act=nn.ReLU6)]
    for t, c, n, s in V2_SETTINGS:
        cout = make_divisible(c * width_mult)
        for i in range(n):
            layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
            cin = cout
    layers.append(ConvBNAct(cin, last, 1, act=nn.ReLU6))
    return nn.Sequential(*layers), last


class MobileNetV2(nn.Module):
    default_cfg: dict[str, Any]
    gradcam_layer = "features.18"

    def __init__(self, num_classes: int, in_chans: int, width_mult: float, drop: float = 0.2) -> None:
        super().__init__()
        self.input_adapter = input_adapter(in_chans, IMAGENET_MEAN, IMAGENET_STD)
        self.features, c = mobilenetv2_features(width_mult)
        self.classifier = nn.Sequential(nn.Dropout(drop), nn.Linear(c, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.input_adapter(x)).mean((2, 3)))


class PatchExtraction(nn.Module):
    """Parallel convolutions of several kernel sizes over the same map, concatenated on channels."""

    def __init__(self, cin: int, branch: int, kernels: tuple[int, ...] = (1, 3, 5)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(ConvBNAct(cin, branch, k) for k in kernels)
        self.out_channels = branch * len(kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], 1)


class ChannelAttention(nn.Module):
    """SE-style attention: global average pool, dense - ReLU - dense - sigmoid, channel re-weighting."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, max(4, channels // reduction)),
            nn.ReLU(inplace=True),
            nn.Linear(max(4, channels // reduction), channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.fc(x.mean((2, 3)))
        return x * w[:, :, None, None]


class MobileNetFER(nn.Module):
    default_cfg: dict[str, Any]
    gradcam_layer = "attention"

    def __init__(
        self, num_classes: int, in_chans: int, width_mult: float, patch_channels: int, dense: int, drop: float
    ) -> None:
        super().__init__()
        self.input_adapter = input_adapter(in_chans, IMAGENET_MEAN, IMAGENET_STD)
        self.features, c = mobilenetv2_features(width_mult)
        self.patches = PatchExtraction(c, patch_channels)
        self.attention = ChannelAttention(self.patches.out_channels)
        self.classifier = nn.Sequential(
            nn.Dropout(drop),
            nn.Linear(self.patches.out_channels, dense),
            nn.ReLU(inplace=True),
            nn.Dropout(drop),
            nn.Linear(dense, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(self.patches(self.features(self.input_adapter(x))))
        return self.classifier(x.mean((2, 3)))


def _finish(model: MobileNetV2 | MobileNetFER, name: str, in_chans: int, size: int, pretrained: bool) -> nn.Module:
    model.default_cfg = backbone_cfg(name, in_chans, size, IMAGENET_MEAN, IMAGENET_STD)
    if pretrained:
        from training.models.pretrained import load_pretrained

        load_pretrained(model, "mobilenetv2")
    return model


def _check(pretrained: bool, width_mult: float, input_size: int, name: str) -> None:
    if pretrained and width_mult != 1.0:
        raise ValueError(f"pretrained {name} needs width_mult=1.0")
    if input_size % 16:  # 112 works: the last stride-2 stage maps 7x7 to 4x4
        raise ValueError(f"{name} needs input_size divisible by 16, got {input_size}")


@register_model("mobilenetv2")
def mobilenetv2(
    num_classes: int,
    in_chans: int = 1,
    pretrained: bool = False,
    input_size: int = 224,
    width_mult: float = 1.0,
    drop: float = 0.2,
) -> nn.Module:
    """Plain MobileNetV2 with a linear head (torchvision layout)."""
    _check(pretrained, width_mult, input_size, "mobilenetv2")
    return _finish(
        MobileNetV2(num_classes, in_chans, width_mult, drop), "mobilenetv2", in_chans, input_size, pretrained
    )


@register_model("mobilenet_fer")
def mobilenet_fer(
    num_classes: int,
    in_chans: int = 1,
    pretrained: bool = False,
    input_size: int = 224,
    width_mult: float = 1.0,
    patch_channels: int = 64,
    dense: int = 256,
    drop: float = 0.5,
) -> nn.Module:
    """The method's MobileNet: MobileNetV2 backbone + patch extraction + channel attention + dense head."""
    _check(pretrained, width_mult, input_size, "mobilenet_fer")
    model = MobileNetFER(num_classes, in_chans, width_mult, patch_channels, dense, drop)
    return _finish(model, "mobilenet_fer", in_chans, input_size, pretrained)
