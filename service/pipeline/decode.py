"""Image bytes -> BGR uint8 (H, W, 3), with the pixel limit checked from the header first.

Only the formats the service supports are decoded: PNG, JPEG, GIF, BMP and WebP, identified by their
magic bytes (never by the Content-Type or by whatever OpenCV would accept). Their width and height are
read from the header before anything is decoded, so a tiny file declaring a huge image is refused
without allocating it; other formats OpenCV could read (JPEG 2000, TIFF, HDR, PNM, EXR...) are refused
unread. OpenCV's own pixel cap (`OPENCV_IO_MAX_IMAGE_PIXELS`) is set to the same limit as a second
fence by `emoserve serve` before OpenCV is imported (`fence_opencv`). JPEG EXIF orientation is
applied (OpenCV's IMREAD_COLOR does it); grey becomes 3 channels;
alpha is composited over white; 16-bit and float images are scaled to 8 bits.
"""

from __future__ import annotations

import os
import struct
from typing import NamedTuple

import numpy as np

from service.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType

SUPPORTED = "JPEG, PNG, WebP, GIF or BMP"
# formats OpenCV can decode that the service does not accept (no header check guards them)
_REFUSED_MAGIC = (
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xffO\xffQ", "JPEG 2000"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"#?RADIANCE", "Radiance HDR"),
    (b"#?RGBE", "Radiance HDR"),
    (b"v/1\x01", "OpenEXR"),
    (b"\x59\xa6\x6a\x95", "Sun raster"),
    (b"8BPS", "Photoshop"),
)

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def sniff_format(data: bytes) -> str | None:
    """ "png", "jpeg", "gif", "bmp", "webp" or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data.startswith(b"BM"):
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _jpeg_scan(data: bytes) -> tuple[tuple[int, int] | None, int]:
    """((width, height) from the first SOF marker or None, offset of the first SOS or -1)."""
    size: tuple[int, int] | None = None
    pos = 2
    n = len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return size, -1
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if marker in _JPEG_SOF and pos + 9 <= n and size is None:
            h, w = struct.unpack(">HH", data[pos + 5 : pos + 9])
            size = (w, h)
        if marker == 0xDA:
            return size, pos
        pos += 2 + length
    return size, -1


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) declared by the file header, or None when the format or header is unknown."""
    fmt = sniff_format(data)
    try:
        if fmt == "png" and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return w, h
        if fmt == "jpeg":
            return _jpeg_scan(data)[0]
        if fmt == "gif":
            w, h = struct.unpack("<HH", data[6:10])
            return w, h
        if fmt == "bmp":
            if struct.unpack("<I", data[14:18])[0] == 12:
                w, h = struct.unpack("<hh", data[18:22])
            else:
                w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if fmt == "webp":
            chunk = data[12:16]
            if chunk == b"VP8 ":
                w, h = struct.unpack("<HH", data[26:30])
                return w & 0x3FFF, h & 0x3FFF
            if chunk == b"VP8L":
                bits = struct.unpack("<I", data[21:25])[0]
                return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            if chunk == b"VP8X":
                w = int.from_bytes(data[24:27], "little") + 1
                h = int.from_bytes(data[27:30], "little") + 1
                return w, h
    except struct.error:
        raise InvalidImage(f"the {fmt} header is truncated") from None
    return None


def refused_format(data: bytes) -> str | None:
    """The name of a known image format the service refuses, or None."""
    for magic, name in _REFUSED_MAGIC:
        if data.startswith(magic):
            return name
    if len(data) > 2 and data[0:1] == b"P" and data[1:2] in b"1234567fF" and data[2:3].isspace():
        return "PNM/PFM"
    if data[4:8] == b"ftyp":
        return "HEIF/AVIF"
    return None


def fence_opencv(max_pixels: int) -> None:
    """Cap OpenCV's own decoder at `max_pixels`. OpenCV reads the variable when it is imported, so this
    runs at process start, before anything imports cv2 (`emoserve serve` does it first)."""
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(max_pixels))


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}",
            detail={"width": width, "height": height, "max_pixels": max_pixels},
        )


def to_bgr8(image: np.ndarray) -> np.ndarray:
    """Any decoded image (grey, BGRA, 16-bit, float) -> contiguous BGR uint8 (H, W, 3)."""
    import cv2

    if image.dtype == np.uint16:
        image = (image // 257).astype(np.uint8)
    elif image.dtype.kind == "f":
        peak = 1.0 if float(np.nanmax(image)) <= 1.0 else 255.0
        image = np.clip(np.nan_to_num(image) * (255.0 / peak), 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if channels == 4:
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        over_white = image[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return np.ascontiguousarray(np.clip(over_white + 0.5, 0, 255).astype(np.uint8))
    return np.ascontiguousarray(image[:, :, :3])


def decode_image(data: bytes | bytearray | memoryview, max_pixels: int = 40_000_000) -> np.ndarray:
    """Decode image bytes to BGR uint8; `InvalidImage` for bad data, `ImageTooLarge` over `max_pixels`."""
    return decode_scaled(data, max_pixels).image


REDUCED_FLAGS = {2: "IMREAD_REDUCED_COLOR_2", 4: "IMREAD_REDUCED_COLOR_4", 8: "IMREAD_REDUCED_COLOR_8"}


def reduction(size: tuple[int, int], min_side: int) -> int:
    """The largest JPEG scale-down (8, 4, 2, else 1) that keeps the longest side at least `min_side` (0: none)."""
    longest = max(size)
    return next((r for r in (8, 4, 2) if min_side and longest // r >= min_side), 1)


class Decoded(NamedTuple):
    image: np.ndarray  # BGR uint8
    scale: float  # of `image` against the full image (1.0 when decoded whole)
    size: tuple[int, int]  # (width, height) of the full image, EXIF orientation applied


def decode_scaled(data: bytes | bytearray | memoryview, max_pixels: int = 40_000_000, min_side: int = 0) -> Decoded:
    """Like `decode_image`, but a large JPEG is decoded at 1/2, 1/4 or 1/8 scale while its longest side stays at
    least `min_side` (libjpeg scales in the DCT, so this is faster than decoding whole)."""
    import cv2

    data = bytes(data)
    if not data:
        raise InvalidImage("the image is empty (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        other = refused_format(data)
        if other is not None:
            raise UnsupportedMediaType(f"{other} images are not supported; send {SUPPORTED}")
        raise InvalidImage(f"the data is not an image: send {SUPPORTED} ({len(data)} bytes)")
    size = header_size(data)
    if size is None:
        raise InvalidImage(f"the {fmt} header is truncated or malformed: its width and height cannot be read")
    if size[0] <= 0 or size[1] <= 0:
        raise InvalidImage(f"the {fmt} header declares an empty image ({size[0]}x{size[1]})")
    check_pixels(size[0], size[1], max_pixels)
    if fmt == "jpeg":
        sos = _jpeg_scan(data)[1]
        if sos < 0 or data.rfind(b"\xff\xd9") < sos:
            raise InvalidImage("the JPEG data is truncated (no image data or no end-of-image marker)")
    # JPEG: IMREAD_COLOR (and its REDUCED forms) applies the EXIF orientation; others: UNCHANGED keeps alpha
    # and 16-bit depth.
    r = reduction(size, min_side) if fmt == "jpeg" else 1
    flags = getattr(cv2, REDUCED_FLAGS[r]) if r > 1 else cv2.IMREAD_COLOR if fmt == "jpeg" else cv2.IMREAD_UNCHANGED
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as exc:
        raise InvalidImage(f"the image cannot be decoded: {exc}") from None
    if image is None or image.size == 0:
        raise InvalidImage(f"the image cannot be decoded: {fmt} data is corrupt or truncated ({len(data)} bytes)")
    check_pixels(image.shape[1], image.shape[0], max_pixels)
    h, w = image.shape[:2]
    if r == 1:
        return Decoded(to_bgr8(image), 1.0, (w, h))
    full = size if (w >= h) == (size[0] >= size[1]) else (size[1], size[0])  # EXIF orientation may swap the sides
    return Decoded(to_bgr8(image), max(w, h) / max(full), full)
