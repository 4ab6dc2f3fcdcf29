"""Synchronous and asynchronous clients over httpx (REST) and websockets (the stream)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any

import httpx

from emoserve_client.errors import EmoserveAPIError
from emoserve_client.inputs import ImageLike, content_type, encode, query
from emoserve_client.models import AnalysisResult, StreamResult
from emoserve_client.streaming import DEFAULT_QUALITY, ErrorHook, Frames, astream, stream_sync

BatchItem = AnalysisResult | EmoserveAPIError


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        err = response.json()["error"]
        raise EmoserveAPIError(response.status_code, err["code"], err["message"], err.get("detail"))
    except (ValueError, KeyError, TypeError):
        raise EmoserveAPIError(response.status_code, "http_error", response.text[:200]) from None


def _batch_item(body: dict[str, Any]) -> BatchItem:
    if "error" in body:
        err = body["error"]
        return EmoserveAPIError(200, err["code"], err["message"], err.get("detail"))
    return AnalysisResult.model_validate(body)


def _files(images: Sequence[ImageLike]) -> list[tuple[str, tuple[str, bytes, str]]]:
    out = []
    for i, image in enumerate(images):
        data = encode(image)
        out.append(("images", (f"image{i}", data, content_type(data))))
    return out


class _Base:
    def __init__(self, url: str, api_key: str | None) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.headers = {"X-API-Key": api_key} if api_key else {}

    def _single(self, image: ImageLike) -> tuple[bytes, dict[str, str]]:
        data = encode(image)
        return data, {"Content-Type": content_type(data)}


class Client(_Base):
    """Blocking client. `options` of each call: max_faces, min_face_size, threshold, landmarks, explain."""

    def __init__(self, url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 30.0) -> None:
        super().__init__(url, api_key)
        self.http = httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def analyze(self, image: ImageLike, **options: Any) -> AnalysisResult:
        """Every face in `image` (a path, encoded bytes or a BGR array) and its emotion."""
        data, headers = self._single(image)
        r = self.http.post("/v1/analyze", content=data, headers=headers, params=query(options))
        _raise_for(r)
        return AnalysisResult.model_validate(r.json())

    def analyze_batch(self, images: Sequence[ImageLike], **options: Any) -> list[BatchItem]:
        """One result per image, in order; a bad image gives an `EmoserveAPIError` in its slot."""
        r = self.http.post("/v1/analyze/batch", files=_files(images), params=query(options))
        _raise_for(r)
        return [_batch_item(body) for body in r.json()["results"]]

    def annotate(self, image: ImageLike, **options: Any) -> bytes:
        """The image with boxes, labels and score bars drawn, as JPEG bytes."""
        data, headers = self._single(image)
        r = self.http.post("/v1/annotate", content=data, headers=headers, params=query(options))
        _raise_for(r)
        return r.content

    def stream(
        self,
        frames: Iterable[ImageLike],
        *,
        fps: float | None = None,
        on_error: ErrorHook | None = None,
        max_side: int | None = None,
        quality: int = DEFAULT_QUALITY,
        **config: Any,
    ) -> Iterator[StreamResult]:
        """Stream `frames` over `WS /v1/stream`; `config`: max_faces, threshold, smoothing, track, fps_limit,
        reuse, explain... Arrays are downscaled to the server's analysis size (`max_side` None; 0 = never)
        and JPEG-encoded at `quality`; results come back in the frames' own coordinates."""
        return stream_sync(self.url, frames, api_key=self.api_key, config=config, fps=fps, on_error=on_error,
                           max_side=max_side, quality=quality)  # fmt: skip


class AsyncClient(_Base):
    """The asyncio twin of `Client`."""

    def __init__(self, url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 30.0) -> None:
        super().__init__(url, api_key)
        self.http = httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def analyze(self, image: ImageLike, **options: Any) -> AnalysisResult:
        data, headers = self._single(image)
        r = await self.http.post("/v1/analyze", content=data, headers=headers, params=query(options))
        _raise_for(r)
        return AnalysisResult.model_validate(r.json())

    async def analyze_batch(self, images: Sequence[ImageLike], **options: Any) -> list[BatchItem]:
        r = await self.http.post("/v1/analyze/batch", files=_files(images), params=query(options))
        _raise_for(r)
        return [_batch_item(body) for body in r.json()["results"]]

    async def annotate(self, image: ImageLike, **options: Any) -> bytes:
        data, headers = self._single(image)
        r = await self.http.post("/v1/annotate", content=data, headers=headers, params=query(options))
        _raise_for(r)
        return r.content

    def stream(
        self,
        frames: Frames,
        *,
        fps: float | None = None,
        on_error: ErrorHook | None = None,
        max_side: int | None = None,
        quality: int = DEFAULT_QUALITY,
        **config: Any,
    ) -> AsyncIterator[StreamResult]:
        """`async for result in client.stream(frames, smoothing=0.6): ...` (see `Client.stream`)."""
        return astream(self.url, frames, api_key=self.api_key, config=config, fps=fps, on_error=on_error,
                       max_side=max_side, quality=quality)  # fmt: skip
