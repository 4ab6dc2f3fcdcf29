"""An ensemble of classifiers that share labels and input (e.g. the same recipe trained with other seeds).

    net = LogitMean([model_a, model_b])     # forward: the mean of the members' logits

It is exported as one ONNX graph (members run one after the other), carries the members' common
`default_cfg`; Grad-CAM (training.explain) sums the maps of each member's own layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

INPUT_KEYS = ("input_size", "mean", "std", "color")


class EnsembleError(ValueError):
    """The members cannot be averaged: they differ in input or output."""


class FlipTTA(nn.Module):
    """Average the logits of the input and its horizontal mirror."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.net(x) + self.net(torch.flip(x, dims=[3]))) * 0.5


class LogitMean(nn.Module):
    """Average the logits of `members` (each takes the same input and returns the same classes)."""

    default_cfg: dict[str, Any]

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise EnsembleError("an ensemble needs at least two members")
        cfgs: list[dict[str, Any]] = [dict(getattr(m, "default_cfg", {})) for m in members]
        for i, cfg in enumerate(cfgs[1:], 1):
            diff = [k for k in INPUT_KEYS if cfg.get(k) != cfgs[0].get(k)]
            if diff:
                raise EnsembleError(f"member {i} differs from member 0 in {', '.join(diff)}")
        self.members = nn.ModuleList(members)
        arch = sorted({str(c.get("architecture")) for c in cfgs})
        self.default_cfg = {**cfgs[0], "architecture": f"ensemble-{len(members)}x-{'+'.join(arch)}"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def members_of(model: nn.Module) -> list[nn.Module]:
    """The members of an ensemble, or `[model]` for a single network."""
    return list(model.members) if isinstance(model, LogitMean) else [model]
