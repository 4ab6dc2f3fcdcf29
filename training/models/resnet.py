"""`resnet18`: ResNet-18 (BasicBlock x [2, 2, 2, 2]) adapted to 48x48 faces.

Changes from the ImageNet net: a 3x3 stem without max-pool (stride `stem_stride`, 1 or 2), a width
multiplier through `width` (channels of the first stage; 64 is the original), dropout before the
classifier. `resnet18s` is the width-32 variant (about 2.8M parameters) used by the default models.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from training.models.layers import make_cfg
from training.models.registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act(y + self.short(x))


class ResNet(nn.Module):
    default_cfg: dict[str, Any]
    gradcam_layer = "layer4"

    def __init__(
        self, num_classes: int, in_chans: int = 1, width: int = 64, depths: tuple[int, ...] = (2, 2, 2, 2),
        stem_stride: int = 1, drop: float = 0.2, input_size: int = 48, arch: str = "resnet18",
    ) -> None:  # fmt: skip
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        cin = width
        stages = []
        for i, depth in enumerate(depths):
            cout = width * 2**i
            first = 2 if i > 0 else 1
            blocks = [BasicBlock(cin if j == 0 else cout, cout, first if j == 0 else 1) for j in range(depth)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)  # zero-init residual: each block starts as identity
        self.default_cfg = make_cfg(arch, in_chans, input_size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.flatten(self.pool(self.forward_features(x)), 1)))


@register_model("resnet18")
def resnet18(num_classes: int = 7, in_chans: int = 1, pretrained: bool = False, **kw: Any) -> ResNet:
    if pretrained:
        raise ValueError("resnet18 (48x48 adaptation) has no pretrained weights")
    return ResNet(num_classes, in_chans, **{"arch": "resnet18", **kw})


@register_model("resnet18s")
def resnet18s(num_classes: int = 7, in_chans: int = 1, pretrained: bool = False, **kw: Any) -> ResNet:
    if pretrained:
        raise ValueError("resnet18s has no pretrained weights")
    return ResNet(num_classes, in_chans, **{"width": 32, "arch": "resnet18s", **kw})
