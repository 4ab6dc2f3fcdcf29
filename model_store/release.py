"""Release artifacts: one store version (manifest, ONNX, card) as a tar file that `emoserve models pull
NAME@VERSION` installs back under the same version number.

The package ships only the versions a fresh install serves; earlier ones live as release artifacts listed in
the catalog's `releases` section (sha256, size, where to fetch them, the training config that made them).
`pack` writes the same bytes for the same version every time (sorted members, zero times and owners, the
manifest in its canonical form), so a catalog's sha256 can be checked against an artifact packed from any
store that holds the version, including one that pulled it.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from pydantic import ValidationError

from model_store.errors import ArtifactCorrupt
from model_store.manifest import CARD_FILE, MANIFEST_FILE, Manifest
from model_store.store import ModelStore, verify_files

MAX_MEMBERS = 16


def artifact_name(name: str, version: int) -> str:
    """The file name of a version's release artifact, e.g. `emotion-ferplus8-3.tar`."""
    return f"{name}-{version}.tar"


def pack(store: ModelStore, ref: str, out_dir: Path) -> Path:
    """Write `ref`'s version (verified first) as a reproducible tar in `out_dir`; returns its path."""
    resolved = store.get(ref)
    m = resolved.manifest
    card = [CARD_FILE] if (resolved.path / CARD_FILE).is_file() else []
    names = sorted({MANIFEST_FILE, *(f.path for f in m.files), *card})
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / artifact_name(m.name, m.version)
    with tarfile.open(target, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member in names:  # the manifest as this code writes it: a pulled copy packs to the same bytes
            data = m.to_json().encode() if member == MANIFEST_FILE else (resolved.path / member).read_bytes()
            info = tarfile.TarInfo(member)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return target


def unpack(archive: Path, dest: Path, limit: int) -> Manifest:
    """Extract a release artifact into `dest` and return its manifest, after checking that it holds plain files
    with plain names only (at most `limit` bytes in all) and that every file matches the manifest."""
    try:
        with tarfile.open(archive, "r:") as tar:
            members = tar.getmembers()
            if len(members) > MAX_MEMBERS or sum(m.size for m in members) > limit:
                raise ArtifactCorrupt(f"{archive.name}: more files or bytes than a release artifact holds")
            for member in members:
                name = member.name
                if not member.isfile() or not name or Path(name).name != name or name.startswith("."):
                    raise ArtifactCorrupt(f"{archive.name}: unexpected member {name!r}")
                src = tar.extractfile(member)
                if src is None:
                    raise ArtifactCorrupt(f"{archive.name}: cannot read {name!r}")
                (dest / name).write_bytes(src.read())
    except (tarfile.TarError, OSError) as exc:
        raise ArtifactCorrupt(f"{archive.name} is not a release artifact: {exc}") from exc
    if not (dest / MANIFEST_FILE).is_file():
        raise ArtifactCorrupt(f"{archive.name} has no {MANIFEST_FILE}")
    try:
        manifest = Manifest.from_file(dest / MANIFEST_FILE)
    except (ValidationError, UnicodeDecodeError) as exc:
        raise ArtifactCorrupt(f"{archive.name}: its {MANIFEST_FILE} is invalid: {exc}") from exc
    verify_files(manifest, dest)
    return manifest
