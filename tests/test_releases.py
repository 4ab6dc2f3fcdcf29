"""Earlier versions as release artifacts: the package ships only what it serves, the catalog's `releases`
match the version folders kept in the repository, `emoserve models pull NAME@VERSION` installs one under its
own number, and `emoserve models rollback` on a fresh install gets back the previous production version."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

from model_store import ArtifactCorrupt, ModelStore, PullFailed
from model_store.catalog import Catalog
from model_store.hashing import sha256_file
from model_store.manifest import MANIFEST_FILE, Manifest
from model_store.pull import pull
from model_store.release import artifact_name, pack, unpack
from model_store.store import SHIPPED_ROOT
from tests.test_cli_models import emoserve

REPO = Path(__file__).resolve().parents[1]
RELEASES = REPO / "releases"
WHEEL_LIMIT = 50 * 1024**2


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every catalog release packed from the repository's `releases/` folders."""
    out = tmp_path_factory.mktemp("mirror")
    source = ModelStore(RELEASES, shipped=None)
    for release in Catalog.load().releases.values():
        pack(source, release.ref, out)
    return out


def test_catalog_releases_are_the_repository_versions(mirror: Path, tmp_path: Path) -> None:
    releases = Catalog.load().releases
    assert {"emotion-ferplus8@3", "emotion-ferplus8@4", "emotion-fer7@3"} <= set(releases)
    fresh = ModelStore(tmp_path / "root")  # an empty root over the shipped layer
    for release in releases.values():
        artifact = mirror / artifact_name(release.name, release.version)
        assert (sha256_file(artifact), artifact.stat().st_size) == (release.sha256, release.size), release.ref
        assert release.version not in fresh.versions(release.name), f"{release.ref} is still shipped"
    # packing is reproducible: the same bytes a second time
    again = pack(ModelStore(RELEASES, shipped=None), "emotion-fer7@3", tmp_path / "again")
    assert sha256_file(again) == releases["emotion-fer7@3"].sha256


def test_rollback_on_a_fresh_install_pulls_the_previous_production(
    mirror: Path, tmp_path: Path, offline_catalog: Path
) -> None:
    offline = emoserve(
        tmp_path, "models", "rollback", "emotion-ferplus8", env={"EMOSERVE_CATALOG": str(offline_catalog)}
    )
    assert offline.returncode != 0
    assert "emoserve models pull emotion-ferplus8@4 --mirror DIR" in offline.stdout + offline.stderr
    assert "training/configs/emotion-ferplus8.yaml" in offline.stdout + offline.stderr

    env = {"EMOSERVE_MODEL_MIRROR": str(mirror)}
    r = emoserve(tmp_path, "models", "rollback", "emotion-ferplus8", env=env)
    assert r.returncode == 0, r.stderr
    assert "published emotion-ferplus8@4" in r.stdout and "5 -> 4" in r.stdout
    store = ModelStore(tmp_path / "root")
    assert store.aliases("emotion-ferplus8")["production"] == 4
    installed = store.get("emotion-ferplus8@4")
    assert installed.layer == "local"
    kept = Manifest.from_file(RELEASES / "emotion-ferplus8" / "4" / MANIFEST_FILE)
    assert installed.manifest == kept, "the manifest travels unchanged"
    assert (installed.path / "MODEL_CARD.md").read_text() == (RELEASES / "emotion-ferplus8/4/MODEL_CARD.md").read_text()
    repacked = pack(store, "emotion-ferplus8@4", tmp_path / "repacked")  # a store that pulled it packs it again
    assert sha256_file(repacked) == Catalog.load().release("emotion-ferplus8@4").sha256

    # the next rollback returns to the shipped production version; a second pull is a no-op
    r = emoserve(tmp_path, "models", "rollback", "emotion-ferplus8", env=env)
    assert r.returncode == 0 and "4 -> 5" in r.stdout, r.stdout + r.stderr
    r = emoserve(tmp_path, "models", "pull", "emotion-ferplus8@4", env=env)
    assert r.returncode == 0 and "already present as emotion-ferplus8@4" in r.stdout, r.stdout + r.stderr


def test_every_shipped_model_rolls_back_on_a_fresh_install(mirror: Path, tmp_path: Path) -> None:
    """Each shipped alias file names the production version before (what a fresh install rolls back to), and
    that version is a release the mirror holds."""
    env = {"EMOSERVE_MODEL_MIRROR": str(mirror)}
    rolled = []
    for folder in sorted(p for p in SHIPPED_ROOT.iterdir() if p.is_dir()):
        history = json.loads((folder / "aliases.json").read_text())["history"]
        if not history:  # shipped once, never replaced (the detector)
            continue
        previous = history[-1]["previous"]
        r = emoserve(tmp_path, "models", "rollback", folder.name, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert ModelStore(tmp_path / "root").aliases(folder.name)["production"] == previous
        rolled.append(folder.name)
    assert {"emotion-ferplus8-fast", "emotion-ferplus8", "emotion-fer7"} <= set(rolled)


def test_ship_alias_keeps_the_history(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="publishing lives in the training extra")
    from tests.helpers.tiny_models import classifier_draft, tiny_classifier_onnx
    from training.export import ship_alias

    onnx = tiny_classifier_onnx(tmp_path / "t.onnx")
    for _ in range(2):  # versions 1 and 2 of "m", in a folder laid out as the shipped layer
        ModelStore(tmp_path, shipped=None).publish(classifier_draft("m"), {"model.onnx": onnx})
    for version in (1, 2, 2):
        ship_alias(tmp_path, "m", "production", version)
    saved = json.loads((tmp_path / "m" / "aliases.json").read_text())
    assert saved["aliases"] == {"production": 2}
    assert [(h["version"], h["previous"]) for h in saved["history"]] == [(1, None), (2, 1)]


def test_pull_of_a_release_installs_it_under_its_version(mirror: Path, tmp_path: Path) -> None:
    r = emoserve(tmp_path, "models", "pull", "emotion-fer7@3", "--mirror", str(mirror))
    assert r.returncode == 0, r.stderr
    store = ModelStore(tmp_path / "root")
    assert store.get("emotion-fer7@3").manifest.version == 3
    shipped = json.loads((SHIPPED_ROOT / "emotion-fer7" / "aliases.json").read_text())["aliases"]["production"]
    assert store.aliases("emotion-fer7")["production"] == shipped != 3, "pulling a release moves no alias"
    listed = json.loads(emoserve(tmp_path, "models", "catalog", "--json").stdout)
    assert any(row["name"] == "emotion-fer7@3" and row["task"] == "release" for row in listed)


def test_a_store_version_with_another_model_is_not_the_release(mirror: Path, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "root", shipped=None)
    for content in (b"one", b"two", b"three"):  # a local emotion-fer7@3 that is not the release
        (tmp_path / "m.onnx").write_bytes(content)
        draft = {"name": "emotion-fer7", "task": "emotion_classifier", "family": "x", "labels": ["a", "b"],
                 "inputs": [{"name": "x", "shape": [1, 1, 48, 48]}]}  # fmt: skip
        store.publish(draft, {"model.onnx": tmp_path / "m.onnx"})
    with pytest.raises(PullFailed, match="another model"):
        pull(store, "emotion-fer7@3", mirror=mirror, progress=False)


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_unpack_refuses_what_a_release_never_holds(mirror: Path, tmp_path: Path) -> None:
    good = mirror / "emotion-ferplus8-fast-1.tar"
    with tarfile.open(good) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    cases = {
        "escape": {**members, "../evil.txt": b"x"},
        "tampered": {**members, "model.onnx": members["model.onnx"][:-1] + b"\0"},
        "no manifest": {k: v for k, v in members.items() if k != MANIFEST_FILE},
        "bad manifest": {**members, MANIFEST_FILE: b"{}"},
    }
    for label, content in cases.items():
        dest = tmp_path / label
        dest.mkdir()
        with pytest.raises(ArtifactCorrupt):
            unpack(_tar(tmp_path / f"{label}.tar", content), dest, limit=64 * 1024**2)
    dest = tmp_path / "limit"
    dest.mkdir()
    with pytest.raises(ArtifactCorrupt, match="more files or bytes"):
        unpack(good, dest, limit=1024)
    assert not (tmp_path / "evil.txt").exists()


def test_wheel_carries_only_what_a_fresh_install_serves(tmp_path: Path) -> None:
    """The Done-when of the slim package: `pip wheel . --no-deps` under 50 MB, holding the versions that the
    shipped aliases point at and nothing else."""
    src = tmp_path / "src"  # a copy: setuptools leaves build/ behind, and a stale build/lib leaks into wheels
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for package in (pattern.rstrip("*") for pattern in find["include"]):
        folder = next(Path(where) / package for where in find["where"] if (REPO / where / package).is_dir())
        shutil.copytree(REPO / folder, src / folder, ignore=ignore)
    for file in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / file, src / file)
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-q", "-w", str(tmp_path / "dist")],
        cwd=src, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("emoserve-*.whl")
    assert wheel.stat().st_size < WHEEL_LIMIT, f"{wheel.name} is {wheel.stat().st_size / 1024**2:.1f} MB"
    served = {
        f"model_store/shipped/{folder.name}/{v}/{f['path']}"
        for folder in SHIPPED_ROOT.iterdir()
        if folder.is_dir()
        for v in set(json.loads((folder / "aliases.json").read_text())["aliases"].values())
        for f in json.loads((folder / str(v) / "manifest.json").read_text())["files"]
    }  # each served version's graphs: model.onnx, and model.int8.onnx where it has one
    with zipfile.ZipFile(wheel) as zf:
        onnx = {n for n in zf.namelist() if n.endswith(".onnx")}
    assert onnx == served
