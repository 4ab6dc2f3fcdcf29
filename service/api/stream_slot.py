"""The one-frame mailbox between a stream's receiver and its processor (newest frame wins)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass
class PendingFrame:
    """An encoded frame waiting to be processed."""

    data: bytes
    frame_id: int | str | None
    ts: float | None
    received: float  # time.perf_counter() when its last byte arrived


class FrameSlot:
    """Holds at most one frame. `put` replaces (drops) a waiting frame and says so; `get` waits."""

    def __init__(self) -> None:
        self._frame: PendingFrame | None = None
        self._ready = asyncio.Event()

    def put(self, frame: PendingFrame) -> bool:
        """Store `frame`; True when it replaced a frame that was never processed."""
        replaced = self._frame is not None
        self._frame = frame
        self._ready.set()
        return replaced

    async def get(self) -> PendingFrame:
        """The newest frame, waiting for one if the slot is empty; the slot is empty afterwards."""
        while self._frame is None:
            self._ready.clear()
            await self._ready.wait()
        frame, self._frame = self._frame, None
        self._ready.clear()
        return frame

    def take(self) -> PendingFrame | None:
        """Empty the slot without waiting: the frame that was waiting, if any."""
        frame, self._frame = self._frame, None
        return frame
