"""A fresh install serves with no network and no mirror; a failed pull and /readyz say the ways out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from model_store import ModelStore, PullFailed
from model_store.catalog import Catalog
from model_store.pull import pull
from service.api.app import create_app
from service.settings import Settings
from tests.api_server import REPO, run_server
from tests.conftest import UNREACHABLE, shared_path

YUNET_SHA = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"


def test_shipped_default_detector_verifies(tmp_path: Path) -> None:
    resolved = ModelStore(tmp_path / "empty-root").get("yunet-2023mar@production")
    assert resolved.layer == "shipped"
    assert resolved.manifest.files[0].sha256 == YUNET_SHA and resolved.manifest.files[0].size == 232_589
    assert resolved.manifest.provenance.source_sha256 == Catalog.load().get("yunet-2023mar").sha256
    assert "MIT" in (resolved.path / "MODEL_CARD.md").read_text(encoding="utf-8")


def test_pull_of_the_shipped_detector_needs_no_source(tmp_path: Path, offline_catalog: Path) -> None:
    store = ModelStore(tmp_path / "root")  # over the shipped layer, as the service and the CLI use it
    result = pull(store, "yunet-2023mar", catalog=Catalog.load(offline_catalog), progress=False)
    assert result.already_present and result.manifest.version == 1


def test_fresh_install_serves_a_photo_with_no_network_and_no_mirror(tmp_path: Path, offline_catalog: Path) -> None:
    photo = shared_path("media", "photos", "obama.jpg")
    env = {"EMOSERVE_MODEL_ROOT": str(tmp_path / "empty-root"), "EMOSERVE_CATALOG": str(offline_catalog)}
    with run_server(env, tmp_path) as server, server.client() as c:  # default detector and classifier
        r = c.post("/v1/analyze", content=photo.read_bytes(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["models"]["detector"] == {"name": "yunet-2023mar", "version": 1}
    assert len(body["faces"]) == 1 and body["faces"][0]["score"] > 0.8
    assert not list((tmp_path / "empty-root").glob("yunet-2023mar/*/model.onnx")), "nothing was pulled"


def _assert_ways_out(message: str, file: str, sha256: str) -> None:
    tail = message[message.index("ways out:") :]
    assert message.rstrip().endswith(tail.rstrip()), "the ways out end the message"
    assert "--mirror DIR" in tail and "EMOSERVE_MODEL_MIRROR" in tail
    assert file in tail and sha256 in tail and "EMOSERVE_CATALOG" in tail


def test_failed_pull_ends_with_the_ways_out(tmp_path: Path, offline_catalog: Path) -> None:
    store = ModelStore(tmp_path / "root", shipped=None)
    with pytest.raises(PullFailed) as info:
        pull(store, "yunet-2023mar", catalog=Catalog.load(offline_catalog), progress=False)
    message = str(info.value)
    assert f"url {UNREACHABLE}/face_detection_yunet_2023mar.onnx:" in message
    _assert_ways_out(message, "face_detection_yunet_2023mar.onnx", YUNET_SHA)


def test_cli_pull_without_network_exits_5_with_the_ways_out(tmp_path: Path, offline_catalog: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOSERVE_")}
    env.update(
        {
            "EMOSERVE_MODEL_ROOT": str(tmp_path / "root"),
            "EMOSERVE_CATALOG": str(offline_catalog),
            "PYTHONPATH": str(REPO),
            "COLUMNS": "400",
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", "emoserve_cli", "models", "pull", "scrfd-500m"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 5, proc.stderr
    entry = Catalog.load().get("scrfd-500m")
    assert entry.sha256 is not None
    _assert_ways_out(proc.stderr, entry.file, entry.sha256)


def test_readyz_says_how_to_get_a_missing_detector(tmp_path: Path, offline_catalog: Path) -> None:
    settings = Settings(
        model_root=tmp_path / "empty-root", catalog=offline_catalog, detector="scrfd-500m@production", redis_url=None
    )
    with TestClient(create_app(settings)) as c:
        r = c.get("/readyz")
    assert r.status_code == 503 and r.headers["retry-after"]
    error = r.json()["error"]
    assert "detector scrfd-500m@production" in error and "emoserve models pull scrfd-500m" in error
    entry = Catalog.load().get("scrfd-500m")
    assert entry.sha256 is not None
    _assert_ways_out(error, entry.file, entry.sha256)
