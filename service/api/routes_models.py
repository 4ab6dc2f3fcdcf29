"""`/v1/models`: what is loaded and what the store holds; alias changes (admin) with hot reload."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from model_store import ModelNotFound, ModelStore
from model_store.names import validate_alias, validate_name
from service.api.deps import Admin, Caller, Plane
from service.errors import ModelLoadFailed

router = APIRouter(prefix="/v1/models", tags=["models"])


class AliasUpdate(BaseModel):
    version: int = Field(ge=1, le=10**9, description="The version the alias should point at")


def _describe(store: ModelStore, name: str) -> dict[str, Any]:
    aliases = store.aliases(name)
    versions = []
    for v in store.versions(name):
        m = store.manifest(f"{name}@{v}")
        versions.append(
            {
                "version": v,
                "task": m.task,
                "family": m.family,
                "labels": m.labels,
                "metrics": m.metrics,
                "created": m.created.isoformat(),
                "aliases": sorted(a for a, av in aliases.items() if av == v),
            }
        )
    return {"name": name, "aliases": aliases, "versions": versions}


@router.get("", summary="Loaded models (with provider) and the store's contents")
async def list_models(plane: Plane, _: Caller) -> dict[str, Any]:
    loaded = {
        role: {"name": n, "version": v, "provider": p, "ref": plane.manager.refs[role]}
        for role, (n, v, p) in plane.manager.versions().items()
    }
    store = await asyncio.to_thread(lambda: [_describe(plane.store, n) for n in plane.store.names()])
    return {"loaded": loaded, "store": store}


@router.get("/{name}", summary="One model: versions, aliases, metrics")
async def get_model(name: str, plane: Plane, _: Caller) -> dict[str, Any]:
    validate_name(name)
    if not plane.store.versions(name):
        raise ModelNotFound(f"no model named {name!r} in the store")
    return await asyncio.to_thread(_describe, plane.store, name)


@router.put("/{name}/aliases/{alias}", summary="Point an alias at a version (admin); hot-reloads if served")
async def set_alias(name: str, alias: str, body: AliasUpdate, plane: Plane, _: Admin) -> dict[str, Any]:
    validate_name(name)
    validate_alias(alias)
    previous = await asyncio.to_thread(plane.store.set_alias, name, alias, body.version)
    roles = [role for role, ref in plane.manager.refs.items() if ref.partition("@")[0] == name]
    if roles and plane.manager.refs[roles[0]].partition("@")[2] in ("", alias):
        try:
            await plane.manager.reload()
        except ModelLoadFailed as exc:
            # keep serving the old version: put the alias back and say why
            if previous is not None:
                await asyncio.to_thread(plane.store.set_alias, name, alias, previous)
            raise ModelLoadFailed(
                f"{name}@{body.version} failed to load; {name}@{alias} stays at {previous}: {exc}"
            ) from exc
    serving = {role: v for role, (n, v, _) in plane.manager.versions().items() if n == name}
    reloaded = bool(serving) and all(v == body.version for v in serving.values())
    return {
        "name": name,
        "alias": alias,
        "version": body.version,
        "previous": previous,
        "reloaded": reloaded,
        "serving": serving,
    }
