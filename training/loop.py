"""The inner loops: device/precision selection, batches, one training epoch, prediction."""

from __future__ import annotations

import contextlib
import copy
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from training.config import TrainConfig
from training.data.augment import AugmentParams, augment_batch, mixup, random_erasing
from training.data.degrade import consistency_view


@dataclass
class Runtime:
    """Where and how to compute: device, autocast dtype, memory format, distributed rank/world."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Pick the device (CUDA when present), autocast dtype, threads; join a torchrun process group."""
    torch.set_num_threads(max(1, cfg.threads))
    cuda = torch.cuda.is_available() and cfg.device != "cpu"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config asks for device cuda but no GPU is available")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if world > 1 and not torch.distributed.is_initialized():  # launched by torchrun
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    amp = cfg.amp
    if amp == "auto":
        amp = "fp16" if cuda else "bf16"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]
    if dtype is torch.float16 and not cuda:
        dtype = torch.bfloat16  # fp16 autocast is a CUDA feature
    return Runtime(device, dtype, cfg.channels_last, rank, world)


class WeightEMA:
    """An exponential moving average of a model's weights and BatchNorm statistics, kept on the side.

    The decay ramps up as (1 + n) / (10 + n) over the first updates so that the average does not start
    dominated by the initial weights; `module` is what gets validated and exported when it is enabled.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for avg, cur in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
            if avg.dtype.is_floating_point:
                avg.lerp_(cur.detach(), 1.0 - d)
            else:
                avg.copy_(cur)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


def to_tensor(images: np.ndarray, mean: list[float], std: list[float], rt: Runtime) -> torch.Tensor:
    """uint8 N x H x W (x C) -> normalised float N x C x H x W on the device."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    x = x.to(rt.device, dtype=torch.float32).div_(255.0)
    m = torch.tensor(mean, device=rt.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=rt.device).view(1, -1, 1, 1)
    x = (x - m) / s
    return x.contiguous(memory_format=torch.channels_last) if rt.channels_last else x


def batches(n: int, batch_size: int, rng: np.random.Generator | None, rt: Runtime) -> Iterator[np.ndarray]:
    """Index batches over range(n), shuffled when `rng` is given, sharded by rank for DDP."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    if rt.world > 1:
        order = order[rt.rank :: rt.world]
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size]


Heads = list[tuple[int, float]]  # (classes, loss weight) of each head, in the order of the output columns


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * F.log_softmax(logits.float(), 1)).sum(1).mean()


def head_columns(heads: Heads) -> Iterator[tuple[slice, float]]:
    """Each head's output columns and loss weight, in order."""
    start = 0
    for size, weight in heads:
        yield slice(start, start + size), weight
        start += size


def heads_loss(logits: torch.Tensor, target: torch.Tensor, heads: Heads) -> torch.Tensor:
    """The weighted sum of each head's soft cross-entropy over its own columns (a softmax per head)."""
    loss = logits.new_zeros((), dtype=torch.float32)
    for cols, weight in head_columns(heads):
        loss = loss + weight * soft_cross_entropy(logits[:, cols], target[:, cols])
    return loss


def consistency_loss(anchor: torch.Tensor, view: torch.Tensor, heads: Heads) -> torch.Tensor:
    """KL divergence from each head's prediction on the anchor images (held fixed) to its prediction on their
    second views, summed over the heads with their weights."""
    loss = anchor.new_zeros((), dtype=torch.float32)
    for cols, weight in head_columns(heads):
        target = F.softmax(anchor[:, cols].detach().float(), 1)
        loss = loss + weight * F.kl_div(F.log_softmax(view[:, cols].float(), 1), target, reduction="batchmean")
    return loss


def smooth_labels(dist: torch.Tensor, heads: Heads, eps: float) -> torch.Tensor:
    """Label smoothing within each head; rows without a target for a head (all zero) stay zero."""
    parts = []
    for cols, _ in head_columns(heads):
        d = dist[:, cols]
        parts.append(d * (1 - eps) + eps * d.sum(1, keepdim=True) / (cols.stop - cols.start))
    return torch.cat(parts, 1)


def train_epoch(
    model: nn.Module, images: np.ndarray, targets: np.ndarray, optimizer: torch.optim.Optimizer,
    cfg: TrainConfig, rt: Runtime, rng: np.random.Generator, norm: tuple[list[float], list[float]],
    step_fn: Any = None, desc: str = "train", heads: Heads | None = None,
) -> tuple[float, float]:  # fmt: skip
    """One pass over (images, targets). `targets` is N (class ids) or N x C (distributions); with `heads`,
    N x (sum of their classes), each head's columns a distribution or zero.

    Returns (mean loss, accuracy of the first head against the argmax target). `step_fn()` runs after each step.
    """
    model.train()
    w = cfg.degrade_weights
    weights = (float(w[0]), float(w[1]), float(w[2])) if w else None
    aug = AugmentParams(cfg.rotation, cfg.shift, cfg.shear, cfg.zoom, cfg.hflip, cfg.erasing, cfg.degrade, weights)
    policy = "standard" if cfg.augment == "balanced" else cfg.augment
    num_classes = int(targets.shape[1]) if targets.ndim == 2 else int(targets.max()) + 1
    num_classes = max(num_classes, _out_features(model))
    heads = heads or [(num_classes, 1.0)]
    first = heads[0][0]
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    tot_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(
        list(batches(len(images), cfg.batch_size, rng, rt)),
        desc=desc,
        leave=False,
        disable=not rt.main,
        mininterval=0.5 if sys.stderr.isatty() else 60,
    )
    for idx in bar:
        if len(idx) < 2:
            continue  # BatchNorm needs 2+ samples
        views = augment_batch(images[idx], rng, policy, aug)
        x = random_erasing(to_tensor(views, *norm, rt), cfg.erasing, gen)
        if cfg.consistency > 0:  # the second views join the batch: one forward pass, BatchNorm over both
            second = np.stack([consistency_view(v, rng) for v in views])
            x = torch.cat([x, random_erasing(to_tensor(second, *norm, rt), cfg.erasing, gen)])
        t = torch.from_numpy(targets[idx]).to(rt.device)
        dist = t.float() if t.ndim == 2 else F.one_hot(t, num_classes).float()
        if cfg.label_smoothing > 0:
            dist = smooth_labels(dist, heads, cfg.label_smoothing)
        x, dist = mixup(x, dist, cfg.mixup, rng)
        with rt.autocast():
            logits = model(x)
        if cfg.consistency > 0:
            logits, seconds = logits[: len(idx)], logits[len(idx) :]
            loss = heads_loss(logits, dist, heads) + cfg.consistency * consistency_loss(logits, seconds, heads)
        else:
            loss = heads_loss(logits, dist, heads)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step_fn is not None:
            step_fn()
        tot_loss += float(loss.detach()) * len(idx)
        correct += int((logits[:, :first].argmax(1) == dist[:, :first].argmax(1)).sum())
        seen += len(idx)
        bar.set_postfix(loss=f"{tot_loss / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
    return tot_loss / max(seen, 1), correct / max(seen, 1)


def _out_features(model: nn.Module) -> int:
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return int(last[-1].out_features) if last else 0


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: np.ndarray, norm: tuple[list[float], list[float]], rt: Runtime, batch_size: int = 512
) -> np.ndarray:
    """Float32 logits N x C of `model` (eval mode) on uint8 images."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = to_tensor(images[i : i + batch_size], *norm, rt)
        with rt.autocast():
            out.append(model(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, _out_features(model)), np.float32)
