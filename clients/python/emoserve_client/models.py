"""The result models (one definition, `emoserve_client.schema`, which the server uses too)."""

from __future__ import annotations

from emoserve_client.schema import (
    AnalysisResult,
    AnalyzeOptions,
    Box,
    Emotion,
    Explanation,
    Face,
    OptionsError,
    Pong,
    StreamConfig,
    StreamEmotion,
    StreamError,
    StreamFace,
    StreamResult,
    parse_server_message,
)

__all__ = [
    "AnalysisResult",
    "AnalyzeOptions",
    "Box",
    "Emotion",
    "Explanation",
    "Face",
    "OptionsError",
    "Pong",
    "StreamConfig",
    "StreamEmotion",
    "StreamError",
    "StreamFace",
    "StreamResult",
    "parse_server_message",
]
