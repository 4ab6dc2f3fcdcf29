"""`inceptionv3`: Inception-v3 (torchvision layout, no auxiliary classifier) for gray faces.

The canonical input is 299x299, far larger than a 48x48 face. The default here is `input_size=139`,
which leaves a 3x3 map after the last reduction (useful for Grad-CAM); 75 is the smallest size
the stride structure accepts (1x1 final map). Faces are upsampled to `input_size` by the service.
`width_mult` scales every branch (tests use 0.125).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.models.layers import make_cfg
from training.models.registry import register_model

MIN_INPUT = 75


class BasicConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int | tuple[int, int], stride: int = 1, pad: Any = 0) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, pad, bias=False), nn.BatchNorm2d(cout, eps=1e-3), nn.ReLU(inplace=True)
        )


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool: int, c: Callable[[int], int]) -> None:
        super().__init__()
        self.b1 = BasicConv(cin, c(64), 1)
        self.b5 = nn.Sequential(BasicConv(cin, c(48), 1), BasicConv(c(48), c(64), 5, pad=2))
        self.b3 = nn.Sequential(
            BasicConv(cin, c(64), 1), BasicConv(c(64), c(96), 3, pad=1), BasicConv(c(96), c(96), 3, pad=1)
        )
        self.bp = BasicConv(cin, pool, 1)
        self.out_channels = c(64) * 2 + c(96) + pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b5(x), self.b3(x), self.bp(F.avg_pool2d(x, 3, 1, 1))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int, c: Callable[[int], int]) -> None:
        super().__init__()
        self.b3 = BasicConv(cin, c(384), 3, 2)
        self.b3d = nn.Sequential(
            BasicConv(cin, c(64), 1), BasicConv(c(64), c(96), 3, pad=1), BasicConv(c(96), c(96), 3, 2)
        )
        self.out_channels = c(384) + c(96) + cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b3(x), self.b3d(x), F.max_pool2d(x, 3, 2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int, c: Callable[[int], int]) -> None:
        super().__init__()
        o = c(192)
        self.b1 = BasicConv(cin, o, 1)
        self.b7 = nn.Sequential(
            BasicConv(cin, c7, 1), BasicConv(c7, c7, (1, 7), pad=(0, 3)), BasicConv(c7, o, (7, 1), pad=(3, 0))
        )
        self.b7d = nn.Sequential(
            BasicConv(cin, c7, 1),
            BasicConv(c7, c7, (7, 1), pad=(3, 0)),
            BasicConv(c7, c7, (1, 7), pad=(0, 3)),
            BasicConv(c7, c7, (7, 1), pad=(3, 0)),
            BasicConv(c7, o, (1, 7), pad=(0, 3)),
        )
        self.bp = BasicConv(cin, o, 1)
        self.out_channels = 4 * o

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b7(x), self.b7d(x), self.bp(F.avg_pool2d(x, 3, 1, 1))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int, c: Callable[[int], int]) -> None:
        super().__init__()
        self.b3 = nn.Sequential(BasicConv(cin, c(192), 1), BasicConv(c(192), c(320), 3, 2))
        self.b7 = nn.Sequential(
            BasicConv(cin, c(192), 1),
            BasicConv(c(192), c(192), (1, 7), pad=(0, 3)),
            BasicConv(c(192), c(192), (7, 1), pad=(3, 0)),
            BasicConv(c(192), c(192), 3, 2),
        )
        self.out_channels = c(320) + c(192) + cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b3(x), self.b7(x), F.max_pool2d(x, 3, 2)], 1)


class InceptionE(nn.Module):
    def __init__(self, cin: int, c: Callable[[int], int]) -> None:
        super().__init__()
        self.b1 = BasicConv(cin, c(320), 1)
        self.b3 = BasicConv(cin, c(384), 1)
        self.b3a = BasicConv(c(384), c(384), (1, 3), pad=(0, 1))
        self.b3b = BasicConv(c(384), c(384), (3, 1), pad=(1, 0))
        self.bd = nn.Sequential(BasicConv(cin, c(448), 1), BasicConv(c(448), c(384), 3, pad=1))
        self.bda = BasicConv(c(384), c(384), (1, 3), pad=(0, 1))
        self.bdb = BasicConv(c(384), c(384), (3, 1), pad=(1, 0))
        self.bp = BasicConv(cin, c(192), 1)
        self.out_channels = c(320) + 4 * c(384) + c(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y3, yd = self.b3(x), self.bd(x)
        parts = [self.b1(x), self.b3a(y3), self.b3b(y3), self.bda(yd), self.bdb(yd), self.bp(F.avg_pool2d(x, 3, 1, 1))]
        return torch.cat(parts, 1)


class InceptionV3(nn.Module):
    default_cfg: dict[str, Any]
    gradcam_layer = "features.Mixed_7c"

    def __init__(self, num_classes: int, in_chans: int, width_mult: float, drop: float) -> None:
        super().__init__()

        def c(n: int) -> int:
            return max(4, int(n * width_mult))

        f = nn.Sequential()
        f.add_module("Conv2d_1a_3x3", BasicConv(in_chans, c(32), 3, 2))
        f.add_module("Conv2d_2a_3x3", BasicConv(c(32), c(32), 3))
        f.add_module("Conv2d_2b_3x3", BasicConv(c(32), c(64), 3, pad=1))
        f.add_module("maxpool1", nn.MaxPool2d(3, 2))
        f.add_module("Conv2d_3b_1x1", BasicConv(c(64), c(80), 1))
        f.add_module("Conv2d_4a_3x3", BasicConv(c(80), c(192), 3))
        f.add_module("maxpool2", nn.MaxPool2d(3, 2))
        blocks: list[tuple[str, Any]] = []
        ch = c(192)
        for name, make in [
            ("Mixed_5b", lambda i: InceptionA(i, c(32), c)),
            ("Mixed_5c", lambda i: InceptionA(i, c(64), c)),
            ("Mixed_5d", lambda i: InceptionA(i, c(64), c)),
            ("Mixed_6a", lambda i: InceptionB(i, c)),
            ("Mixed_6b", lambda i: InceptionC(i, c(128), c)),
            ("Mixed_6c", lambda i: InceptionC(i, c(160), c)),
            ("Mixed_6d", lambda i: InceptionC(i, c(160), c)),
            ("Mixed_6e", lambda i: InceptionC(i, c(192), c)),
            ("Mixed_7a", lambda i: InceptionD(i, c)),
            ("Mixed_7b", lambda i: InceptionE(i, c)),
            ("Mixed_7c", lambda i: InceptionE(i, c)),
        ]:
            block: Any = make(ch)
            blocks.append((name, block))
            ch = int(block.out_channels)
        for name, block in blocks:
            f.add_module(name, block)
        self.features = f
        self.dropout = nn.Dropout(drop)
        self.fc = nn.Linear(ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x).mean((2, 3))))


@register_model("inceptionv3")
def inceptionv3(
    num_classes: int,
    in_chans: int = 1,
    pretrained: bool = False,
    input_size: int = 139,
    width_mult: float = 1.0,
    drop: float = 0.5,
) -> nn.Module:
    """Inception-v3 from scratch; `input_size` >= 75 (default 139, canonical 299)."""
    if pretrained:
        raise ValueError("inceptionv3 has no pretrained weights in emoserve; train it from scratch")
    if input_size < MIN_INPUT:
        raise ValueError(f"inceptionv3 needs input_size >= {MIN_INPUT}, got {input_size}")
    model = InceptionV3(num_classes, in_chans, width_mult, drop)
    model.default_cfg = make_cfg("inceptionv3", in_chans, input_size)
    return model
