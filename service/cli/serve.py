"""`emoserve serve`: run the REST service under uvicorn."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from service.cli.common import handle_errors, load_settings


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default EMOSERVE_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default EMOSERVE_PORT)")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default EMOSERVE_WORKERS)")] = None,
) -> None:
    """Serve the REST API (and /metrics, /healthz, /readyz)."""
    import uvicorn

    settings = load_settings(host=host, port=port, workers=workers)
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
            timeout_graceful_shutdown=10,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def register(app: typer.Typer) -> None:
    app.command("serve")(handle_errors(serve))
