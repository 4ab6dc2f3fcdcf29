"""Domain exceptions and the one table mapping them to HTTP status, WebSocket close code and CLI exit code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from model_store.errors import (
    AliasNotFound,
    ArtifactCorrupt,
    CatalogError,
    ConverterUnavailable,
    InvalidName,
    ModelNotFound,
    ModelStoreError,
    PullFailed,
    ReadOnlyLayer,
    VersionExists,
    VersionInUse,
)


class EmoserveError(Exception):
    """Base of the service's own failures; `detail` is echoed in the error body."""

    def __init__(self, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.detail = detail or {}


class InvalidImage(EmoserveError):
    """Empty, truncated or undecodable image data."""


class ImageTooLarge(EmoserveError):
    """Pixel count or byte size over the configured limit."""


class TooManyImages(EmoserveError):
    """A batch with more images than the configured batch limit."""


class UnsupportedMediaType(EmoserveError):
    """A content type the service does not decode."""


class PayloadTooLarge(EmoserveError):
    """A request body over the byte limit."""


class BodyTimeout(EmoserveError):
    """The client did not send its whole request body in time."""


class InvalidOptions(EmoserveError):
    """Request options out of range or of the wrong type."""


class ExplanationUnavailable(InvalidOptions):
    """explain=true, but the served classifier has no class-activation-map output."""


class ModelNotReady(EmoserveError):
    """The models are still loading or failed to load."""


class ModelLoadFailed(EmoserveError):
    """A model could not be loaded (bad graph, provider missing, GPU required but absent)."""


class UnknownFamily(EmoserveError):
    """No implementation is registered for a manifest's `family`."""


class Overloaded(EmoserveError):
    """A bounded queue is full; retry later."""

    def __init__(self, message: str, retry_after_s: float = 1.0, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message, detail)
        self.retry_after_s = retry_after_s


class RateLimited(Overloaded):
    """The caller's token bucket is empty."""


class RequestTimeout(Overloaded):
    """The request did not finish within the per-request time limit."""


class Unauthorized(EmoserveError):
    """Missing or unknown API key."""


class Forbidden(EmoserveError):
    """The key lacks the scope (admin) the call needs."""


class ShuttingDown(EmoserveError):
    """The server is stopping; open streams are closed (WebSocket 1001 going away)."""


@dataclass(frozen=True)
class ErrorSpec:
    code: str
    http_status: int
    ws_close: int
    exit_code: int


# Most specific first: the first matching class wins.
ERROR_TABLE: list[tuple[type[BaseException], ErrorSpec]] = [
    (RateLimited, ErrorSpec("rate_limited", 429, 1013, 7)),
    (RequestTimeout, ErrorSpec("timeout", 503, 1013, 7)),
    (Overloaded, ErrorSpec("overloaded", 503, 1013, 7)),
    (ShuttingDown, ErrorSpec("shutting_down", 503, 1001, 7)),
    (InvalidImage, ErrorSpec("invalid_image", 400, 1003, 2)),
    (ImageTooLarge, ErrorSpec("image_too_large", 413, 1009, 2)),
    (TooManyImages, ErrorSpec("too_many_images", 413, 1008, 2)),
    (UnsupportedMediaType, ErrorSpec("unsupported_media_type", 415, 1003, 2)),
    (PayloadTooLarge, ErrorSpec("payload_too_large", 413, 1009, 2)),
    (BodyTimeout, ErrorSpec("body_timeout", 408, 1008, 2)),
    (ExplanationUnavailable, ErrorSpec("explanation_unavailable", 422, 1008, 2)),
    (InvalidOptions, ErrorSpec("invalid_options", 422, 1008, 2)),
    (Unauthorized, ErrorSpec("unauthorized", 401, 1008, 2)),
    (Forbidden, ErrorSpec("forbidden", 403, 1008, 2)),
    (ModelNotReady, ErrorSpec("model_not_ready", 503, 1013, 6)),
    (ModelLoadFailed, ErrorSpec("model_load_failed", 409, 1011, 6)),
    (UnknownFamily, ErrorSpec("unknown_family", 409, 1011, 6)),
    (ConverterUnavailable, ErrorSpec("converter_unavailable", 409, 1011, 5)),
    (ArtifactCorrupt, ErrorSpec("artifact_corrupt", 409, 1011, 4)),
    (AliasNotFound, ErrorSpec("alias_not_found", 404, 1008, 3)),
    (ModelNotFound, ErrorSpec("model_not_found", 404, 1008, 3)),
    (InvalidName, ErrorSpec("invalid_name", 422, 1008, 2)),
    (VersionExists, ErrorSpec("version_exists", 409, 1008, 8)),
    (VersionInUse, ErrorSpec("version_in_use", 409, 1008, 8)),
    (ReadOnlyLayer, ErrorSpec("read_only", 409, 1008, 8)),
    (CatalogError, ErrorSpec("catalog_error", 404, 1008, 3)),
    (PullFailed, ErrorSpec("pull_failed", 502, 1011, 5)),
    (ModelStoreError, ErrorSpec("model_store_error", 409, 1011, 1)),
    (EmoserveError, ErrorSpec("error", 400, 1011, 1)),
]

INTERNAL = ErrorSpec("internal", 500, 1011, 1)


def spec_for(exc: BaseException) -> ErrorSpec:
    """The row of `ERROR_TABLE` for an exception (INTERNAL when none matches)."""
    for cls, spec in ERROR_TABLE:
        if isinstance(exc, cls):
            return spec
    return INTERNAL


def error_body(exc: BaseException) -> dict[str, Any]:
    """The one error shape: `{"error": {"code", "message", "detail"}}`."""
    spec = spec_for(exc)
    detail = dict(getattr(exc, "detail", {}) or {})
    message = str(exc) if spec is not INTERNAL else "internal error"
    return {"error": {"code": spec.code, "message": message, "detail": detail}}
