"""`emoserve predict IMAGE...`: faces and emotions of image files, as a table, JSON or an annotated image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from emoserve_cli.common import handle_errors, load_settings, open_store, out_console


def _annotated_path(out: Path, image: Path, several: bool) -> Path:
    return out.with_name(f"{out.stem}_{image.stem}{out.suffix or '.jpg'}") if several else out


@handle_errors
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files.", exists=True, dir_okay=False, readable=True)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the analysis JSON (a list for several images).")] = (
        False
    ),
    annotate: Annotated[
        Path | None, typer.Option("--annotate", help="Write the annotated image here (OUT_<image>.jpg for several).")
    ] = None,
    detector: Annotated[str | None, typer.Option("--detector", help="NAME@ALIAS or NAME@VERSION.")] = None,
    classifier: Annotated[str | None, typer.Option("--classifier", help="NAME@ALIAS or NAME@VERSION.")] = None,
    max_faces: Annotated[int | None, typer.Option("--max-faces", help="Most faces per image.")] = None,
    threshold: Annotated[float | None, typer.Option("--threshold", help="Face score threshold.")] = None,
    explain: Annotated[
        bool, typer.Option("--explain", help="A heat map per face: in the JSON, and drawn with --annotate.")
    ] = False,
) -> None:
    """Find every face in the images and classify its emotion."""
    from service.pipeline.analyze import Pipeline
    from service.pipeline.annotate import annotate_jpeg

    settings = load_settings(detector=detector, classifier=classifier)
    pipeline = Pipeline.load(settings, store=open_store(settings))
    options = {k: v for k, v in {"max_faces": max_faces, "threshold": threshold}.items() if v is not None}
    options["explain"] = explain
    results = []
    try:
        for image in images:
            data = image.read_bytes()
            result = pipeline.analyze_sync(data, options)
            results.append((image, result))
            if annotate is not None:
                target = _annotated_path(annotate, image, len(images) > 1)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(annotate_jpeg(data, result, max_pixels=settings.max_image_pixels))
                if not as_json:
                    out_console.print(f"annotated image written to {target}")
    finally:
        pipeline.close()
    if as_json:
        bodies = [r.model_dump(mode="json") for _, r in results]
        print(json.dumps(bodies[0] if len(bodies) == 1 else bodies, indent=2))
        return
    table = Table(title=f"{pipeline.classifier.name}@{pipeline.classifier.version} emotions")
    for column in ("file", "face", "box (x1, y1, x2, y2)", "label", "confidence"):
        table.add_column(column, justify="right" if column in ("face", "confidence") else "left")
    for image, result in results:
        if not result.faces:
            table.add_row(image.name, "-", "no face found", "-", "-")
        for i, face in enumerate(result.faces, 1):
            b = face.box
            table.add_row(
                image.name,
                str(i),
                f"{b.x1:.0f}, {b.y1:.0f}, {b.x2:.0f}, {b.y2:.0f}",
                face.emotion.label,
                f"{face.emotion.confidence:.1%}",
            )
    out_console.print(table)


def register(app: typer.Typer) -> None:
    """Add `emoserve predict` to the application."""
    app.command("predict")(predict)
