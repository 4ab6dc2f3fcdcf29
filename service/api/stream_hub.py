"""The set of open WebSocket streams, and closing them with 1001 when the server stops.

uvicorn closes open WebSockets with 1012 as soon as it starts shutting down, before the app's
lifespan shutdown runs. So the lifespan installs a hook on SIGTERM/SIGINT that first closes every
stream with 1001 (going away) and only then hands the signal to uvicorn's own handler; the
lifespan's shutdown closes whatever is still open the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

log = logging.getLogger("emoserve.stream")

Handler = Callable[[int, FrameType | None], Any]


class Closable(Protocol):
    def going_away(self) -> None:
        """Ask the stream to close with 1001; it removes itself from the hub when done."""


class StreamHub:
    """Tracks open streams; `close_all` asks each to go away and waits (bounded) for them."""

    def __init__(self) -> None:
        self._streams: set[Closable] = set()
        self._empty = asyncio.Event()
        self._empty.set()
        self.closing = False
        self._restore: list[tuple[int, Any]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._streams)

    def add(self, stream: Closable) -> None:
        self._streams.add(stream)
        self._empty.clear()

    def discard(self, stream: Closable) -> None:
        self._streams.discard(stream)
        if not self._streams:
            self._empty.set()

    async def close_all(self, timeout_s: float = 3.0) -> None:
        """Close every open stream with 1001 and wait up to `timeout_s` for them to finish."""
        self.closing = True
        for stream in list(self._streams):
            stream.going_away()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._empty.wait(), timeout_s)

    # -- signals -------------------------------------------------------------------------------
    def install_signal_hook(self) -> None:
        """Wrap the current SIGTERM/SIGINT handlers (uvicorn's) so streams close with 1001 first."""
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)
            if not callable(previous):
                continue
            signal.signal(sig, self._wrap(loop, previous))
            self._restore.append((sig, previous))

    def uninstall_signal_hook(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, previous in self._restore:
            signal.signal(sig, previous)
        self._restore.clear()

    def _wrap(self, loop: asyncio.AbstractEventLoop, previous: Handler) -> Handler:
        def handler(signum: int, frame: FrameType | None) -> None:
            if not self._streams or self.closing:
                previous(signum, frame)
                return
            log.info("signal %d: closing %d open stream(s) with 1001", signum, len(self._streams))

            async def close_then_forward() -> None:
                try:
                    await self.close_all()
                finally:
                    previous(signum, None)

            def spawn() -> None:
                task = loop.create_task(close_then_forward())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

            loop.call_soon_threadsafe(spawn)

        return handler
