"""`WS /v1/stream`: real-time analysis of a stream of encoded frames (see docs/streaming.md)."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from service.api.stream_hub import StreamHub
from service.api.stream_session import StreamSession
from service.serving.dataplane import DataPlane

router = APIRouter(prefix="/v1", tags=["stream"])


@router.websocket("/stream")
async def stream(websocket: WebSocket) -> None:
    """Binary messages are frames (JPEG/PNG/WebP); text messages are JSON control messages."""
    plane: DataPlane = websocket.app.state.plane
    hub: StreamHub = websocket.app.state.streams
    session = StreamSession(websocket, plane)
    if hub.closing:
        session.going_away()
    open_streams = len(hub)
    hub.add(session)
    plane.metrics.ws_connections.inc()
    try:
        await session.run(open_streams)
    finally:
        plane.metrics.ws_connections.dec()
        hub.discard(session)
