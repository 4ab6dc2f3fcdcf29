"""Storage backends for the model store.

`Storage` is the interface the store talks to; `LocalStorage` keeps artifacts on a filesystem as
`<root>/<name>/<version>/{model.onnx,manifest.json,MODEL_CARD.md}` and `<root>/<name>/aliases.json`.
An S3-compatible backend implements the same methods: `commit_version` uploads the staged files and
writes the manifest last (its presence marks a complete version), `local_dir` downloads to a cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from model_store.errors import ModelNotFound, ReadOnlyLayer, VersionExists
from model_store.manifest import MANIFEST_FILE, Manifest
from model_store.names import is_number, validate_name, validate_version

ALIASES_FILE = "aliases.json"
STAGING_DIR = ".staging"
STALE_STAGING_S = 3600.0  # a staging folder this old whose lock nobody holds is a killed publish's


class Storage(Protocol):
    """What the store needs from a backend."""

    read_only: bool
    description: str

    def names(self) -> list[str]: ...
    def versions(self, name: str) -> list[int]: ...
    def read_manifest(self, name: str, version: int) -> Manifest: ...
    def local_dir(self, name: str, version: int) -> Path: ...
    def read_aliases(self, name: str) -> dict[str, Any]: ...
    def write_aliases(self, name: str, data: dict[str, Any]) -> None: ...
    def commit_version(self, name: str, version: int, staged: Path) -> None: ...
    def delete_version(self, name: str, version: int) -> None: ...
    def lock(self, name: str) -> contextlib.AbstractContextManager[None]: ...
    def staging(self) -> contextlib.AbstractContextManager[Path]: ...
    def sweep_staging(self, max_age_s: float = STALE_STAGING_S) -> list[str]: ...


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (after a rename or a new file) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file under `path`, then the folders."""
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(path)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file in the same folder and rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class LocalStorage:
    """Artifacts in a local folder. `read_only=True` serves the layer shipped inside the package."""

    def __init__(self, root: Path, *, read_only: bool = False) -> None:
        self.root = Path(root)
        self.read_only = read_only
        self.description = f"{'shipped' if read_only else 'local'}:{self.root}"

    # -- reading ---------------------------------------------------------------------------
    def _name_dir(self, name: str) -> Path:
        return self.root / validate_name(name)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def versions(self, name: str) -> list[int]:
        d = self._name_dir(name)
        if not d.is_dir():
            return []
        return sorted(int(p.name) for p in d.iterdir() if is_number(p.name) and (p / MANIFEST_FILE).is_file())

    def local_dir(self, name: str, version: int) -> Path:
        d = self._name_dir(name) / str(validate_version(version))
        if not (d / MANIFEST_FILE).is_file():
            raise ModelNotFound(f"{name}@{version} is not in {self.description}")
        return d

    def read_manifest(self, name: str, version: int) -> Manifest:
        return Manifest.from_file(self.local_dir(name, version) / MANIFEST_FILE)

    def read_aliases(self, name: str) -> dict[str, Any]:
        path = self._name_dir(name) / ALIASES_FILE
        if not path.is_file():
            return {"aliases": {}, "history": []}
        data = json.loads(path.read_text(encoding="utf-8"))
        data.setdefault("aliases", {})
        data.setdefault("history", [])
        return data

    # -- writing ---------------------------------------------------------------------------
    def _writable(self) -> None:
        if self.read_only:
            raise ReadOnlyLayer(f"{self.description} is read-only (models shipped inside the package)")

    def write_aliases(self, name: str, data: dict[str, Any]) -> None:
        self._writable()
        d = self._name_dir(name)
        d.mkdir(parents=True, exist_ok=True)
        write_json_atomic(d / ALIASES_FILE, data)

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """An exclusive cross-process lock for one model name (flock on `<name>/.lock`)."""
        self._writable()
        d = self._name_dir(name)
        d.mkdir(parents=True, exist_ok=True)
        with open(d / ".lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh folder on the same filesystem as the root; removed afterwards unless committed.

        While it is in use, `<folder>.lock` beside it is flocked, so `sweep_staging` leaves it alone."""
        self._writable()
        base = self.root / STAGING_DIR
        base.mkdir(parents=True, exist_ok=True)
        path = base / uuid.uuid4().hex
        lock_path = path.with_name(path.name + ".lock")
        with open(lock_path, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            path.mkdir()
            try:
                yield path
            finally:
                shutil.rmtree(path, ignore_errors=True)
                lock_path.unlink(missing_ok=True)

    def sweep_staging(self, max_age_s: float = STALE_STAGING_S) -> list[str]:
        """Remove what publishes killed midway left in the staging folder: entries older than
        `max_age_s` whose lock no live process holds. Returns the names removed."""
        base = self.root / STAGING_DIR
        if self.read_only or not base.is_dir():
            return []
        cutoff = time.time() - max_age_s
        removed = []
        for entry in sorted(base.iterdir()):
            if entry.suffix == ".lock" and entry.with_suffix("").exists():
                continue  # swept with its folder
            try:
                if entry.lstat().st_mtime > cutoff:
                    continue
            except FileNotFoundError:
                continue
            lock_path = entry if entry.suffix == ".lock" else entry.with_name(entry.name + ".lock")
            with open(lock_path, "a+b") as lock:
                try:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a publish is still using it
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                lock_path.unlink(missing_ok=True)
            removed.append(entry.name)
        return removed

    def commit_version(self, name: str, version: int, staged: Path) -> None:
        """Atomically move a fully written, fsynced staging folder to `<name>/<version>`."""
        self._writable()
        d = self._name_dir(name)
        d.mkdir(parents=True, exist_ok=True)
        target = d / str(validate_version(version))
        fsync_tree(staged)
        if target.exists():
            raise VersionExists(f"{name}@{version} already exists; versions are immutable")
        try:
            os.rename(staged, target)
        except OSError as exc:  # a concurrent writer won the race (ENOTEMPTY/EEXIST)
            raise VersionExists(f"{name}@{version} already exists; versions are immutable") from exc
        fsync_dir(d)

    def delete_version(self, name: str, version: int) -> None:
        self._writable()
        src = self.local_dir(name, version)
        trash = self.root / STAGING_DIR / f"del-{uuid.uuid4().hex}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.rename(src, trash)  # disappear atomically, then clean up
        shutil.rmtree(trash, ignore_errors=True)
        fsync_dir(src.parent)
