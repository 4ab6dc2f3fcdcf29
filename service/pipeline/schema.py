"""The analysis result and request options. They are the wire schema the SDK reads too
(`emoserve_client.schema`, pydantic alone), re-exported here; `parse_options` turns its `OptionsError`
into the server's `InvalidOptions` (422)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from emoserve_client.schema import (
    AnalysisResult,
    AnalyzeOptions,
    Box,
    Emotion,
    Explanation,
    Face,
    ImageSize,
    ModelInfo,
    ModelsUsed,
    OptionsError,
    Timings,
)

from service.errors import InvalidOptions

__all__ = [
    "AnalysisResult",
    "AnalyzeOptions",
    "Box",
    "Emotion",
    "Explanation",
    "Face",
    "ImageSize",
    "ModelInfo",
    "ModelsUsed",
    "Timings",
    "parse_options",
]


def parse_options(options: AnalyzeOptions | Mapping[str, Any] | None) -> AnalyzeOptions:
    """Validate options; anything out of range or unknown raises `InvalidOptions`."""
    try:
        return AnalyzeOptions.parse(options)
    except OptionsError as exc:
        raise InvalidOptions(str(exc), detail={"errors": exc.problems}) from None
