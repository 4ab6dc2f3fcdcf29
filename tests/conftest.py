"""Shared fixtures: the ../shared folder (skipped when absent), temporary stores, a real Redis."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from model_store import ModelStore
from model_store.catalog import CATALOG_PATH
from tests.api_server import redis_server

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EMOSERVE_SHARED_DIR", REPO.parent / "shared")).resolve()
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing answers, the connection is refused at once


def shared_path(*parts: str) -> Path:
    """A path under ../shared, skipping the test with a clear reason when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the ../shared data folder beside the checkout); it is absent here")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return shared_path()


@pytest.fixture()
def store(tmp_path: Path) -> ModelStore:
    """An empty writable store without the shipped layer."""
    return ModelStore(tmp_path / "store", shipped=None)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A real Redis (EMOSERVE_TEST_REDIS_URL, default db 15 on 127.0.0.1:6379); skipped when none answers."""
    import redis

    url = os.environ.get("EMOSERVE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        if os.environ.get("CI"):
            raise RuntimeError(f"CI must provide a Redis at {url}: {exc}") from exc
        pytest.skip(f"needs a Redis at {url} (set EMOSERVE_TEST_REDIS_URL): {exc}")
    return url


@pytest.fixture()
def private_redis_url() -> Iterator[str]:
    """A Redis server of this test's own (pub/sub channels are shared by every database of a server,
    so tests that publish on them must not use the shared one); skipped without `redis-server`."""

    if shutil.which("redis-server") is None:
        pytest.skip("needs the redis-server binary")
    with redis_server() as url:
        yield url


@pytest.fixture()
def offline_catalog(tmp_path: Path) -> Path:
    """The shipped catalog with every URL source pointed at an address that cannot be reached."""
    raw = yaml.safe_load(CATALOG_PATH.read_text(encoding="utf-8"))
    for entry in [*raw["models"].values(), *(raw.get("releases") or {}).values()]:
        for source in entry["sources"]:
            if source["type"] == "url":
                source["url"] = f"{UNREACHABLE}/{source['url'].rsplit('/', 1)[-1]}"
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path
