"""Small building blocks shared by the model zoo (conv-BN-act, squeeze-excitation, default_cfg)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

GRAY_MEAN = [0.5]
GRAY_STD = [0.5]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def make_cfg(
    arch: str,
    in_chans: int,
    size: int | tuple[int, int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A `default_cfg`: gray models get mean/std 0.5 unless told, RGB models the ImageNet statistics."""
    h, w = (size, size) if isinstance(size, int) else size
    if mean is None:
        mean = GRAY_MEAN * in_chans if in_chans == 1 else IMAGENET_MEAN[:in_chans]
    if std is None:
        std = GRAY_STD * in_chans if in_chans == 1 else IMAGENET_STD[:in_chans]
    return {
        "input_size": (in_chans, h, w),
        "mean": list(mean),
        "std": list(std),
        "color": "GRAY" if in_chans == 1 else "RGB",
        "architecture": arch,
        **extra,
    }


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of `divisor` (never below 90% of `v`), as MobileNet/EfficientNet do."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) + BatchNorm + activation; submodules named 0, 1, 2 (torchvision layout)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        k: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = nn.ReLU,
        padding: int | None = None,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride, k // 2 if padding is None else padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act is not None:
            layers.append(act(inplace=True) if act in (nn.ReLU, nn.ReLU6, nn.SiLU) else act())
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Channel attention: global average pool, bottleneck dense layers, sigmoid gate."""

    def __init__(self, channels: int, reduced: int, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(s))))


class GrayToRGB(nn.Module):
    """Replicate a 1-channel image (pixels 0..1) to 3 channels and apply the backbone's RGB normalisation.

    Used by ImageNet-pretrained backbones built with `in_chans=1`: the exported model then takes the
    plain gray face (mean 0, std 1 in its default_cfg) and the pretrained stem sees what it was trained on.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.expand(-1, 3, -1, -1) - self.mean) / self.std


def input_adapter(in_chans: int, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """`GrayToRGB` for 1-channel input, identity (normalisation left to the service) for RGB input."""
    if in_chans == 1:
        return GrayToRGB(mean, std)
    if in_chans != 3:
        raise ValueError(f"ImageNet backbones take in_chans 1 or 3, got {in_chans}")
    return nn.Identity()


def backbone_cfg(
    arch: str, in_chans: int, size: int, mean: Sequence[float], std: Sequence[float], **extra: Any
) -> dict[str, Any]:
    """default_cfg of an ImageNet backbone: gray input is fed raw (0..1) and normalised inside the model."""
    if in_chans == 1:
        return make_cfg(arch, 1, size, [0.0], [1.0], **extra)
    return make_cfg(arch, 3, size, mean, std, **extra)
