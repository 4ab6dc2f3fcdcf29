"""One list of the modules that add commands to `emoserve`; each exposes `register(app)`.

Modules must not import heavy dependencies (torch, onnxruntime) at import time: do that inside the
command functions, so `emoserve models ...` stays fast and works without the `train` extra.
"""

from __future__ import annotations

import importlib

import typer

COMMAND_MODULES: list[str] = [
    "service.cli.predict",  # issue: pipeline   (emoserve predict)
    "service.cli.serve",
    "service.cli.stream",  # issue: streaming  (emoserve stream)
    "service.cli.explain",  # issue: #19      (emoserve explain: Grad-CAM per face of a photo)
    "training.cli",  # issue: training   (train, evaluate, export, compare)
]


def register_all(app: typer.Typer) -> None:
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(app)
