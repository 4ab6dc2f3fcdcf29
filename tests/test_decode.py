"""Decoding: every bad-image case, header-first pixel limits, EXIF orientation, grey/alpha/16-bit."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest

from service.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType
from service.pipeline.decode import decode_image, header_size


def _encode(ext: str, image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return bytes(buf.tobytes())


def _half_white(h: int = 40, w: int = 80) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = 255  # left half white
    return img


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    app1 = b"Exif\x00\x00" + b"MM\x00\x2a" + struct.pack(">I", 8) + ifd
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (np.random.default_rng(0).bytes(5000), "not an image"),
        (b"\x89PNG\r\n\x1a\n", "truncated"),
        (b"\xff\xd8\xff\xe0", "truncated"),
    ],
    ids=["empty", "random", "png-signature-only", "jpeg-soi-only"],
)
def test_bad_bytes_are_invalid_image(data: bytes, message: str) -> None:
    with pytest.raises(InvalidImage, match=message):
        decode_image(data)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_files_are_invalid_image(ext: str, keep: float) -> None:
    noise = np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    data = _encode(ext, noise)
    assert decode_image(data).shape == (120, 160, 3)
    with pytest.raises(InvalidImage):
        decode_image(data[: int(len(data) * keep)])


def test_huge_declared_png_is_refused_from_the_header() -> None:
    data = _png_header_only(100_000, 100_000)  # 33 bytes declaring 10^10 pixels
    assert header_size(data) == (100_000, 100_000)
    with pytest.raises(ImageTooLarge, match="100000x100000") as info:
        decode_image(data, max_pixels=40_000_000)
    assert info.value.detail["width"] == 100_000


def test_huge_declared_jpeg_is_refused_from_the_header() -> None:
    data = bytearray(_encode(".jpg", _half_white()))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)
    assert header_size(bytes(data)) == (60_000, 60_000)
    with pytest.raises(ImageTooLarge):
        decode_image(bytes(data))


def test_pixel_limit_applies_to_real_images() -> None:
    data = _encode(".png", _half_white(40, 80))
    with pytest.raises(ImageTooLarge):
        decode_image(data, max_pixels=40 * 80 - 1)
    assert decode_image(data, max_pixels=40 * 80).shape == (40, 80, 3)


def test_exif_orientation_is_applied() -> None:
    plain = _encode(".jpg", _half_white(40, 80))
    rotated = decode_image(_with_exif_orientation(plain, 6))  # 6: rotate 90 degrees clockwise to view
    assert rotated.shape == (80, 40, 3)
    assert rotated[5, 20].mean() > 200 and rotated[75, 20].mean() < 50  # left half is now the top half
    assert decode_image(plain).shape == (40, 80, 3)


def test_exif_orientation_holds_when_a_large_jpeg_is_decoded_smaller() -> None:
    from service.pipeline.decode import decode_scaled

    plain = _encode(".jpg", _half_white(400, 800))
    image, scale, size = decode_scaled(_with_exif_orientation(plain, 6), min_side=300)  # 1/2: 1/4 is under 300
    assert image.shape == (400, 200, 3) and size == (400, 800) and scale == 0.5
    assert image[20, 100].mean() > 200 and image[380, 100].mean() < 50  # rotated as the full decode is


def test_grayscale_becomes_three_channels() -> None:
    grey = np.tile(np.arange(0, 250, 5, dtype=np.uint8), (30, 1))
    for ext in (".png", ".jpg"):
        out = decode_image(_encode(ext, grey))
        assert out.shape == (30, 50, 3) and out.dtype == np.uint8
        assert np.array_equal(out[..., 0], out[..., 2])


def test_alpha_is_composited_over_white() -> None:
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 2] = 255  # red in BGR(A)
    rgba[:, :5, 3] = 255  # left opaque, right transparent
    out = decode_image(_encode(".png", rgba))
    assert out.shape == (10, 10, 3)
    assert out[0, 0].tolist() == [0, 0, 255]
    assert out[0, 9].tolist() == [255, 255, 255]


def test_sixteen_bit_becomes_eight_bit() -> None:
    img16 = np.full((8, 8, 3), 65535, np.uint16)
    img16[:, :4] = 257 * 100
    out = decode_image(_encode(".png", img16))
    assert out.dtype == np.uint8
    assert out[0, 0].tolist() == [100, 100, 100] and out[0, 7].tolist() == [255, 255, 255]


@pytest.mark.parametrize("ext", [".bmp", ".webp", ".png", ".jpg"])
def test_header_size_of_common_formats(ext: str) -> None:
    data = _encode(ext, _half_white(30, 70))
    assert header_size(data) == (70, 30)
    assert decode_image(data).shape == (30, 70, 3)


@pytest.mark.parametrize(
    ("ext", "name"),
    [(".jp2", "JPEG 2000"), (".tiff", "TIFF"), (".hdr", "Radiance HDR"), (".ppm", "PNM"), (".pgm", "PNM")],
)
def test_formats_without_a_header_check_are_refused_unread(ext: str, name: str) -> None:
    """OpenCV decodes these, but the service cannot check their size first: a tiny file may declare a
    huge image (an 829-byte 8000x8000 JPEG 2000 once took 713 MB before its 413)."""
    if ext == ".jp2":  # the JP2 signature box and a file-type box declaring 8000x8000 (no encoder needed)
        ihdr = struct.pack(">II", 8000, 8000) + b"\x00\x03\x07\x07\x00\x00"
        data = b"\x00\x00\x00\x0cjP  \r\n\x87\n" + struct.pack(">I", 22) + b"ihdr" + ihdr
    else:
        img: np.ndarray = np.full((16, 24, 3), 128, np.uint8)
        img = img.astype(np.float32) if ext == ".hdr" else img[:, :, 0] if ext == ".pgm" else img
        ok, buf = cv2.imencode(ext, img)
        assert ok, ext
        data = bytes(buf.tobytes())
    with pytest.raises(UnsupportedMediaType, match=name) as info:
        decode_image(data)
    assert "send JPEG, PNG, WebP, GIF or BMP" in str(info.value)


def test_a_supported_signature_with_an_unreadable_header_is_refused_before_decode() -> None:
    with pytest.raises(InvalidImage, match="width and height cannot be read"):
        decode_image(b"RIFF\x00\x00\x00\x00WEBPVP8Z" + bytes(64))


def test_opencv_pixel_cap_is_set_before_opencv_loads() -> None:
    """`emoserve serve` sets OpenCV's own cap first thing; OpenCV reads it only when it is imported,
    so importing the CLI must not import OpenCV, and the cap then holds for every decode."""
    png = cv2.imencode(".png", np.zeros((100, 100, 3), np.uint8))[1].tobytes().hex()
    code = (
        "import sys, emoserve_cli.serve as s\n"
        "assert 'cv2' not in sys.modules, 'the CLI imports OpenCV before the cap is set'\n"
        "s.fence_opencv(50)\n"
        "import cv2, numpy as np\n"
        f"data = np.frombuffer(bytes.fromhex('{png}'), np.uint8)\n"
        "try:\n    cv2.imdecode(data, 1)\nexcept cv2.error:\n    sys.exit(0)\n"
        "sys.exit('decoded 10,000 pixels under a cap of 50')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
