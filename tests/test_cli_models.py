"""`emoserve models ...` as a user runs it: a real subprocess, exit codes and messages."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from model_store.hashing import sha256_file

REPO = Path(__file__).resolve().parents[1]
MANIFEST = {
    "name": "det",
    "task": "face_detector",
    "family": "yunet",
    "inputs": [{"name": "input", "shape": [1, 3, "h", "w"], "color": "BGR", "scale": 1.0}],
}


def emoserve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EMOSERVE_")}
    full_env.update({"EMOSERVE_MODEL_ROOT": str(tmp_path / "root"), "COLUMNS": "200", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "emoserve_cli", *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture()
def published(tmp_path: Path) -> Path:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model bytes")
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump(MANIFEST))
    for _ in range(2):
        r = emoserve(tmp_path, "models", "publish", str(model), "--manifest", str(manifest))
        assert r.returncode == 0, r.stderr
    return tmp_path


def test_publish_promote_list_rollback(published: Path) -> None:
    tmp = published
    assert emoserve(tmp, "models", "promote", "det", "1").returncode == 0
    r = emoserve(tmp, "models", "promote", "det", "2")
    assert r.returncode == 0 and "1 -> 2" in r.stdout
    rows = [r for r in json.loads(emoserve(tmp, "models", "list", "--json").stdout) if r["name"] == "det"]
    assert [(row["version"], row["aliases"], row["status"]) for row in rows] == [
        (1, [], "verified"),
        (2, ["production"], "verified"),
    ]
    assert rows[0]["sha256"] == sha256_file(tmp / "m.onnx")
    r = emoserve(tmp, "models", "rollback", "det")
    assert r.returncode == 0 and "2 -> 1" in r.stdout
    shown = json.loads(emoserve(tmp, "models", "show", "det@production", "--json").stdout)
    assert shown["manifest"]["version"] == 1 and shown["aliases"] == {"production": 1}
    assert emoserve(tmp, "models", "verify", "--all").returncode == 0


def test_exit_codes_and_messages(published: Path) -> None:
    tmp = published
    cases = [
        (("models", "show", "nothing@production"), 3, "no model named 'nothing'"),
        (("models", "show", "det@canary"), 3, "has no alias 'canary'"),
        (("models", "show", "../etc"), 2, "invalid model name"),
        (("models", "promote", "det", "7"), 3, "det@7 is not in the store"),
        (("models", "remove", "det"), 2, "needs an explicit version"),
        (("models", "pull", "not-in-catalog"), 3, "not in the catalog"),
        (("models", "verify"), 2, "either a model reference or --all"),
    ]
    for args, code, message in cases:
        r = emoserve(tmp, *args)
        assert r.returncode == code, (args, r.stdout, r.stderr)
        assert message in r.stderr, (args, r.stderr)
    emoserve(tmp, "models", "promote", "det", "1")
    r = emoserve(tmp, "models", "remove", "det@1")
    assert r.returncode == 8 and "production" in r.stderr
    assert emoserve(tmp, "models", "remove", "det@2").returncode == 0


def test_corrupt_artifact_fails_verify(published: Path) -> None:
    model = published / "root" / "det" / "2" / "model.onnx"
    model.write_bytes(b"model bytez")
    r = emoserve(published, "models", "verify", "--all")
    assert r.returncode == 4
    assert "FAIL det@2" in r.stdout and "ok det@1" in r.stdout
    assert re.search(r"1 of \d+ artifact\(s\) failed", r.stderr)
    assert emoserve(published, "models", "verify", "det@2").returncode == 4
    assert emoserve(published, "models", "verify", "det@1").returncode == 0


def test_invalid_settings_and_manifest(tmp_path: Path) -> None:
    r = emoserve(tmp_path, "models", "list", env={"EMOSERVE_MODEL_MIRROR": str(tmp_path / "nope")})
    assert r.returncode == 2 and "EMOSERVE_MODEL_MIRROR" in r.stderr and "does not exist" in r.stderr
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**MANIFEST, "task": "emotion_classifier"}))  # classifier without labels
    r = emoserve(tmp_path, "models", "publish", str(model), "--manifest", str(bad))
    assert r.returncode == 2 and "labels" in r.stderr


def test_pull_failure_lists_each_source(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    entry = {
        "task": "face_detector",
        "family": "yunet",
        "licence": "MIT",
        "file": "det.onnx",
        "sha256": "2" * 64,
        "sources": [{"type": "file", "path": "/nonexistent/det.onnx"}],
        "manifest": {},
    }
    catalog.write_text(yaml.safe_dump({"models": {"det": entry}}))
    (tmp_path / "mirror").mkdir()
    r = emoserve(
        tmp_path, "models", "pull", "det", "--mirror", str(tmp_path / "mirror"), env={"EMOSERVE_CATALOG": str(catalog)}
    )
    assert r.returncode == 5
    assert "could not pull 'det'" in r.stderr
    assert "no file named det.onnx" in r.stderr and "/nonexistent/det.onnx does not exist" in r.stderr
