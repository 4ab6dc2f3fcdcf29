"""Exceptions raised by the model store. The service maps them to HTTP/WS codes in `service.errors`."""


class ModelStoreError(Exception):
    """Base class of every model-store failure."""


class InvalidName(ModelStoreError, ValueError):
    """A model name, version, alias or reference is malformed (or tries path traversal)."""


class ModelNotFound(ModelStoreError, LookupError):
    """No such model, version or alias in the store."""


class AliasNotFound(ModelNotFound):
    """The alias is not set for this model."""


class ArtifactCorrupt(ModelStoreError):
    """A file's sha256 or size differs from its manifest; the artifact must not be loaded."""


class VersionExists(ModelStoreError):
    """Versions are immutable: publishing onto an existing version is refused."""


class VersionInUse(ModelStoreError):
    """A version still referenced by an alias cannot be removed."""


class ReadOnlyLayer(ModelStoreError):
    """The shipped layer inside the package cannot be changed."""


class CatalogError(ModelStoreError):
    """The catalog is malformed or does not list the requested model."""


class ConverterUnavailable(ModelStoreError):
    """A catalog source needs a converter whose dependencies (e.g. torch) are not installed."""


class PullFailed(ModelStoreError):
    """Every source of a catalog model failed; the message lists each source and why."""

    def __init__(self, name: str, attempts: list[tuple[str, str]], *, advice: str | None = None) -> None:
        self.name = name
        self.attempts = attempts
        lines = [f"could not pull {name!r}; tried:"]
        lines += [f"  - {source}: {why}" for source, why in attempts] or ["  (no sources)"]
        if advice:
            lines.append(advice)
        super().__init__("\n".join(lines))
