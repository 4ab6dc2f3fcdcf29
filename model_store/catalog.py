"""The catalog of known models (`catalog.yaml` beside this file) and its schema."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model_store.errors import CatalogError
from model_store.names import validate_name

CATALOG_PATH = Path(__file__).with_name("catalog.yaml")


class _Src(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UrlSource(_Src):
    type: Literal["url"]
    url: str
    member: str | None = Field(None, description="path inside a .zip download")

    def describe(self) -> str:
        return f"url {self.url}" + (f" (member {self.member})" if self.member else "")


class PypiSource(_Src):
    type: Literal["pypi"]
    package: str = Field(pattern=r"^[A-Za-z0-9._-]+==[A-Za-z0-9.+!-]+$")
    path: str

    def describe(self) -> str:
        return f"pypi {self.package} ({self.path})"


class NpmSource(_Src):
    type: Literal["npm"]
    package: str = Field(pattern=r"^(@[a-z0-9._-]+/)?[A-Za-z0-9._-]+@[A-Za-z0-9.+-]+$")
    path: str

    def describe(self) -> str:
        return f"npm {self.package} ({self.path})"


class FileSource(_Src):
    type: Literal["file"]
    path: str

    def describe(self) -> str:
        return f"file {self.path}"


Source = Annotated[UrlSource | PypiSource | NpmSource | FileSource, Field(discriminator="type")]


class CatalogEntry(BaseModel):
    """One known model: the file the sources deliver, how to check it, and its manifest fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    task: Literal["face_detector", "emotion_classifier"]
    family: str
    licence: str
    file: str
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    size: int | None = None
    sha256_origin: str = "official"
    converter: str | None = None
    converter_params: dict[str, Any] = Field(default_factory=dict)
    sources: list[Source]
    manifest: dict[str, Any] = Field(default_factory=dict)

    def offline_advice(self) -> str:
        """The ways to get this model when none of its sources can be reached (ends a failed pull)."""
        check = f"sha256 {self.sha256}" if self.sha256 else "no sha256 recorded: add --allow-unverified"
        size = f", {self.size:,} bytes" if self.size else ""
        return (
            "ways out:\n"
            f"  - copy {self.file} ({check}{size}) from a machine that reaches one of the sources into a folder"
            f" DIR here, then run `emoserve models pull {self.name} --mirror DIR`"
            " (or set EMOSERVE_MODEL_MIRROR=DIR; any file of that name and sha256 below DIR is found)\n"
            f"  - or give `emoserve models pull {self.name}` a catalog of your own (EMOSERVE_CATALOG) whose"
            f" entry has a `file` source naming where {self.file} lies"
        )


class ReleaseEntry(BaseModel):
    """One earlier version of our own models, kept out of the package as a release artifact
    (`model_store.release`): the file, how to check it, where to fetch it and how to train it again."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: int = Field(ge=1)
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(gt=0)
    model_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="of the model file inside: which version it is")
    sha256_origin: str = "release"
    config: str = Field(description="the training config(s) that reproduce it, relative to the repository")
    sources: list[Source]

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def offline_advice(self) -> str:
        return (
            "ways out:\n"
            f"  - copy {self.file} (sha256 {self.sha256}, {self.size:,} bytes) into a folder DIR here, then run"
            f" `emoserve models pull {self.ref} --mirror DIR` (or set EMOSERVE_MODEL_MIRROR=DIR)\n"
            f"  - or pack it from a store that has it: `emoserve models pack {self.ref} --out DIR`\n"
            f"  - or train it again: {self.config}"
        )


class Catalog:
    """The parsed catalog: third-party models by name, and our own earlier versions by NAME@VERSION."""

    def __init__(self, entries: dict[str, CatalogEntry], releases: dict[str, ReleaseEntry] | None = None) -> None:
        self.entries = entries
        self.releases = releases or {}

    @classmethod
    def load(cls, path: Path = CATALOG_PATH) -> Catalog:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
            entries = {
                validate_name(name): CatalogEntry.model_validate({"name": name, **body})
                for name, body in (raw.get("models") or {}).items()
            }
            releases = {}
            for ref, body in (raw.get("releases") or {}).items():
                name, _, version = str(ref).partition("@")
                entry = ReleaseEntry.model_validate({**body, "name": validate_name(name), "version": version})
                releases[entry.ref] = entry
        except (OSError, yaml.YAMLError, ValidationError, ValueError) as exc:
            raise CatalogError(f"catalog {path} is invalid: {exc}") from exc
        return cls(entries, releases)

    def get(self, name: str) -> CatalogEntry:
        if name not in self.entries:
            raise CatalogError(f"{name!r} is not in the catalog; known: {', '.join(sorted(self.entries))}")
        return self.entries[name]

    def release(self, ref: str) -> ReleaseEntry:
        if ref not in self.releases:
            raise CatalogError(f"{ref!r} is not a release in the catalog; known: {', '.join(sorted(self.releases))}")
        return self.releases[ref]

    def names(self) -> list[str]:
        return sorted(self.entries)
