"""Reading the image and the options of a request: multipart field `image`, a raw image body, or
JSON `{"image_base64": ...}`; options from the query string, form fields or JSON fields."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from service.errors import InvalidImage, InvalidOptions, UnsupportedMediaType

RAW_IMAGE_TYPES = {"image/jpeg", "image/jpg", "image/png", "image/webp", "image/bmp", "image/x-ms-bmp"}
OPTION_NAMES = ("max_faces", "min_face_size", "threshold", "landmarks", "explain")


@dataclass
class ImageRequest:
    images: list[tuple[str, bytes]]  # (filename or "body", bytes)
    options: dict[str, Any]


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _query_options(request: Request) -> dict[str, Any]:
    return {k: request.query_params[k] for k in OPTION_NAMES if k in request.query_params}


async def read_images(request: Request, *, field: str = "image", many: bool = False) -> ImageRequest:
    """The images and options of a request (one image unless `many`)."""
    media = _media_type(request)
    options = _query_options(request)
    if media == "multipart/form-data":
        try:
            form = await request.form(max_files=1000, max_fields=100)
        except Exception as exc:  # malformed multipart
            raise InvalidImage(f"malformed multipart body: {exc}") from exc
        files = [v for k, v in form.multi_items() if k in (field, "image", "images") and isinstance(v, UploadFile)]
        for k in OPTION_NAMES:
            value = form.get(k)
            if isinstance(value, str):
                options.setdefault(k, value)
        if not files:
            raise InvalidImage(f"multipart body has no file field {field!r}")
        images = [(f.filename or f"{field}[{i}]", await f.read()) for i, f in enumerate(files)]
        await form.close()
    elif media in RAW_IMAGE_TYPES:
        images = [("body", await request.body())]
    elif media == "application/json":
        raw = await request.body()
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidOptions(f"body is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidOptions("JSON body must be an object with `image_base64`")
        encoded = data.get("image_base64")
        encoded_list = data.get("images_base64")
        if many and isinstance(encoded_list, list):
            images = [(f"images_base64[{i}]", _b64(e)) for i, e in enumerate(encoded_list)]
        elif isinstance(encoded, str):
            images = [("image_base64", _b64(encoded))]
        else:
            raise InvalidImage("JSON body needs a string field `image_base64`")
        options.update({k: data[k] for k in OPTION_NAMES if k in data})
    elif not media:
        raise UnsupportedMediaType(
            "missing Content-Type: send multipart/form-data, image/jpeg|png|webp|bmp, or application/json"
        )
    else:
        raise UnsupportedMediaType(
            f"unsupported Content-Type {media!r}: send multipart/form-data, image/jpeg|png|webp|bmp, "
            "or application/json"
        )
    if not many and len(images) > 1:
        raise InvalidImage(f"this endpoint takes one image; got {len(images)} (use /v1/analyze/batch)")
    return ImageRequest(images=images, options=options)


def _b64(value: object) -> bytes:
    if not isinstance(value, str):
        raise InvalidImage("image_base64 must be a string")
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage(f"image_base64 is not valid base64: {exc}") from exc
