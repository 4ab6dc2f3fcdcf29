"""The WebSocket stream from the client side: send frames, get one result per processed frame.

The server keeps only the newest pending frame, so frames sent faster than it processes are
dropped (reported in `dropped_since_last`); the last frame is never dropped, and the iterator ends
with its result (or its error).

The server's first message (`hello`) says the size it detects faces at. BGR arrays larger than that
are downscaled before JPEG encoding (`max_side`: None = the server's size, 0 = never), and the boxes,
landmarks and heat-map affines of their results are mapped back, so results are always in the
coordinates of the frames passed in. Encoded frames (bytes, paths) are sent as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError

from emoserve_client.errors import StreamClosed
from emoserve_client.inputs import ImageLike, encode, shrink
from emoserve_client.models import StreamError, StreamResult, parse_server_message
from emoserve_client.schema import Hello

HELLO_TIMEOUT_S = 3.0  # a server without `hello` (older): frames go as they are after this wait
DEFAULT_QUALITY = 80

Frames = Iterable[ImageLike] | AsyncIterable[ImageLike]
ErrorHook = Callable[[StreamError], None]


def stream_url(base_url: str) -> str:
    """`http(s)://host:port` -> `ws(s)://host:port/v1/stream` (the key goes in a header, never the URL)."""
    parts = urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/v1/stream", "", ""))


def key_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def config_message(config: dict[str, Any] | None) -> str | None:
    body = {k: v for k, v in (config or {}).items() if v is not None}
    return json.dumps({"type": "config", **body}) if body else None


class Sizing:
    """What each frame is sent at: the analysis size from `hello`, and the scale of every downscaled frame."""

    def __init__(self, max_side: int | None, quality: int) -> None:
        self.max_side = max_side
        self.quality = quality
        self.scales: dict[int, tuple[float, float]] = {}  # frame id -> (x, y) scale it was sent at

    def hello(self, raw: str | bytes) -> bool:
        """Take the server's `hello` (True), or say that `raw` is some other message (False)."""
        try:
            message = parse_server_message(raw)
        except ValidationError:  # a message type this SDK does not know
            return False
        if not isinstance(message, Hello):
            return False
        if self.max_side is None:
            self.max_side = message.analysis_size
        return True

    def encode(self, index: int, frame: ImageLike) -> bytes:
        image, scale = shrink(frame, self.max_side or 0)
        if scale != (1.0, 1.0):
            self.scales[index] = scale
        return encode(image, self.quality)

    def forget(self, frame_id: int | str | None) -> None:
        """Frame `frame_id` and the ones before it are answered (or dropped): their scales go."""
        if isinstance(frame_id, int):
            for sent in [k for k in list(self.scales) if k <= frame_id]:
                self.scales.pop(sent, None)

    def restore(self, result: StreamResult) -> StreamResult:
        """`result` in the coordinates of the frame as it was passed in."""
        sx, sy = self.scales.get(result.frame_id, (1.0, 1.0)) if isinstance(result.frame_id, int) else (1.0, 1.0)
        self.forget(result.frame_id)
        if (sx, sy) == (1.0, 1.0):
            return result
        kx, ky = 1.0 / sx, 1.0 / sy
        faces = []
        for face in result.faces:
            b = face.box
            box = b.model_copy(update={"x1": b.x1 * kx, "y1": b.y1 * ky, "x2": b.x2 * kx, "y2": b.y2 * ky})
            marks = [[x * kx, y * ky] for x, y in face.landmarks] if face.landmarks else face.landmarks
            ex = face.explanation
            if ex is not None:
                row_x, row_y = ex.affine
                ex = ex.model_copy(update={"affine": [[v * kx for v in row_x], [v * ky for v in row_y]]})
            faces.append(face.model_copy(update={"box": box, "landmarks": marks, "explanation": ex}))
        return result.model_copy(update={"faces": faces})


def _closed(exc: Exception) -> StreamClosed:
    rcvd = getattr(exc, "rcvd", None)
    return StreamClosed(getattr(rcvd, "code", None), getattr(rcvd, "reason", "") or str(exc))


def _is_clean(exc: Exception) -> bool:
    rcvd = getattr(exc, "rcvd", None)
    return rcvd is not None and rcvd.code == 1000


async def _aiter_frames(frames: Frames) -> AsyncIterator[ImageLike]:
    if isinstance(frames, AsyncIterable):
        async for frame in frames:
            yield frame
    else:
        for frame in frames:
            yield frame


async def astream(
    base_url: str,
    frames: Frames,
    *,
    api_key: str | None = None,
    config: dict[str, Any] | None = None,
    fps: float | None = None,
    on_error: ErrorHook | None = None,
    final_timeout_s: float = 30.0,
    max_side: int | None = None,
    quality: int = DEFAULT_QUALITY,
) -> AsyncIterator[StreamResult]:
    """Send `frames` (paths, bytes or BGR arrays; frame ids 0, 1, ...) and yield the results.

    `fps` paces sending (None = as fast as the socket takes them). Errors for single frames go
    to `on_error`; a close by the server other than 1000 raises `StreamClosed`. `max_side` and
    `quality`: how arrays are sent (see the module docstring).
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    last_id: list[int] = []  # set once every frame is sent
    async with connect(
        stream_url(base_url), additional_headers=key_headers(api_key), compression=None, max_size=None
    ) as ws:
        sizing = Sizing(max_side, quality)
        early: list[str | bytes] = []
        try:
            first = await asyncio.wait_for(ws.recv(), HELLO_TIMEOUT_S)
            if not sizing.hello(first):
                early.append(first)
        except TimeoutError:
            pass  # a server without `hello`: frames go as they are
        except ConnectionClosed as exc:
            raise _closed(exc) from None
        if (message := config_message(config)) is not None:
            await ws.send(message)

        async def send_all() -> None:
            start, i = time.perf_counter(), -1
            async for i, frame in _aenumerate(_aiter_frames(frames)):
                if fps:
                    await asyncio.sleep(max(0.0, start + i / fps - time.perf_counter()))
                data = await asyncio.to_thread(sizing.encode, i, frame)
                await ws.send(json.dumps({"type": "frame", "id": i, "ts": time.time()}))
                await ws.send(data)
            last_id.append(i)

        sender = asyncio.create_task(send_all())
        max_seen, deadline = -1, None
        try:
            while True:
                if sender.done():
                    if sender.exception() is not None:
                        failure = sender.exception()
                        raise _closed(failure) if isinstance(failure, ConnectionClosed) else failure  # type: ignore[misc]
                    if max_seen >= last_id[0]:
                        return
                    deadline = deadline or time.monotonic() + final_timeout_s
                    if time.monotonic() > deadline:
                        return
                try:
                    raw = early.pop() if early else await asyncio.wait_for(ws.recv(), 0.2)
                except TimeoutError:
                    continue
                except ConnectionClosed as exc:
                    if sender.done() and sender.exception() is None and _is_clean(exc):
                        return
                    raise _closed(exc) from None
                result, max_seen = _handle(raw, on_error, max_seen, sizing)
                if result is not None:
                    yield result
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender


async def _aenumerate(items: AsyncIterator[ImageLike]) -> AsyncIterator[tuple[int, ImageLike]]:
    i = 0
    async for item in items:
        yield i, item
        i += 1


def stream_sync(
    base_url: str,
    frames: Iterable[ImageLike],
    *,
    api_key: str | None = None,
    config: dict[str, Any] | None = None,
    fps: float | None = None,
    on_error: ErrorHook | None = None,
    final_timeout_s: float = 30.0,
    max_side: int | None = None,
    quality: int = DEFAULT_QUALITY,
) -> Iterator[StreamResult]:
    """The blocking twin of `astream` (websockets' sync client; frames are sent from a thread)."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    done: queue.Queue[int | BaseException] = queue.Queue()
    with connect(stream_url(base_url), additional_headers=key_headers(api_key), compression=None, max_size=None) as ws:
        sizing = Sizing(max_side, quality)
        early: list[str | bytes] = []
        try:
            first = ws.recv(timeout=HELLO_TIMEOUT_S)
            if not sizing.hello(first):
                early.append(first)
        except TimeoutError:
            pass  # a server without `hello`: frames go as they are
        except ConnectionClosed as exc:
            raise _closed(exc) from None
        if (message := config_message(config)) is not None:
            ws.send(message)

        def send_all() -> None:
            start, i = time.perf_counter(), -1
            try:
                for i, frame in enumerate(frames):
                    if fps:
                        time.sleep(max(0.0, start + i / fps - time.perf_counter()))
                    data = sizing.encode(i, frame)
                    ws.send(json.dumps({"type": "frame", "id": i, "ts": time.time()}))
                    ws.send(data)
                done.put(i)
            except BaseException as exc:  # reported to the reading thread
                done.put(exc)

        sender = threading.Thread(target=send_all, name="emoserve-stream-send", daemon=True)
        sender.start()
        last: int | None = None
        max_seen, deadline = -1, 0.0
        while True:
            if last is None and not done.empty():
                outcome = done.get()
                if isinstance(outcome, BaseException):
                    raise _closed(outcome) if isinstance(outcome, ConnectionClosed) else outcome
                last, deadline = outcome, time.monotonic() + final_timeout_s
            if last is not None and (max_seen >= last or time.monotonic() > deadline):
                return
            try:
                raw = early.pop() if early else ws.recv(timeout=0.2)
            except TimeoutError:
                continue
            except ConnectionClosed as exc:
                if last is not None and _is_clean(exc):
                    return
                raise _closed(exc) from None
            result, max_seen = _handle(raw, on_error, max_seen, sizing)
            if result is not None:
                yield result


def _handle(
    raw: str | bytes, on_error: Callable[[StreamError], None] | None, max_seen: int, sizing: Sizing
) -> tuple[StreamResult | None, int]:
    """Parse one server message: report errors, return a result (in the frame's own pixels), and track the
    highest frame id seen. A message type this SDK does not know is skipped."""
    try:
        message = parse_server_message(raw)
    except ValidationError:
        return None, max_seen
    if isinstance(message, StreamError):
        sizing.forget(message.frame_id)
        if on_error is not None:
            on_error(message)
    frame_id = getattr(message, "frame_id", None)
    if isinstance(frame_id, int):
        max_seen = max(max_seen, frame_id)
    return (sizing.restore(message) if isinstance(message, StreamResult) else None), max_seen
