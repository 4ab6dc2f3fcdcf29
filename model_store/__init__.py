"""Versioned model artifacts: manifests, aliases, a catalog of known models and an offline-capable pull."""

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
from model_store.manifest import Manifest
from model_store.names import ModelRef, parse_ref
from model_store.store import ModelStore, ResolvedModel, StoreEvent

__all__ = [
    "AliasNotFound",
    "ArtifactCorrupt",
    "CatalogError",
    "ConverterUnavailable",
    "InvalidName",
    "Manifest",
    "ModelNotFound",
    "ModelRef",
    "ModelStore",
    "ModelStoreError",
    "PullFailed",
    "ReadOnlyLayer",
    "ResolvedModel",
    "StoreEvent",
    "VersionExists",
    "VersionInUse",
    "parse_ref",
]
