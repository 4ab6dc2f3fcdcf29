"""Reading the image and the options of a request: multipart field `image`, a raw image body, or
JSON `{"image_base64": ...}` (`{"images_base64": [...]}` for a batch); options from the query
string, form fields or JSON fields. In a batch, an entry that cannot be read fails its own slot."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from service.errors import InvalidImage, InvalidOptions, TooManyImages, UnsupportedMediaType

RAW_IMAGE_TYPES = {"image/jpeg", "image/jpg", "image/png", "image/webp", "image/bmp", "image/x-ms-bmp"}
OPTION_NAMES = ("max_faces", "min_face_size", "threshold", "landmarks", "explain")
MAX_MULTIPART_FILES = 1000


@dataclass
class ImageRequest:
    images: list[tuple[str, bytes | InvalidImage]]  # (filename or field, bytes), or why that entry is unreadable
    options: dict[str, Any]

    def only_image(self) -> bytes:
        """The bytes of the first (single) image; raises its error if it could not be read."""
        data = self.images[0][1]
        if isinstance(data, InvalidImage):
            raise data
        return data


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _query_options(request: Request) -> dict[str, Any]:
    return {k: request.query_params[k] for k in OPTION_NAMES if k in request.query_params}


def _too_many(count: int | str, limit: int) -> TooManyImages:
    return TooManyImages(f"{count} images is over the batch limit of {limit}", detail={"limit": limit, "count": count})


async def read_images(
    request: Request, *, field: str = "image", many: bool = False, max_images: int | None = None
) -> ImageRequest:
    """The images and options of a request (one image unless `many`; at most `max_images`)."""
    media = _media_type(request)
    options = _query_options(request)
    images: list[tuple[str, bytes | InvalidImage]]
    if media == "multipart/form-data":
        max_files = MAX_MULTIPART_FILES if max_images is None else max_images
        try:
            form = await request.form(max_files=max_files, max_fields=100)
        except Exception as exc:  # malformed multipart (Starlette raises it as an HTTPException in an app)
            problem = str(getattr(exc, "detail", None) or exc)
            if max_images is not None and problem.startswith("Too many files"):
                raise _too_many(f"more than {max_images}", max_images) from exc
            raise InvalidImage(f"malformed multipart body: {problem}") from exc
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
            if max_images is not None and len(encoded_list) > max_images:
                raise _too_many(len(encoded_list), max_images)
            images = [_b64_slot(f"images_base64[{i}]", e) for i, e in enumerate(encoded_list)]
        elif isinstance(encoded, str):
            images = [("image_base64", _b64(encoded))]
        elif many:
            raise InvalidImage("JSON body needs a list field `images_base64` (or a string field `image_base64`)")
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
    if max_images is not None and len(images) > max_images:
        raise _too_many(len(images), max_images)
    return ImageRequest(images=images, options=options)


def _b64_slot(name: str, value: object) -> tuple[str, bytes | InvalidImage]:
    """One batch entry: its bytes, or the error of its own slot."""
    try:
        return name, _b64(value, name)
    except InvalidImage as exc:
        return name, exc


def _b64(value: object, name: str = "image_base64") -> bytes:
    """Standard base64 (a `data:` URL prefix, line breaks and other whitespace are allowed)."""
    if not isinstance(value, str):
        raise InvalidImage(f"{name} must be a string")
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    compact = "".join(value.split())  # MIME-style line breaks, indentation
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage(f"{name} is not valid base64: {exc}") from exc
