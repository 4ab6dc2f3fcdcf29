"""Python SDK for emoserve: REST (`analyze`, `analyze_batch`, `annotate`) and the WebSocket stream.

from emoserve_client import Client
with Client("http://127.0.0.1:8000") as c:
    result = c.analyze("face.jpg")
    print(result.faces[0].emotion.label)
"""

from __future__ import annotations

from emoserve_client.client import AsyncClient, Client
from emoserve_client.errors import EmoserveAPIError, StreamClosed
from emoserve_client.models import AnalysisResult, StreamConfig, StreamFace, StreamResult

__all__ = [
    "AnalysisResult",
    "AsyncClient",
    "Client",
    "EmoserveAPIError",
    "StreamClosed",
    "StreamConfig",
    "StreamFace",
    "StreamResult",
]
