"""FastAPI's side of the data plane: the plane of the app, and the caller, as `Annotated` dependencies.

async def handler(request: Request, plane: Plane, _: Caller) -> ...      # a client endpoint
async def handler(plane: Plane, _: Admin) -> ...                         # an admin endpoint
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, Request

from service.errors import Unauthorized
from service.serving.dataplane import DataPlane
from service.serving.keys import Principal

KEY_IN_URL = "API keys in the URL are refused (URLs end up in logs): send `Authorization: Bearer <key>` or `X-API-Key`"


def header_key(headers: Mapping[str, str]) -> str | None:
    """The key of `Authorization: Bearer` or `X-API-Key`; keys are never read from the URL."""
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return headers.get("x-api-key") or None


def data_plane(request: Request) -> DataPlane:
    plane: DataPlane = request.app.state.plane
    return plane


Plane = Annotated[DataPlane, Depends(data_plane)]


def _presented_key(request: Request) -> str | None:
    if "api_key" in request.query_params:
        raise Unauthorized(KEY_IN_URL)
    return header_key(request.headers)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def _caller(request: Request, plane: Plane) -> Principal:
    return await plane.authorize(_presented_key(request), _client(request), "client")


async def _admin(request: Request, plane: Plane) -> Principal:
    return await plane.authorize(_presented_key(request), _client(request), "admin")


Caller = Annotated[Principal, Depends(_caller)]
Admin = Annotated[Principal, Depends(_admin)]
