"""Helpers shared by the CLI modules: settings, the store, and mapping errors to exit codes."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from model_store import ModelStore, ModelStoreError
from service.errors import EmoserveError, spec_for
from service.settings import Settings, get_settings

F = TypeVar("F", bound=Callable[..., Any])

err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False, soft_wrap=True)


def fail(message: str, exit_code: int) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)  # `[x]` is text
    raise typer.Exit(exit_code)


def load_settings(**overrides: Any) -> Settings:
    try:
        return get_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"EMOSERVE_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors())
        fail(f"invalid settings: {problems}", 2)


def open_store(settings: Settings) -> ModelStore:
    return ModelStore(settings.model_root)


def handle_errors(fn: F) -> F:
    """Turn domain errors into a one-line message and the exit code of the error table."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (EmoserveError, ModelStoreError) as exc:
            fail(str(exc), spec_for(exc).exit_code)
        except KeyboardInterrupt:
            err_console.print("interrupted")
            sys.exit(130)

    return wrapper  # type: ignore[return-value]
