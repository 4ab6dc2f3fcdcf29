"""/docs and /redoc work without internet: every asset they reference is served by the app itself."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.settings import Settings

ASSET_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    # a detector that is not in the store: the docs need no model, and nothing heavy is loaded
    settings = Settings(
        model_root=tmp_path_factory.mktemp("root"), detector="no-such-detector@production", redis_url=None
    )
    with TestClient(create_app(settings)) as c:
        yield c


def referenced_urls(html: str) -> list[str]:
    """Every URL the page loads: src/href attributes and the quoted URLs of its inline script."""
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    urls += re.findall(r"""(?:url|oauth2RedirectUrl|spec-url)\s*[:=]\s*["']([^"']+)["']""", html)
    return sorted(set(urls))


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_page_loads_only_assets_of_the_app(client: TestClient, page: str) -> None:
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", html, re.I), "an off-host URL in the page"
    urls = referenced_urls(html)
    assert "/openapi.json" in urls
    assets = [u for u in urls if Path(u).suffix in (".js", ".css")]
    assert len(assets) == (2 if page == "/docs" else 1), urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        got = client.get(url)
        assert got.status_code == 200, url
        suffix = Path(url).suffix
        if suffix in ASSET_TYPES:
            assert ASSET_TYPES[suffix] in got.headers["content-type"], (url, got.headers["content-type"])
    if page == "/docs":
        assert '"validatorUrl": null' in html, "Swagger UI would fetch a badge from the online validator"
        assert client.get("/docs/oauth2-redirect").status_code == 200


def test_swagger_bundle_is_swagger_ui_5(client: TestClient) -> None:
    """OpenAPI 3.1 (what FastAPI writes) needs Swagger UI 5; version 4 refuses to render it."""
    bundle = client.get("/docs-assets/swagger-ui-bundle.js").text
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
    assert re.search(r'"5\.\d+\.\d+"', bundle) and len(bundle) > 500_000
