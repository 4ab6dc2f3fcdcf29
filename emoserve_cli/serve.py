"""`emoserve serve`: run the REST service under uvicorn."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from emoserve_cli.common import handle_errors, load_settings
from service.pipeline.decode import fence_opencv
from service.settings import Settings


def grace_period(settings: Settings) -> int:
    """Seconds uvicorn waits for in-flight requests on SIGTERM: long enough for any request to finish
    its upload and its analysis, or time out by itself (a request cut by the shutdown would answer 500)."""
    return math.ceil(settings.shutdown_grace_s or settings.body_timeout_s + settings.request_timeout_s + 5.0)


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default EMOSERVE_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default EMOSERVE_PORT)")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default EMOSERVE_WORKERS)")] = None,
) -> None:
    """Serve the REST API (and /metrics, /healthz, /readyz)."""
    import uvicorn

    settings = load_settings(host=host, port=port, workers=workers)
    fence_opencv(settings.max_image_pixels)  # before uvicorn imports the app, and the app OpenCV
    os.environ.update({"EMOSERVE_HOST": settings.host, "EMOSERVE_PORT": str(settings.port)})
    metrics_dir = None
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # several processes: prometheus-client aggregates their metrics through files in one folder
        metrics_dir = Path(tempfile.mkdtemp(prefix="emoserve-metrics-"))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    try:
        uvicorn.run(
            "service.api.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=settings.log_level.lower(),
            ws_per_message_deflate=False,
            timeout_graceful_shutdown=grace_period(settings),
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def register(app: typer.Typer) -> None:
    app.command("serve")(handle_errors(serve))
