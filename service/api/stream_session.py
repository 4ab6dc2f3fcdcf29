"""One `WS /v1/stream` connection: authenticate, then receive and process concurrently.

Only protocol work lives here (messages, the frame slot, pacing, tracking and smoothing); keys, limits,
model checkout, timeouts and metrics are the data plane's (`service.serving.dataplane`).

The receiver reads messages as fast as they come and parks each binary frame in a `FrameSlot`
(size 1: a newer frame drops the waiting one, counted in `dropped_since_last`). The processor takes
the newest frame, runs the shared pipeline (its classifier batches faces across all streams),
tracks and smooths, and awaits sending the result before it takes the next frame, so at most one
result is in flight and a slow reader cannot grow server memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import numpy as np
from fastapi import WebSocket
from pydantic import BaseModel
from starlette.websockets import WebSocketDisconnect, WebSocketState

from service.api.deps import header_key
from service.api.stream_slot import FrameSlot, PendingFrame
from service.errors import (
    EmoserveError,
    ExplanationUnavailable,
    Forbidden,
    ImageTooLarge,
    InvalidImage,
    InvalidOptions,
    Overloaded,
    ShuttingDown,
    Unauthorized,
    UnsupportedMediaType,
    spec_for,
)
from service.pipeline.schema import AnalysisResult
from service.pipeline.stream_reuse import FaceReuse, StreamState
from service.pipeline.stream_schema import (
    Auth,
    FrameMeta,
    Hello,
    Ping,
    Pong,
    StreamConfig,
    StreamEmotion,
    StreamError,
    StreamFace,
    StreamResult,
    StreamSettings,
    parse_control,
)
from service.pipeline.tracking import IouTracker, TrackerConfig
from service.serving.dataplane import DataPlane
from service.serving.keys import Principal

log = logging.getLogger("emoserve.stream")

# failures of one frame or one control message: answered with an error message, the stream goes on
RECOVERABLE = (InvalidImage, UnsupportedMediaType, InvalidOptions)


class _ClientGone(Exception):
    """The client closed the connection."""


class StreamSession:
    """State and loops of one stream connection."""

    def __init__(self, ws: WebSocket, plane: DataPlane) -> None:
        self.ws = ws
        self.plane = plane
        s = plane.settings
        self.config = StreamSettings()
        self.tracker = IouTracker(TrackerConfig(max_missed=s.ws_track_max_missed, smoothing=self.config.smoothing))
        self.slot = FrameSlot()
        self.frames = StreamState()  # work carried across frames (faces, their crops and emotions)
        self.policy = self.config.policy(self.plane.settings)  # rebuilt when a `config` arrives
        self.dropped = 0
        self.seq = 0
        self.meta: FrameMeta | None = None
        self.send_lock = asyncio.Lock()
        self.stop = asyncio.Event()
        self.close_exc: BaseException | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def going_away(self) -> None:
        """Called by the hub on shutdown: close with 1001."""
        if self.close_exc is None:
            self.close_exc = ShuttingDown("server shutting down")
        self.stop.set()

    async def run(self, open_streams: int = 0) -> None:
        """Serve the connection until the client leaves, an error closes it, or the server stops.
        `open_streams`: the worker's other open streams (for the global cap)."""
        await self.ws.accept()
        try:
            self._admit(open_streams)
            await self._authenticate()
            await self._send(self._hello())
        except _ClientGone:
            return
        except Exception as exc:
            await self._close(exc)
            return
        tasks = [
            asyncio.create_task(self._receive_loop(), name="ws-receive"),
            asyncio.create_task(self._process_loop(), name="ws-process"),
            asyncio.create_task(self.stop.wait(), name="ws-stop"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            failure = task.exception() if not task.cancelled() else None
            gone = isinstance(failure, _ClientGone | WebSocketDisconnect)
            if failure is not None and not gone and self.close_exc is None:
                self.close_exc = failure
        if self.close_exc is not None:
            await self._close(self.close_exc)

    async def _close(self, exc: BaseException) -> None:
        spec = spec_for(exc)
        if spec.ws_close == 1011 and not isinstance(exc, EmoserveError):
            log.exception("stream failed", exc_info=exc)
        reason = (str(exc) if isinstance(exc, EmoserveError) else "internal error")[:120]
        with contextlib.suppress(Exception):
            if self.ws.application_state != WebSocketState.DISCONNECTED:
                await self.ws.close(code=spec.ws_close, reason=reason)

    def _admit(self, open_streams: int) -> None:
        """Refuse a browser page from an origin not allowed (1008) and streams over the cap (1013)."""
        s = self.plane.settings
        origin = self.ws.headers.get("origin")
        if s.ws_allowed_origins and origin is not None and origin not in s.ws_allowed_origins:
            raise Forbidden(f"origin {origin[:60]} is not allowed to open streams")
        if open_streams >= s.ws_max_streams:
            raise Overloaded(f"{open_streams} streams open (limit {s.ws_max_streams}); retry later", retry_after_s=5)

    async def _authenticate(self) -> Principal:
        plane = self.plane
        if "api_key" in self.ws.query_params:
            raise Unauthorized('API keys in the URL are refused: send {"type": "auth", "api_key": ...} first')
        key = header_key(self.ws.headers)
        if plane.keys.clients_need_key and not key:
            try:
                text = await asyncio.wait_for(self._receive_text(), plane.settings.ws_auth_timeout_s)
            except TimeoutError:
                raise Unauthorized('no API key: send {"type": "auth", "api_key": ...} first') from None
            try:
                message = parse_control(text) if text is not None else None
            except InvalidOptions:
                message = None
            if not isinstance(message, Auth):
                raise Unauthorized('the first message must be {"type": "auth", "api_key": ...}')
            key = message.api_key
        client = self.ws.client.host if self.ws.client else "unknown"
        return await plane.authorize(key, client)

    def _hello(self) -> Hello:
        s = self.plane.settings
        return Hello(
            analysis_size=max(s.detector_max_side, s.decode_min_side),  # crops come from frames up to this size
            detect_size=s.detector_max_side,
            max_frame_bytes=s.ws_max_frame_bytes,
            max_fps=s.ws_max_fps,
            max_faces=s.max_faces,
        )

    async def _receive_text(self) -> str | None:
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            raise _ClientGone
        return message.get("text")

    # -- receiving -----------------------------------------------------------------------------
    async def _receive_loop(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                raise _ClientGone
            data = message.get("bytes")
            if data is not None:
                await self._on_frame(data)
            elif message.get("text") is not None:
                await self._on_text(message["text"])

    async def _on_frame(self, data: bytes) -> None:
        meta, self.meta = self.meta, None
        frame_id = meta.id if meta is not None and meta.id is not None else self.seq
        ts = meta.ts if meta is not None and meta.ts is not None else time.time()
        self.seq += 1
        limit = self.plane.settings.ws_max_frame_bytes
        if len(data) > limit:  # the stream closes (1009): account for this frame and the one waiting
            exc = ImageTooLarge(f"frame of {len(data)} bytes is over the limit of {limit}", detail={"limit": limit})
            waiting = 1 if self.slot.take() is not None else 0
            await self._send(
                StreamError(
                    code=spec_for(exc).code,
                    message=str(exc),
                    frame_id=frame_id,
                    dropped_since_last=self.dropped + waiting,
                )
            )
            raise exc
        if self.slot.put(PendingFrame(data, frame_id, ts, time.perf_counter())):
            self.dropped += 1
            self.plane.metrics.ws_frames.labels(outcome="dropped").inc()

    async def _on_text(self, text: str) -> None:
        try:
            message = parse_control(text)
        except InvalidOptions as exc:
            await self._send(StreamError(code=spec_for(exc).code, message=str(exc)))
            return
        if isinstance(message, StreamConfig):
            if message.explain:  # refused once here, not on every frame: the config stays as it was
                try:
                    await self.plane.check({"explain": True})
                except ExplanationUnavailable as exc:
                    await self._send(StreamError(code=spec_for(exc).code, message=str(exc)))
                    return
            self.config = self.config.merged(message)
            self.policy = self.config.policy(self.plane.settings)
            self.tracker.set_smoothing(self.config.smoothing)
            if not self.config.track:
                self.tracker.reset()
        elif isinstance(message, FrameMeta):
            self.meta = message
        elif isinstance(message, Ping):
            await self._send(Pong())
        # a late `auth` message is ignored: the connection is authenticated already

    # -- processing ----------------------------------------------------------------------------
    def _fps_limit(self) -> float:
        limits = [f for f in (self.config.fps_limit, self.plane.settings.ws_max_fps) if f > 0]
        return min(limits) if limits else 0.0

    async def _process_loop(self) -> None:
        metrics = self.plane.metrics
        next_at = 0.0
        while True:
            wait = next_at - time.perf_counter()
            if wait > 0:  # frames arriving meanwhile replace each other in the slot
                await asyncio.sleep(wait)
            frame = await self.slot.get()
            limit = self._fps_limit()
            next_at = time.perf_counter() + (1.0 / limit if limit > 0 else 0.0)
            try:
                result, reuse = await self._analyze(frame)
            except RECOVERABLE as exc:
                metrics.ws_frames.labels(outcome="invalid").inc()
                error = StreamError(
                    code=spec_for(exc).code, message=str(exc), frame_id=frame.frame_id, dropped_since_last=self.dropped
                )
                self.dropped = 0
                await self._send(error)
                continue
            latency = time.perf_counter() - frame.received
            metrics.ws_frames.labels(outcome="processed").inc()
            metrics.ws_frame_latency.observe(latency)
            message = StreamResult(
                frame_id=frame.frame_id,
                ts=frame.ts,
                latency_ms=round(latency * 1000.0, 2),
                faces=self._faces(result, reuse),
                dropped_since_last=self.dropped,
            )
            self.dropped = 0
            await self._send(message)

    async def _analyze(self, frame: PendingFrame) -> tuple[AnalysisResult, list[FaceReuse]]:
        return await self.plane.analyze_frame(frame.data, self.config.options(), self.frames, self.policy)

    def _faces(self, result: AnalysisResult, reuse: list[FaceReuse]) -> list[StreamFace]:
        """Attach track ids and smoothed scores to the pipeline's faces."""
        tracks = (
            self.tracker.update([(f.box.x1, f.box.y1, f.box.x2, f.box.y2) for f in result.faces])
            if self.config.track
            else [None] * len(result.faces)
        )
        smoothing = self.config.smoothing > 0
        faces = []
        for face, track, how in zip(result.faces, tracks, reuse, strict=True):
            labels = list(face.emotion.scores)
            raw = np.array([face.emotion.scores[k] for k in labels])
            smoothed = track.smoother.update(raw) if track is not None else raw
            best = int(np.argmax(smoothed)) if smoothing and track is not None else int(np.argmax(raw))
            source = smoothed if smoothing and track is not None else raw
            faces.append(
                StreamFace(
                    track_id=track.id if track is not None else None,
                    box=face.box,
                    score=face.score,
                    landmarks=face.landmarks,
                    emotion=StreamEmotion(
                        label=labels[best],
                        confidence=round(float(source[best]), 6),
                        scores=face.emotion.scores,
                        smoothed_scores={k: round(float(v), 6) for k, v in zip(labels, smoothed, strict=True)},
                    ),
                    classified=how.classified,
                    emotion_age=how.age,
                    explanation=face.explanation,
                )
            )
        return faces

    async def _send(self, message: BaseModel) -> None:
        """Send one message; only one send runs at a time (at most one result in flight)."""
        async with self.send_lock:
            try:
                await self.ws.send_text(message.model_dump_json())
            except (WebSocketDisconnect, RuntimeError) as exc:
                raise _ClientGone from exc
