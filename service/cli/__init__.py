"""The `emoserve` command line. Sub-commands live in small modules and register here."""

from __future__ import annotations

import typer

from service.cli import models as models_cli

app = typer.Typer(
    name="emoserve",
    help="Real-time facial emotion recognition: models, inference, serving and training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(models_cli.app, name="models")


def _register_optional() -> None:
    """Commands contributed by other modules (pipeline, service, training) register here."""
    from service.cli import registry

    registry.register_all(app)


_register_optional()


def main() -> None:
    app()
