"""Training run configuration (one YAML file per run, saved with the run's outputs)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


@dataclass
class TrainConfig:
    """Everything that defines a training run. Unknown keys in a YAML file are an error."""

    name: str = "run"
    description: str = ""  # one line for the manifest and the model card
    model: str = "resnet18s"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    init_from: str | None = None  # checkpoint to start from (e.g. the FER+ model for FER2013; heads mapped by label)
    # data
    data: str | None = None  # dataset folder/file (the CLI's --data wins)
    format: str = "auto"  # fer2013csv | fer2013 | ferplus | rafdb | affectnet | folder | auto
    data_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {"rule": "majority"} for FER+
    soft_targets: bool = False  # train against soft targets (FER+ vote distributions) when the dataset has them
    max_train_samples: int | None = None  # for smoke runs
    distill_from: str | None = None  # teacher NAME@ALIAS (or .onnx): its softened predictions join the targets
    distill_weight: float = 0.5  # share of the teacher in each target (training/distill.py)
    distill_temperature: float = 2.0
    second_head: float = 0.0  # loss weight of a second head on the dataset's second labels (FER+ with
    # data_kwargs fer2013: the original FER2013 labels); 0 = one head. One forward pass gives both conventions.
    # optimisation
    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "adamw"  # adamw | sgd | rmsprop
    lr: float = 2e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | plateau | none
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    mixup: float = 0.0  # mixup alpha (0 = off)
    patience: int = 0  # early stopping on val accuracy (0 = off)
    ema: float = 0.0  # decay of an exponential moving average of the weights (0 = off); validated and exported
    # augmentation
    augment: str = "standard"  # none | standard | balanced
    rotation: float = 12.0
    shift: float = 0.1
    shear: float = 0.1
    zoom: float = 0.1
    hflip: float = 0.5
    erasing: float = 0.0
    degrade: float = 0.0  # probability of a loss of detail and of a tone change (training/data/degrade.py)
    degrade_weights: list[float] | None = None  # odds of its downscale, blur and JPEG (default: equal)
    consistency: float = 0.0  # weight of a loss that asks each image's prediction to survive a second view of it
    # (training/data/degrade.consistency_view: crop jitter, half the time a harsh JPEG or downscale); 0 = off
    pca: bool = False  # per-channel PCA keeping `pca_variance` of the variance (training/data/pca.py)
    pca_variance: float = 0.95
    # runtime
    seed: int = 42
    threads: int = 2
    amp: str = "auto"  # auto (bf16 on CPU, fp16 on CUDA) | bf16 | fp16 | none
    channels_last: bool = True
    device: str = "auto"  # auto | cpu | cuda
    eval_batch_size: int = 512
    time_budget_s: float | None = None  # stop after the epoch that would overrun this
    # export
    flip_tta: bool = False  # export the average of the image and its mirror image

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, path: Path) -> TrainConfig:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a config is a mapping")
        return cls.from_dict(data)

    def validate(self) -> None:
        choices = {"optimizer": ("adamw", "sgd", "rmsprop"), "schedule": ("cosine", "plateau", "none"),
                   "augment": ("none", "standard", "balanced"), "amp": ("auto", "bf16", "fp16", "none"),
                   "device": ("auto", "cpu", "cuda")}  # fmt: skip
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}, not {getattr(self, key)!r}")
        if not 0.0 <= self.degrade <= 1.0:
            raise ValueError(f"degrade must be a probability in [0, 1], got {self.degrade}")
        if self.degrade > 0 and self.augment == "none":
            raise ValueError("degrade is part of the augmentation: it needs augment standard or balanced, not none")
        w = self.degrade_weights
        if w is not None and (
            not isinstance(w, list | tuple)
            or len(w) != 3
            or not all(isinstance(v, int | float) and v >= 0 for v in w)
            or sum(w) <= 0
        ):
            raise ValueError(f"degrade_weights are three odds (downscale, blur, JPEG), got {w!r}")
        if w is not None and self.degrade == 0:
            raise ValueError("degrade_weights choose among degradations, but degrade is 0: set degrade too")
        if self.consistency < 0:
            raise ValueError(f"consistency is a loss weight, it cannot be negative ({self.consistency})")
        if self.consistency > 0 and self.mixup > 0:
            raise ValueError("consistency compares two views of one image, and a mixup image has no single second "
                             "view: set mixup 0")  # fmt: skip
        if self.consistency > 0 and self.augment == "none":
            raise ValueError("consistency's second views are made on top of the augmentation: set augment standard "
                             "or balanced")  # fmt: skip
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if not 0.0 <= self.distill_weight <= 1.0 or self.distill_temperature <= 0:
            raise ValueError("distill_weight must be in [0, 1] and distill_temperature positive")
        if self.second_head < 0:
            raise ValueError(f"second_head is a loss weight, it cannot be negative ({self.second_head})")
        source = self.init_from or ""
        if self.second_head > 0 and (source.endswith(".pt") or "#" in source or self.pca):
            raise ValueError("a second head does not combine with a .pt init_from, an ensemble member (NAME@ALIAS#K) "
                             "or pca yet (a published one-network graph is fine: the second head then starts "
                             "fresh)")  # fmt: skip
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs, batch_size and lr must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
