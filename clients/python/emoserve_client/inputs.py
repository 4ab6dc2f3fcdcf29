"""Turn what a caller passes (a path, encoded bytes or a BGR array) into encoded image bytes.

Arrays need numpy and OpenCV (`pip install emoserve-client[arrays]`); paths and bytes need neither.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    import numpy as np

ImageLike = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, "np.ndarray"]


def encode(image: ImageLike, quality: int = 90) -> bytes:
    """Encoded bytes for `image`: a file is read, bytes pass through, a BGR uint8 array becomes JPEG."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        return Path(image).read_bytes()
    try:  # an array: OpenCV encodes it
        import cv2
    except ImportError as exc:
        raise ImportError("encoding arrays needs OpenCV: pip install emoserve-client[arrays]") from exc
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"cannot encode an array of shape {image.shape} as JPEG")
    return bytes(buf.tobytes())


def shrink(image: ImageLike, max_side: int) -> tuple[ImageLike, tuple[float, float]]:
    """A BGR array larger than `max_side` resized (INTER_AREA) so its longest side is `max_side`, with the
    (x, y) scale of each side (they differ by the rounding); anything else, or `max_side` 0, as it is."""
    shape = getattr(image, "shape", None)
    if not max_side or shape is None or max(shape[:2]) <= max_side:
        return image, (1.0, 1.0)
    import cv2

    h, w = shape[:2]
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA)  # type: ignore[arg-type]
    return resized, (size[0] / w, size[1] / h)


def content_type(data: bytes) -> str:
    """The image media type from the magic bytes (JPEG when unknown: the server sniffs anyway)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:2] == b"BM":
        return "image/bmp"
    return "image/jpeg"


def query(options: dict[str, Any]) -> dict[str, str]:
    """Analyze options as query parameters (None = server default)."""
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in options.items() if v is not None}
