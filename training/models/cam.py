"""Class activation maps computed inside the exported graph, so the service explains with onnxruntime alone.

    net = CamNet(model, flip=True)     # forward(x) -> (logits, cam [batch, classes, h, w])

For a network that ends in global average pooling and a linear layer, the map of class k is
`sum_c W[k, c] * A[c]` over the last feature map A: Grad-CAM's map before its ReLU, up to the scale
1/(h*w). An ensemble's maps are the mean of its members'; with `flip` the map of the mirror image is
mirrored back and averaged, as its logits are. The logits are the wrapped model's, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from training.models.ensemble import members_of
from training.models.mobilenet import MobileNetV2
from training.models.resnet import ResNet

CAM_OUTPUT = "cam"


class CamUnsupported(ValueError):
    """The network does not end in global pooling and one linear layer."""


Fn = Callable[[torch.Tensor], torch.Tensor]


def cam_parts(net: nn.Module) -> tuple[Fn, Fn, nn.Linear]:
    """(last feature map of x, head on the pooled features, the head's linear layer) of a supported network."""
    if isinstance(net, MobileNetV2) and isinstance(net.classifier[-1], nn.Linear):
        return (lambda x: net.features(net.input_adapter(x))), net.classifier, net.classifier[-1]
    if isinstance(net, ResNet):
        return net.forward_features, (lambda p: net.fc(net.drop(p))), net.fc
    raise CamUnsupported(f"{type(net).__name__} has no class activation maps (needs global pooling and a linear head)")


def supports_cam(model: nn.Module) -> bool:
    """True when every member of `model` gives class activation maps."""
    try:
        for net in members_of(model):
            cam_parts(net)
    except CamUnsupported:
        return False
    return True


class CamNet(nn.Module):
    """`model`'s logits (mirror-averaged with `flip`) and its class activation maps, in one forward pass."""

    def __init__(self, model: nn.Module, flip: bool = False) -> None:
        super().__init__()
        self.members = nn.ModuleList(members_of(model))
        for net in self.members:
            cam_parts(net)  # raises CamUnsupported
        self.flip = flip

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        views = [(x, False)] + ([(torch.flip(x, dims=[3]), True)] if self.flip else [])
        logits, cams = [], []
        for net in self.members:
            features, head, linear = cam_parts(net)
            for view, mirrored in views:
                fmap = features(view)
                logits.append(head(fmap.mean((2, 3))))
                cam = torch.einsum("kc,bchw->bkhw", linear.weight, fmap)
                cams.append(torch.flip(cam, dims=[3]) if mirrored else cam)
        return torch.stack(logits).mean(0), torch.stack(cams).mean(0)
