"""Model store round trips on real files: publish, verify, aliases, rollback, removal, concurrency."""

from __future__ import annotations

import fcntl
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from model_store import (
    AliasNotFound,
    ArtifactCorrupt,
    InvalidName,
    ModelNotFound,
    ModelStore,
    ReadOnlyLayer,
    StoreEvent,
    VersionExists,
    VersionInUse,
    parse_ref,
)
from model_store.manifest import Manifest
from model_store.names import validate_alias, validate_name, validate_version

DRAFT = {
    "name": "det",
    "task": "face_detector",
    "family": "yunet",
    "inputs": [{"name": "input", "shape": [1, 3, "h", "w"], "color": "BGR", "scale": 1.0}],
}


def _file(tmp_path: Path, content: bytes, name: str = "m.onnx") -> Path:
    p = tmp_path / name
    p.write_bytes(content)
    return p


def test_publish_get_round_trip(store: ModelStore, tmp_path: Path) -> None:
    m = store.publish(DRAFT, {"model.onnx": _file(tmp_path, b"weights-1")}, card="# card", alias="production")
    assert m.version == 1
    resolved = store.get("det@production")
    assert resolved.manifest == m
    assert resolved.model_path.read_bytes() == b"weights-1"
    assert (resolved.path / "MODEL_CARD.md").read_text() == "# card"
    assert Manifest.from_file(resolved.path / "manifest.json").files[0].size == len(b"weights-1")
    assert store.get("det").manifest.version == 1  # bare name means @production
    assert store.get("det@1").manifest.version == 1


def test_versions_increase_and_are_immutable(store: ModelStore, tmp_path: Path) -> None:
    f = _file(tmp_path, b"a")
    assert [store.publish(DRAFT, {"model.onnx": f}).version for _ in range(3)] == [1, 2, 3]
    with pytest.raises(VersionExists):
        store.publish(DRAFT, {"model.onnx": f}, version=2)
    assert store.get("det@2").model_path.read_bytes() == b"a"


def test_flipped_byte_is_caught_and_refused(store: ModelStore, tmp_path: Path) -> None:
    store.publish(DRAFT, {"model.onnx": _file(tmp_path, b"0123456789")}, alias="production")
    path = store.get("det@1").model_path
    data = bytearray(path.read_bytes())
    data[3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactCorrupt, match="sha256"):
        store.get("det@production")
    assert store.verify_all()[0][1] is not None
    with pytest.raises(ArtifactCorrupt):
        store.set_alias("det", "staging", 1)


def test_truncated_file_is_caught(store: ModelStore, tmp_path: Path) -> None:
    store.publish(DRAFT, {"model.onnx": _file(tmp_path, b"0123456789")})
    path = store.get("det@1").model_path
    path.write_bytes(b"01234")
    with pytest.raises(ArtifactCorrupt, match="bytes"):
        store.verify("det@1")


def test_alias_set_rollback_and_history(store: ModelStore, tmp_path: Path) -> None:
    f = _file(tmp_path, b"x")
    for _ in range(3):
        store.publish(DRAFT, {"model.onnx": f})
    store.set_alias("det", "production", 1)
    store.set_alias("det", "production", 2)
    store.set_alias("det", "production", 3)
    store.set_alias("det", "staging", 3)
    assert store.rollback("det") == 2
    assert store.rollback("det") == 1
    assert store.aliases("det") == {"production": 1, "staging": 3}
    with pytest.raises(AliasNotFound):
        store.rollback("det")
    actions = [(h["alias"], h["version"], h["action"]) for h in store.alias_history("det")]
    assert actions[-2:] == [("production", 2, "rollback"), ("production", 1, "rollback")]
    with pytest.raises(AliasNotFound):
        store.get("det@canary")
    with pytest.raises(ModelNotFound):
        store.set_alias("det", "production", 9)


def test_remove_only_unreferenced(store: ModelStore, tmp_path: Path) -> None:
    f = _file(tmp_path, b"x")
    store.publish(DRAFT, {"model.onnx": f}, alias="production")
    store.publish(DRAFT, {"model.onnx": f})
    with pytest.raises(VersionInUse, match="production"):
        store.remove("det", 1)
    store.remove("det", 2)
    assert store.versions("det") == [1]
    with pytest.raises(ModelNotFound):
        store.get("det@2")


@pytest.mark.parametrize(
    "ref",
    [
        "../etc",
        "det@../x",
        "a/b",
        "det@1@2",
        "DET",
        "det@",
        "",
        "det@-1",
        ".hidden",
        "det@a/b",
        "x" * 80,
        "det\n",  # `$` would match before a final newline
        "det@production\n",
        "det@1\n",
        "det@\u0663",  # a non-ASCII digit
        "det@\u00b2",
    ],
)
def test_bad_references_are_refused(ref: str) -> None:
    with pytest.raises(InvalidName):
        parse_ref(ref)


def test_traversal_names_refused_everywhere(store: ModelStore, tmp_path: Path) -> None:
    f = _file(tmp_path, b"x")
    with pytest.raises(InvalidName):
        store.publish({**DRAFT, "name": "../evil"}, {"model.onnx": f})
    with pytest.raises(InvalidName):
        store.publish(DRAFT, {"../model.onnx": f})
    with pytest.raises(InvalidName):
        store.set_alias("det", "../prod", 1)
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("bad", ["production\n", "det\n", "\nprod", "prod\r"])
def test_trailing_newline_is_refused_everywhere(store: ModelStore, tmp_path: Path, bad: str) -> None:
    store.publish(DRAFT, {"model.onnx": _file(tmp_path, b"x")})
    with pytest.raises(InvalidName):
        validate_name(bad)
    with pytest.raises(InvalidName):
        validate_alias(bad)
    with pytest.raises(InvalidName):
        store.set_alias("det", bad, 1)
    with pytest.raises(InvalidName):
        validate_version(bad.replace("production", "1"))
    assert all("\n" not in alias for alias in store.aliases("det"))  # no alias was written


def test_events_are_delivered(store: ModelStore, tmp_path: Path) -> None:
    seen: list[StoreEvent] = []
    unsubscribe = store.subscribe(seen.append)
    store.publish(DRAFT, {"model.onnx": _file(tmp_path, b"x")}, alias="production")
    unsubscribe()
    store.publish(DRAFT, {"model.onnx": _file(tmp_path, b"y")})
    assert seen == [StoreEvent("publish", "det", 1), StoreEvent("alias", "det", 1, "production")]


def test_shipped_layer_is_read_only_and_overridable(tmp_path: Path) -> None:
    shipped_root = tmp_path / "shipped"
    ModelStore(shipped_root, shipped=None).publish(DRAFT, {"model.onnx": _file(tmp_path, b"s")}, alias="production")
    store = ModelStore(tmp_path / "root", shipped=shipped_root)
    assert store.get("det@production").layer == "shipped"
    with pytest.raises(ReadOnlyLayer):
        store.remove("det", 1)
    m = store.publish(DRAFT, {"model.onnx": _file(tmp_path, b"r")})
    assert m.version == 2  # numbered across both layers
    store.set_alias("det", "production", 2)
    assert store.get("det@production").layer == "local"
    assert store.rollback("det") == 1  # drops the override: the shipped alias applies again
    assert store.get("det@production").layer == "shipped"
    assert "production" not in store.storage.read_aliases("det")["aliases"]
    assert [s.versions for s in store.summaries()] == [[1, 2]]


def test_rollback_on_a_fresh_install_follows_the_shipped_history(tmp_path: Path) -> None:
    """A package whose production moved from 1 to 2: a fresh root rolls back to 1 (an override), the next
    rollback drops it; a later package shipping 3 is then what production is, not a masked old version."""
    shipped = ModelStore(tmp_path / "shipped", shipped=None)
    for content in (b"1", b"2"):
        shipped.publish(DRAFT, {"model.onnx": _file(tmp_path, content)}, alias="production")
    store = ModelStore(tmp_path / "root", shipped=tmp_path / "shipped")
    assert store.rollback_target("det") == 1
    assert store.rollback("det") == 1 and store.aliases("det")["production"] == 1
    assert store.rollback("det") == 2 and "production" not in store.storage.read_aliases("det")["aliases"]
    shipped.publish(DRAFT, {"model.onnx": _file(tmp_path, b"3")}, alias="production")  # a newer package
    assert store.aliases("det")["production"] == 3
    assert store.rollback("det") == 2  # its own history: 3 came after 2


def _publish_many(root: str, content: bytes, count: int, out: mp.Queue) -> None:
    store = ModelStore(Path(root), shipped=None)
    src = Path(root).parent / f"src-{content.decode()}"
    src.write_bytes(content * 1000)
    out.put([store.publish(DRAFT, {"model.onnx": src}).version for _ in range(count)])


def test_concurrent_publishers_never_collide(tmp_path: Path) -> None:
    root = tmp_path / "root"
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_publish_many, args=(str(root), tag, 8, q)) for tag in (b"a", b"b", b"c")]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    versions = sorted(v for r in results for v in r)
    assert versions == list(range(1, 25))  # no duplicate, no gap
    store = ModelStore(root, shipped=None)
    assert store.versions("det") == versions
    assert all(err is None for _, err in store.verify_all())  # none half-written
    assert not any((root / ".staging").iterdir())
    manifests = [json.loads((root / "det" / str(v) / "manifest.json").read_text()) for v in versions]
    assert all(m["version"] == v for m, v in zip(manifests, versions, strict=True))


def test_stale_staging_folders_are_swept_when_the_store_opens(tmp_path: Path) -> None:
    """A publish killed midway leaves `.staging/<id>`; the next open removes it once an hour old and unlocked."""
    root = tmp_path / "root"
    staging = root / ".staging"
    hour_ago = time.time() - 3700

    def leftover(name: str, *, old: bool) -> Path:
        d = staging / name
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "model.onnx").write_bytes(b"half written")
        if old:
            os.utime(d, (hour_ago, hour_ago))
        return d

    killed = leftover("killed", old=True)
    recent = leftover("recent", old=False)
    busy = leftover("busy", old=True)  # old, but a live publish still holds its lock
    orphan_lock = staging / "gone.lock"
    orphan_lock.touch()
    os.utime(orphan_lock, (hour_ago, hour_ago))
    with open(staging / "busy.lock", "a+b") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        os.utime(staging / "busy.lock", (hour_ago, hour_ago))
        store = ModelStore(root, shipped=None)
        assert not killed.exists() and not orphan_lock.exists()
        assert recent.exists() and busy.exists()
    ModelStore(root, shipped=None)  # the lock is free now
    assert not busy.exists() and recent.exists()
    store.publish(DRAFT, {"model.onnx": _file(tmp_path, b"x")})  # publishing still works, and cleans up after itself
    assert sorted(p.name for p in staging.iterdir()) == ["recent"]
