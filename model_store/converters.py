"""Converters turn a downloaded source (e.g. a PyTorch state_dict) into a self-contained ONNX file.

Each is named in the catalog and implemented elsewhere; they are imported only when a pull needs
them, because they depend on the `train` extra (torch).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model_store.errors import ConverterUnavailable

Converter = Callable[[Path, Path, dict[str, Any]], Path]

CONVERTERS: dict[str, str] = {
    "retinaface": "service.pipeline.detectors.retinaface_export:convert",
}


def get_converter(name: str) -> Converter:
    """Import the converter `name`; ConverterUnavailable says what to install when that fails."""
    if name not in CONVERTERS:
        raise ConverterUnavailable(f"unknown converter {name!r}; known: {', '.join(sorted(CONVERTERS))}")
    module, _, attr = CONVERTERS[name].partition(":")
    try:
        fn: Converter = getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as exc:
        raise ConverterUnavailable(
            f"converter {name!r} needs {exc.name!r}: install the training extra (pip install 'emoserve[train]')"
        ) from exc
    except AttributeError as exc:
        raise ConverterUnavailable(f"converter {name!r} is not available in {module}") from exc
    return fn
