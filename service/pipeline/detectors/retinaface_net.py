"""The RetinaFace network in plain torch, with the parameter names of biubug6/Pytorch_Retinaface.

State dicts of that implementation (`body.*`, `fpn.*`, `ssh1..3.*`, `ClassHead.*`, `BboxHead.*`,
`LandmarkHead.*`) load with `strict=True`. Backbones: MobileNet-0.25 (`stage1..3`) and a ResNet-50
with torchvision's parameter names (`conv1`, `bn1`, `layer1..4`), cut after the returned stages as
torchvision's IntermediateLayerGetter does.

`body_leaky` is the negative slope of the MobileNet body's activations. The reference config uses
LeakyReLU(0.1); some published mobilenet0.25 checkpoints were trained with a plain-ReLU body
(slope 0.0), which shows in their BatchNorm statistics (depthwise channels fed by a dead ReLU unit
have exactly-zero running variance). The FPN/SSH slopes are the reference's.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

BACKBONES = ("mobilenet0.25", "resnet50")
# backbone -> (stage names returned to the FPN, their channels, FPN/SSH channels)
_CONFIG: dict[str, tuple[tuple[str, ...], tuple[int, int, int], int]] = {
    "mobilenet0.25": (("stage1", "stage2", "stage3"), (64, 128, 256), 64),
    "resnet50": (("layer2", "layer3", "layer4"), (512, 1024, 2048), 256),
}
MOBILENET_BODY_LEAKY = 0.1  # the reference config's LeakyReLU slope in the MobileNet-0.25 body


def check_body_leaky(backbone: str, body_leaky: float | None) -> float | None:
    """Validate the body slope option: a float in [0, 1) and only for the MobileNet backbone."""
    if body_leaky is None:
        return None
    slope = float(body_leaky)
    if not 0.0 <= slope < 1.0:
        raise ValueError(f"body_leaky must be in [0, 1), got {body_leaky!r}")
    if backbone != "mobilenet0.25":
        raise ValueError(f"body_leaky applies to the mobilenet0.25 body only ({backbone} uses plain ReLU)")
    return slope


def conv_bn(inp: int, oup: int, stride: int = 1, leaky: float = 0.0) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.LeakyReLU(leaky, inplace=True)
    )


def conv_bn_no_relu(inp: int, oup: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup))


def conv_bn1x1(inp: int, oup: int, stride: int = 1, leaky: float = 0.0) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, 1, stride, 0, bias=False), nn.BatchNorm2d(oup), nn.LeakyReLU(leaky, inplace=True)
    )


def conv_dw(inp: int, oup: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.LeakyReLU(leaky, inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(leaky, inplace=True),
    )


class MobileNetV1(nn.Module):
    """MobileNet-0.25 body (the classifier head is not part of the detector's state_dict).

    `leaky`: the negative slope of every activation in the body (reference: 0.1).
    """

    def __init__(self, leaky: float = MOBILENET_BODY_LEAKY) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            conv_bn(3, 8, 2, leaky=leaky),
            conv_dw(8, 16, 1, leaky),
            conv_dw(16, 32, 2, leaky),
            conv_dw(32, 32, 1, leaky),
            conv_dw(32, 64, 2, leaky),
            conv_dw(64, 64, 1, leaky),
        )
        self.stage2 = nn.Sequential(conv_dw(64, 128, 2, leaky), *[conv_dw(128, 128, 1, leaky) for _ in range(5)])
        self.stage3 = nn.Sequential(conv_dw(128, 256, 2, leaky), conv_dw(256, 256, 1, leaky))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        return [c1, c2, self.stage3(c2)]


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (stride on the 3x3 conv)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet50Body(nn.Module):
    """torchvision resnet50 up to layer4, returning layer2..layer4."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.inplanes = 64
        self.layer1 = self._layer(64, 3, 1)
        self.layer2 = self._layer(128, 4, 2)
        self.layer3 = self._layer(256, 6, 2)
        self.layer4 = self._layer(512, 3, 2)

    def _layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        c2 = self.layer2(x)
        c3 = self.layer3(c2)
        return [c2, c3, self.layer4(c3)]


class FPN(nn.Module):
    def __init__(self, in_channels: tuple[int, int, int], out_channels: int) -> None:
        super().__init__()
        leaky = 0.1 if out_channels <= 64 else 0.0
        self.output1 = conv_bn1x1(in_channels[0], out_channels, leaky=leaky)
        self.output2 = conv_bn1x1(in_channels[1], out_channels, leaky=leaky)
        self.output3 = conv_bn1x1(in_channels[2], out_channels, leaky=leaky)
        self.merge1 = conv_bn(out_channels, out_channels, leaky=leaky)
        self.merge2 = conv_bn(out_channels, out_channels, leaky=leaky)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        o1, o2, o3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        o2 = self.merge2(o2 + F.interpolate(o3, size=[o2.size(2), o2.size(3)], mode="nearest"))
        o1 = self.merge1(o1 + F.interpolate(o2, size=[o1.size(2), o1.size(3)], mode="nearest"))
        return [o1, o2, o3]


class SSH(nn.Module):
    """Single-stage headless context module: 3x3, 5x5 and 7x7 receptive fields concatenated."""

    def __init__(self, in_channel: int, out_channel: int) -> None:
        super().__init__()
        leaky = 0.1 if out_channel <= 64 else 0.0
        self.conv3X3 = conv_bn_no_relu(in_channel, out_channel // 2)
        self.conv5X5_1 = conv_bn(in_channel, out_channel // 4, leaky=leaky)
        self.conv5X5_2 = conv_bn_no_relu(out_channel // 4, out_channel // 4)
        self.conv7X7_2 = conv_bn(out_channel // 4, out_channel // 4, leaky=leaky)
        self.conv7x7_3 = conv_bn_no_relu(out_channel // 4, out_channel // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c5_1 = self.conv5X5_1(x)
        out = torch.cat([self.conv3X3(x), self.conv5X5_2(c5_1), self.conv7x7_3(self.conv7X7_2(c5_1))], dim=1)
        return F.relu(out)


class _Head(nn.Module):
    """A 1x1 conv giving `values` numbers per anchor, flattened to (N, H*W*anchors, values)."""

    def __init__(self, in_channels: int, values: int, num_anchors: int = 2) -> None:
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(in_channels, num_anchors * values, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.values)


class RetinaFace(nn.Module):
    """Returns (loc (N, A, 4), conf (N, A, 2) softmaxed, landmarks (N, A, 10)) over the prior boxes."""

    def __init__(self, backbone: str = "mobilenet0.25", body_leaky: float | None = None) -> None:
        """`body_leaky`: the MobileNet body's activation slope; None is the reference's 0.1."""
        super().__init__()
        if backbone not in _CONFIG:
            raise ValueError(f"unknown RetinaFace backbone {backbone!r}; known: {', '.join(BACKBONES)}")
        slope = check_body_leaky(backbone, body_leaky)
        _, in_channels, out_channels = _CONFIG[backbone]
        self.body: nn.Module = (
            MobileNetV1(MOBILENET_BODY_LEAKY if slope is None else slope)
            if backbone == "mobilenet0.25"
            else ResNet50Body()
        )
        self.fpn = FPN(in_channels, out_channels)
        self.ssh1 = SSH(out_channels, out_channels)
        self.ssh2 = SSH(out_channels, out_channels)
        self.ssh3 = SSH(out_channels, out_channels)
        self.ClassHead = nn.ModuleList([_Head(out_channels, 2) for _ in range(3)])
        self.BboxHead = nn.ModuleList([_Head(out_channels, 4) for _ in range(3)])
        self.LandmarkHead = nn.ModuleList([_Head(out_channels, 10) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = self.fpn(self.body(x))
        feats = [self.ssh1(p[0]), self.ssh2(p[1]), self.ssh3(p[2])]
        loc = torch.cat([h(f) for h, f in zip(self.BboxHead, feats, strict=True)], dim=1)
        conf = torch.cat([h(f) for h, f in zip(self.ClassHead, feats, strict=True)], dim=1)
        landms = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats, strict=True)], dim=1)
        return loc, F.softmax(conf, dim=-1), landms


def clean_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip a DataParallel `module.` prefix; unwrap a `{"state_dict": ...}` checkpoint."""
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


def build_retinaface(
    backbone: str, state_dict: Mapping[str, torch.Tensor] | None = None, *, body_leaky: float | None = None
) -> RetinaFace:
    """The network in eval mode, with `state_dict` loaded strictly when given (see `RetinaFace`)."""
    net = RetinaFace(backbone, body_leaky=body_leaky)
    if state_dict is not None:
        net.load_state_dict(clean_state_dict(state_dict), strict=True)
    return net.eval()
