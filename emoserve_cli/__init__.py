"""The `emoserve` command line, above every other layer: the service (serve, predict, models, explain),
the training job (train, export, evaluate, compare) and the SDK (stream).

Command modules import nothing heavy at import time (torch, onnxruntime, OpenCV load inside the
commands), so `emoserve models ...` stays fast and works without the `train` extra.
"""

from __future__ import annotations

import typer

from emoserve_cli import explain, predict, serve, stream, train
from emoserve_cli import models as models_cli
from training import compare

app = typer.Typer(
    name="emoserve",
    help="Real-time facial emotion recognition: models, inference, serving and training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(models_cli.app, name="models")
for module in (predict, serve, stream, explain, train, compare):
    module.register(app)


def main() -> None:
    app()
