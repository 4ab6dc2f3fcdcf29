"""The result models, shared with the server (one definition: service.pipeline.schema / stream_schema)."""

from __future__ import annotations

from service.pipeline.schema import AnalysisResult, AnalyzeOptions, Box, Emotion, Explanation, Face
from service.pipeline.stream_schema import (
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
    "Pong",
    "StreamConfig",
    "StreamEmotion",
    "StreamError",
    "StreamFace",
    "StreamResult",
    "parse_server_message",
]
