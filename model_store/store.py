"""The model store: publish, list, resolve, verify, alias, roll back and remove versioned models.

Two layers: a writable root (`EMOSERVE_MODEL_ROOT`) over the read-only models shipped inside the
package. Reads see both; an alias in the root overrides a shipped one; versions are numbered across
both layers so a reference never means two things.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from model_store.errors import (
    AliasNotFound,
    ArtifactCorrupt,
    InvalidName,
    ModelNotFound,
    ReadOnlyLayer,
    VersionExists,
    VersionInUse,
)
from model_store.hashing import sha256_file
from model_store.manifest import CARD_FILE, MANIFEST_FILE, FileEntry, Manifest
from model_store.names import ModelRef, parse_ref, validate_alias, validate_name, validate_version
from model_store.storage import LocalStorage, Storage

log = logging.getLogger("emoserve.store")

SHIPPED_ROOT = Path(__file__).parent / "shipped"
ROOT_VARIABLE = "EMOSERVE_MODEL_ROOT"


def user_root() -> Path:
    """The writable model root when none is configured: the user's data folder."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("emoserve", appauthor=False)) / "models"


def default_root() -> Path:
    """The writable model root: `EMOSERVE_MODEL_ROOT` (which the service's settings read too), else `user_root()`."""
    configured = os.environ.get(ROOT_VARIABLE)
    return Path(configured) if configured else user_root()


@dataclass(frozen=True)
class StoreEvent:
    """A change in the store, delivered to subscribers (the service fans these out through Redis)."""

    kind: Literal["publish", "alias", "remove"]
    name: str
    version: int | None = None
    alias: str | None = None


@dataclass(frozen=True)
class ResolvedModel:
    """A verified artifact: its manifest and the folder holding its files."""

    manifest: Manifest
    path: Path
    layer: str

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest.model_file

    @property
    def int8_path(self) -> Path | None:
        """The int8 variant's file (`Manifest.int8_file`), or None."""
        name = self.manifest.int8_file
        return None if name is None else self.path / name

    @property
    def ref(self) -> str:
        return f"{self.manifest.name}@{self.manifest.version}"


@dataclass
class ModelSummary:
    """What `list` reports for one name."""

    name: str
    versions: list[int]
    aliases: dict[str, int]
    manifests: dict[int, Manifest] = field(default_factory=dict)
    layers: dict[int, str] = field(default_factory=dict)


Listener = Callable[[StoreEvent], None]


class ModelStore:
    """Versioned, verified model artifacts over a writable layer and the shipped read-only layer."""

    def __init__(self, root: Path | Storage, *, shipped: Path | Storage | None = SHIPPED_ROOT) -> None:
        self.storage: Storage = LocalStorage(Path(root)) if isinstance(root, str | Path) else root
        self.shipped: Storage | None
        if shipped is None:
            self.shipped = None
        elif isinstance(shipped, str | Path):
            self.shipped = LocalStorage(Path(shipped), read_only=True)
        else:
            self.shipped = shipped
        self._listeners: list[Listener] = []
        if not self.storage.read_only:
            try:
                swept = self.storage.sweep_staging()
            except OSError as exc:  # opening the store must not fail on a cleanup
                log.warning("could not sweep the staging folder of %s: %s", self.storage.description, exc)
            else:
                if swept:
                    log.info("removed %d stale staging folder(s) of %s", len(swept), self.storage.description)

    # -- events ----------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` after every publish / alias change / removal; returns an unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _emit(self, event: StoreEvent) -> None:
        for listener in list(self._listeners):
            listener(event)

    # -- layers ----------------------------------------------------------------------------
    def _layers(self) -> list[Storage]:
        return [self.storage] + ([self.shipped] if self.shipped is not None else [])

    def _layer_of(self, name: str, version: int) -> Storage:
        for layer in self._layers():
            if version in layer.versions(name):
                return layer
        raise ModelNotFound(f"{name}@{version} is not in the store")

    def versions(self, name: str) -> list[int]:
        validate_name(name)
        return sorted({v for layer in self._layers() for v in layer.versions(name)})

    def aliases(self, name: str) -> dict[str, int]:
        """Effective aliases: shipped ones, overridden by the root's."""
        validate_name(name)
        merged: dict[str, int] = {}
        for layer in reversed(self._layers()):
            merged.update({a: int(v) for a, v in layer.read_aliases(name)["aliases"].items()})
        return merged

    # -- reading ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted({n for layer in self._layers() for n in layer.names() if self.versions(n)})

    def summaries(self) -> list[ModelSummary]:
        out = []
        for name in self.names():
            summary = ModelSummary(name=name, versions=self.versions(name), aliases=self.aliases(name))
            for v in summary.versions:
                layer = self._layer_of(name, v)
                summary.manifests[v] = layer.read_manifest(name, v)
                summary.layers[v] = "shipped" if layer.read_only else "local"
            out.append(summary)
        return out

    def resolve_version(self, ref: str | ModelRef) -> ModelRef:
        """Turn `name@alias` into `name@version` (no verification)."""
        r = parse_ref(ref) if isinstance(ref, str) else ref
        if r.version is not None:
            if r.version not in self.versions(r.name):
                raise ModelNotFound(f"{r} is not in the store; versions: {self.versions(r.name) or 'none'}")
            return r
        if not self.versions(r.name):
            raise ModelNotFound(f"no model named {r.name!r} in the store (try `emoserve models pull {r.name}`)")
        aliases = self.aliases(r.name)
        if r.alias not in aliases:
            raise AliasNotFound(f"{r.name} has no alias {r.alias!r}; aliases: {sorted(aliases) or 'none'}")
        return ModelRef(r.name, version=aliases[str(r.alias)])

    def manifest(self, ref: str | ModelRef) -> Manifest:
        r = self.resolve_version(ref)
        assert r.version is not None
        return self._layer_of(r.name, r.version).read_manifest(r.name, r.version)

    def get(self, ref: str | ModelRef) -> ResolvedModel:
        """Resolve and verify an artifact; a corrupt artifact raises `ArtifactCorrupt` and is never returned."""
        r = self.resolve_version(ref)
        assert r.version is not None
        layer = self._layer_of(r.name, r.version)
        path = layer.local_dir(r.name, r.version)
        manifest = layer.read_manifest(r.name, r.version)
        if manifest.name != r.name or manifest.version != r.version:
            raise ArtifactCorrupt(f"{r}: manifest says {manifest.name}@{manifest.version}")
        verify_files(manifest, path)
        return ResolvedModel(manifest=manifest, path=path, layer="shipped" if layer.read_only else "local")

    def verify(self, ref: str | ModelRef) -> Manifest:
        return self.get(ref).manifest

    def verify_all(self) -> list[tuple[str, str | None]]:
        """Verify every version of every model: a list of (`name@version`, error message or None)."""
        results: list[tuple[str, str | None]] = []
        for name in self.names():
            for v in self.versions(name):
                try:
                    self.get(ModelRef(name, version=v))
                    results.append((f"{name}@{v}", None))
                except (ArtifactCorrupt, ModelNotFound, ValueError) as exc:
                    results.append((f"{name}@{v}", str(exc)))
        return results

    # -- writing ---------------------------------------------------------------------------
    def publish(
        self,
        draft: Mapping[str, Any],
        files: Mapping[str, Path],
        *,
        version: int | None = None,
        card: str | None = None,
        alias: str | None = None,
    ) -> Manifest:
        """Publish a new immutable version.

        `draft` holds the manifest fields except `version` and `files`; `files` maps the file names
        inside the artifact (e.g. `model.onnx`) to source paths. The version is the next free
        integer unless given. Files are staged inside the root, hashed, fsynced and renamed into
        place, so a reader sees the whole version or none of it.
        """
        name = validate_name(str(draft.get("name", "")))
        if version is not None:
            validate_version(version)
        if alias is not None:
            validate_alias(alias)
        if not files:
            raise InvalidName("publish needs at least one file")
        with self.storage.staging() as staged:
            entries = []
            for rel, src in files.items():
                if Path(rel).name != rel or rel in (MANIFEST_FILE, CARD_FILE):
                    raise InvalidName(f"invalid artifact file name {rel!r}")
                shutil.copyfile(src, staged / rel)
                entries.append(
                    FileEntry(path=rel, sha256=sha256_file(staged / rel), size=(staged / rel).stat().st_size)
                )
            if card is not None:
                (staged / CARD_FILE).write_text(card, encoding="utf-8")
            with self.storage.lock(name):
                existing = self.versions(name)
                if version is None:
                    version = (max(existing) if existing else 0) + 1
                elif version in existing:
                    raise VersionExists(f"{name}@{version} already exists; versions are immutable")
                body = {k: v for k, v in dict(draft).items() if k not in ("version", "files")}
                manifest = Manifest.model_validate({**body, "name": name, "version": version, "files": entries})
                (staged / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
                self.storage.commit_version(name, version, staged)
        self._emit(StoreEvent("publish", name, version))
        if alias is not None:
            self.set_alias(name, alias, version)
        return manifest

    def set_alias(self, name: str, alias: str, version: int) -> int | None:
        """Point `name@alias` at `version` (which must exist and verify); returns the previous version."""
        validate_name(name)
        validate_alias(alias)
        validate_version(version)
        self.get(ModelRef(name, version=version))  # exists and is intact
        with self.storage.lock(name):
            data = self.storage.read_aliases(name)
            previous = self.aliases(name).get(alias)
            data["aliases"][alias] = version
            data["history"].append(_history(alias, version, previous, "set"))
            self.storage.write_aliases(name, data)
        self._emit(StoreEvent("alias", name, version, alias))
        return previous

    def rollback_target(self, name: str, alias: str = "production") -> int:
        """The version `rollback` would point `alias` at (it may still have to be pulled: `model_store.pull`)."""
        validate_name(name)
        validate_alias(alias)
        return self._rollback_plan(name, alias, self.storage.read_aliases(name))[0]

    def _rollback_plan(self, name: str, alias: str, data: dict[str, Any]) -> tuple[int, bool]:
        """The version before the alias's last change, and whether reaching it drops the root's override.

        The root's own history comes first; once it is used up, the override is dropped and the shipped
        alias applies again. With no override, the shipped layer's history says what production was before
        the version the package ships: a fresh install rolls back to the previous production version."""
        shipped_data = self.shipped.read_aliases(name) if self.shipped else {"aliases": {}, "history": []}
        shipped = shipped_data["aliases"].get(alias)
        if data["aliases"].get(alias) is None:  # the shipped alias applies: step back through its history
            if len(stack := _set_stack(shipped_data["history"], alias)) >= 2:
                return stack[-2], False
        elif len(stack := _set_stack(data["history"], alias)) >= 2:
            return stack[-2], False
        elif shipped is not None:
            return int(shipped), True  # drop the override: the shipped alias applies again
        raise AliasNotFound(f"{name}@{alias} has no earlier version to roll back to")

    def rollback(self, name: str, alias: str = "production") -> int:
        """Point `alias` back at the version it had before its last change; returns that version."""
        validate_name(name)
        validate_alias(alias)
        with self.storage.lock(name):
            data = self.storage.read_aliases(name)
            current = self.aliases(name).get(alias)
            target, drop = self._rollback_plan(name, alias, data)
            self.get(ModelRef(name, version=target))
            if drop:
                del data["aliases"][alias]
            else:
                data["aliases"][alias] = target
            data["history"].append(_history(alias, target, current, "rollback"))
            self.storage.write_aliases(name, data)
        self._emit(StoreEvent("alias", name, target, alias))
        return target

    def alias_history(self, name: str) -> list[dict[str, Any]]:
        return list(self.storage.read_aliases(validate_name(name))["history"])

    def remove(self, name: str, version: int) -> None:
        """Delete a version from the writable root; refused while any alias points at it."""
        validate_name(name)
        validate_version(version)
        layer = self._layer_of(name, version)
        if layer.read_only:
            raise ReadOnlyLayer(f"{name}@{version} is shipped inside the package and cannot be removed")
        with self.storage.lock(name):
            users = sorted(a for a, v in self.aliases(name).items() if v == version)
            if users:
                raise VersionInUse(f"{name}@{version} is referenced by alias(es) {', '.join(users)}; move them first")
            self.storage.delete_version(name, version)
        self._emit(StoreEvent("remove", name, version))


def _set_stack(history: list[dict[str, Any]], alias: str) -> list[int]:
    """The versions `alias` was set to, latest last, each rollback undoing the latest set."""
    stack: list[int] = []
    for entry in history:
        if entry["alias"] != alias:
            continue
        if entry["action"] == "set":
            stack.append(int(entry["version"]))
        elif entry["action"] == "rollback" and stack:
            stack.pop()
    return stack


def _history(alias: str, version: int, previous: int | None, action: str) -> dict[str, Any]:
    return {
        "alias": alias,
        "version": version,
        "previous": previous,
        "action": action,
        "at": datetime.now(UTC).isoformat(),
    }


def verify_files(manifest: Manifest, path: Path) -> None:
    """Every file of `manifest` in `path`, with its size and sha256; `ArtifactCorrupt` names the first that is not."""
    for entry in manifest.files:
        f = path / entry.path
        if not f.is_file():
            raise ArtifactCorrupt(f"{manifest.name}@{manifest.version}: file {entry.path} is missing")
        size = f.stat().st_size
        if size != entry.size:
            raise ArtifactCorrupt(
                f"{manifest.name}@{manifest.version}: {entry.path} is {size} bytes, manifest says {entry.size}"
            )
        digest = sha256_file(f)
        if digest != entry.sha256:
            raise ArtifactCorrupt(
                f"{manifest.name}@{manifest.version}: sha256 of {entry.path} is {digest}, manifest says {entry.sha256}"
            )
