"""`/docs` (Swagger UI) and `/redoc` with every asset served by the app itself, so they work air-gapped.

The JavaScript, CSS and favicon come from the pinned `fastapi-offline` wheel (a base dependency), which
carries Swagger UI 5 and ReDoc 2 as plain files; only those files are used, the pages are FastAPI's own.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"


def assets_dir() -> Path:
    """The folder holding swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js and favicon.png."""
    return Path(str(files("fastapi_offline") / "static"))


def install(app: FastAPI) -> None:
    """Add `/docs`, its OAuth2 redirect page, `/redoc` and the assets they load (create the app with docs_url=None)."""
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")

    def prefix(request: Request) -> str:
        return str(request.scope.get("root_path", "")) + ASSETS_URL

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = str(request.scope.get("root_path", ""))
        return get_swagger_ui_html(
            openapi_url=root + str(app.openapi_url),
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=root + OAUTH2_REDIRECT_URL,
            swagger_js_url=f"{prefix(request)}/swagger-ui-bundle.js",
            swagger_css_url=f"{prefix(request)}/swagger-ui.css",
            swagger_favicon_url=f"{prefix(request)}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=str(request.scope.get("root_path", "")) + str(app.openapi_url),
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{prefix(request)}/redoc.standalone.js",
            redoc_favicon_url=f"{prefix(request)}/favicon.png",
            with_google_fonts=False,
        )
