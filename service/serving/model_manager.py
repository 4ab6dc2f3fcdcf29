"""Holds the serving pipeline and swaps it atomically on a model change (hot reload).

A new pipeline is built and warmed beside the old one; the swap is one assignment; requests that
started on the old pipeline finish on it, and it is closed when the last of them is done. A failed
load leaves the old pipeline serving and reports the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from model_store import AliasNotFound, ModelNotFound, ModelStore
from service.errors import ModelLoadFailed, ModelNotReady

log = logging.getLogger("emoserve.models")


class ServingPipeline(Protocol):
    """What the manager needs from a pipeline."""

    def model_versions(self) -> dict[str, tuple[str, int, str]]:
        """role -> (name, version, provider)."""
        ...

    async def aclose(self) -> None: ...


PipelineFactory = Callable[[str, str], Awaitable[ServingPipeline]]


@dataclass
class _Slot:
    pipeline: ServingPipeline
    refs: dict[str, str]
    inflight: int = 0
    retired: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)


class ModelManager:
    """Current pipeline + hot reload. `refs` are the settings' detector/classifier references."""

    def __init__(
        self,
        store: ModelStore,
        factory: PipelineFactory,
        detector_ref: str,
        classifier_ref: str,
        *,
        advice: Callable[[str], str] | None = None,
    ) -> None:
        self.store = store
        self.advice = advice  # name -> what to do when the store lacks that model (said by /readyz)
        self.factory = factory
        self.refs = {"detector": detector_ref, "classifier": classifier_ref}
        self._slot: _Slot | None = None
        self._lock = asyncio.Lock()
        self.last_error: str | None = None
        self.on_swap: list[Callable[[dict[str, tuple[str, int, str]]], None]] = []

    @property
    def ready(self) -> bool:
        return self._slot is not None

    def versions(self) -> dict[str, tuple[str, int, str]]:
        return self._slot.pipeline.model_versions() if self._slot else {}

    def _resolved(self) -> dict[str, str]:
        """The refs pinned to versions as the store says now (aliases resolved)."""
        pinned = {}
        for role, ref in self.refs.items():
            try:
                pinned[role] = str(self.store.resolve_version(ref))
            except AliasNotFound:
                raise
            except ModelNotFound as exc:
                if self.advice is None:
                    raise
                raise ModelNotFound(f"{role} {ref}: {exc}; {self.advice(ref)}") from exc
        return pinned

    async def reload(self, *, force: bool = False) -> bool:
        """Load the versions the refs point at now; returns True when a swap happened."""
        async with self._lock:
            try:
                pinned = await asyncio.to_thread(self._resolved)
            except Exception as exc:
                self.last_error = str(exc)
                raise ModelLoadFailed(f"cannot resolve models: {exc}") from exc
            if self._slot is not None and self._slot.refs == pinned and not force:
                return False
            try:
                pipeline = await self.factory(pinned["detector"], pinned["classifier"])
            except Exception as exc:
                self.last_error = f"loading {pinned} failed: {exc}"
                log.error("model reload failed, keeping %s: %s", self._slot.refs if self._slot else None, exc)
                raise ModelLoadFailed(self.last_error) from exc
            old, self._slot = self._slot, _Slot(pipeline, pinned)
            self.last_error = None
            log.info("serving %s", pinned)
            for callback in self.on_swap:
                callback(pipeline.model_versions())
        if old is not None:
            await self._retire(old)
        return True

    async def _retire(self, slot: _Slot) -> None:
        slot.retired = True
        if slot.inflight == 0:
            slot.idle.set()
        await slot.idle.wait()
        await slot.pipeline.aclose()

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[Any]:
        """The pipeline for one request; it stays open until the request is done."""
        slot = self._slot
        if slot is None:
            raise ModelNotReady(
                "models are not loaded" + (f": {self.last_error}" if self.last_error else " yet"),
            )
        slot.inflight += 1
        try:
            yield slot.pipeline
        finally:
            slot.inflight -= 1
            if slot.retired and slot.inflight == 0:
                slot.idle.set()

    async def aclose(self) -> None:
        async with self._lock:
            slot, self._slot = self._slot, None
        if slot is not None:
            await self._retire(slot)
