"""EfficientNet family: `efficientnetv2_b0` (from scratch) and `efficientnet_lite0` (ImageNet weights).

* EfficientNetV2-B0: Fused-MBConv (3x3 conv expansion, no depthwise) in the three early stages,
  MBConv (1x1 expand, depthwise, squeeze-excitation 0.25, 1x1 project) later; SiLU; head 1280.
* EfficientNet-Lite0: the B0 MBConv layout without squeeze-excitation, ReLU6 everywhere, fixed
  stem 32 / head 1280. Parameter names follow `efficientnet_pytorch` (`_conv_stem`, `_bn0`,
  `_blocks.N._expand_conv/_bn0/_depthwise_conv/_bn1/_project_conv/_bn2`, `_conv_head`, `_bn1`, `_fc`) so
  the converted TF checkpoint loads. Padding is symmetric (k//2), not TF "SAME": a half-pixel shift
  at the stride-2 layers that fine-tuning absorbs. Lite0 was trained on pixels scaled to [-1, 1].
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from training.models.layers import ConvBNAct, SqueezeExcite, backbone_cfg, input_adapter, make_cfg, make_divisible
from training.models.registry import register_model

# ---------------------------------------------------------------- EfficientNetV2-B0

# (block, expand, kernel, stride, out, repeats); block "F" = Fused-MBConv, "M" = MBConv + SE
V2_B0 = [("F", 1, 3, 1, 16, 1), ("F", 4, 3, 2, 32, 2), ("F", 4, 3, 2, 48, 2),
         ("M", 4, 3, 2, 96, 3), ("M", 6, 3, 1, 112, 5), ("M", 6, 3, 2, 192, 8)]  # fmt: skip


class FusedMBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand == 1:
            self.conv = nn.Sequential(ConvBNAct(cin, cout, k, stride, act=nn.SiLU))
        else:
            self.conv = nn.Sequential(ConvBNAct(cin, mid, k, stride, act=nn.SiLU), ConvBNAct(mid, cout, 1, act=None))
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.skip else y


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int, se_ratio: float = 0.25) -> None:
        super().__init__()
        mid = cin * expand
        self.conv = nn.Sequential(
            ConvBNAct(cin, mid, 1, act=nn.SiLU),
            ConvBNAct(mid, mid, k, stride, groups=mid, act=nn.SiLU),
            SqueezeExcite(mid, max(1, int(cin * se_ratio)), nn.SiLU),
            ConvBNAct(mid, cout, 1, act=None),
        )
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.skip else y


class EfficientNetV2(nn.Module):
    default_cfg: dict[str, Any]
    gradcam_layer = "head"

    def __init__(self, num_classes: int, in_chans: int, width_mult: float, depth_mult: float, drop: float) -> None:
        super().__init__()
        stem = make_divisible(32 * width_mult)
        self.stem = ConvBNAct(in_chans, stem, 3, 2, act=nn.SiLU)
        blocks: list[nn.Module] = []
        cin = stem
        for kind, e, k, s, c, n in V2_B0:
            cout = make_divisible(c * width_mult)
            for i in range(max(1, round(n * depth_mult))):
                block = FusedMBConv if kind == "F" else MBConv
                blocks.append(block(cin, cout, e, k, s if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        head = make_divisible(1280 * width_mult) if width_mult < 1 else 1280
        self.head = ConvBNAct(cin, head, 1, act=nn.SiLU)
        self.classifier = nn.Sequential(nn.Flatten(1), nn.Dropout(drop), nn.Linear(head, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(x.mean((2, 3)))


@register_model("efficientnetv2_b0")
def efficientnetv2_b0(
    num_classes: int,
    in_chans: int = 1,
    pretrained: bool = False,
    input_size: int = 48,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    drop: float = 0.2,
) -> nn.Module:
    """EfficientNetV2-B0 trained from scratch; `width_mult`/`depth_mult` shrink it."""
    if pretrained:
        raise ValueError("efficientnetv2_b0 has no pretrained weights in emoserve; train it from scratch")
    model = EfficientNetV2(num_classes, in_chans, width_mult, depth_mult, drop)
    model.default_cfg = make_cfg("efficientnetv2_b0", in_chans, input_size)
    return model


# ---------------------------------------------------------------- EfficientNet-Lite0

# (expand, kernel, stride, out, repeats): the B0 stages
LITE0 = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
         (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]  # fmt: skip
LITE_MEAN = [0.5, 0.5, 0.5]
LITE_STD = [0.5, 0.5, 0.5]
BN_EPS = 1e-3  # the TF checkpoint's BatchNorm epsilon


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=0.01)


class LiteBlock(nn.Module):
    """MBConv without squeeze-excitation (efficientnet_pytorch names)."""

    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = nn.Conv2d(mid, mid, k, stride, k // 2, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.act = nn.ReLU6()
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = self._bn2(self._project_conv(self.act(self._bn1(self._depthwise_conv(y)))))
        return x + y if self.skip else y


class EfficientNetLite(nn.Module):
    default_cfg: dict[str, Any]
    gradcam_layer = "_head_act"

    def __init__(self, num_classes: int, in_chans: int, width_mult: float, drop: float) -> None:
        super().__init__()
        self.input_adapter = input_adapter(in_chans, LITE_MEAN, LITE_STD)
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        cin = 32
        for e, k, s, c, n in LITE0:
            cout = make_divisible(c * width_mult)
            for i in range(n):
                blocks.append(LiteBlock(cin, cout, e, k, s if i == 0 else 1))
                cin = cout
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = nn.Conv2d(cin, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._act = nn.ReLU6()
        self._head_act = nn.ReLU6()
        self._dropout = nn.Dropout(drop)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._act(self._bn0(self._conv_stem(self.input_adapter(x))))
        x = self._head_act(self._bn1(self._conv_head(self._blocks(x))))
        return self._fc(self._dropout(x.mean((2, 3))))


@register_model("efficientnet_lite0")
def efficientnet_lite0(
    num_classes: int,
    in_chans: int = 1,
    pretrained: bool = False,
    input_size: int = 224,
    width_mult: float = 1.0,
    drop: float = 0.2,
) -> nn.Module:
    """EfficientNet-Lite0; gray input is replicated to RGB inside the model (see `GrayToRGB`)."""
    if pretrained and width_mult != 1.0:
        raise ValueError("pretrained efficientnet_lite0 needs width_mult=1.0")
    model = EfficientNetLite(num_classes, in_chans, width_mult, drop)
    model.default_cfg = backbone_cfg("efficientnet_lite0", in_chans, input_size, LITE_MEAN, LITE_STD)
    if pretrained:
        from training.models.pretrained import load_pretrained

        load_pretrained(model, "efficientnet_lite0")
    return model
