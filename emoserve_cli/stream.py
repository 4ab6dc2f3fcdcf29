"""`emoserve stream SOURCE`: stream a video file, an image folder or a camera through `WS /v1/stream`.

Frames are sent at the source's frame rate (`--max`: as fast as possible); the console shows live
fps, latency p50/p95 and drops; `--out` writes the annotated video, `--csv` one row per frame and
track with the emotions.
"""

from __future__ import annotations

import asyncio
import csv
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from emoserve_cli.common import err_console, fail, handle_errors

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def open_source(source: str, fps: float | None) -> tuple[Iterator[Any], float]:
    """(BGR frames, frame rate) for a camera index, an image folder or a video file."""
    import cv2

    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            fail(f"no images in {path}", 2)
        return (img for p in files if (img := cv2.imread(str(p))) is not None), fps or 10.0
    cap = cv2.VideoCapture(int(source)) if source.isdigit() else cv2.VideoCapture(str(path))
    if not cap.isOpened():
        fail(f"cannot open {source!r} as a video file, image folder or camera index", 2)
    rate = fps or cap.get(cv2.CAP_PROP_FPS) or 30.0

    def frames() -> Iterator[Any]:
        try:
            while True:
                ok, img = cap.read()
                if not ok:
                    return
                yield img
        finally:
            cap.release()

    return frames(), rate


class Stats:
    """Rolling fps, latency percentiles and drop counts for the live display."""

    def __init__(self) -> None:
        self.latencies: deque[float] = deque(maxlen=300)
        self.arrivals: deque[float] = deque(maxlen=120)
        self.results = 0
        self.dropped = 0

    def add(self, latency_ms: float, dropped: int) -> None:
        self.latencies.append(latency_ms)
        self.arrivals.append(time.perf_counter())
        self.results += 1
        self.dropped += dropped

    def fps(self) -> float:
        a = self.arrivals
        return (len(a) - 1) / (a[-1] - a[0]) if len(a) > 1 and a[-1] > a[0] else 0.0

    def pct(self, q: float) -> float:
        import numpy as np

        return float(np.percentile(list(self.latencies), q)) if self.latencies else 0.0

    def line(self) -> str:
        return (
            f"results {self.results}  fps {self.fps():5.1f}  latency p50 {self.pct(50):6.1f} ms"
            f"  p95 {self.pct(95):6.1f} ms  dropped {self.dropped}"
        )


def _draw(img: Any, result: Any) -> Any:
    import cv2

    from service.pipeline.annotate import draw

    out = draw(img, result.model_dump(mode="json") if result is not None else {"faces": []})
    for face in result.faces if result is not None else []:
        if face.track_id is not None:
            cv2.putText(
                out,
                f"#{face.track_id}",
                (round(face.box.x1), round(face.box.y2) - 4),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.5,
                (255, 255, 255),
                1,
                cv2.LINE_AA,
            )
    return out


class Outputs:
    """Writes the annotated video (every source frame, with the latest result) and the CSV."""

    def __init__(self, out: Path | None, csv_path: Path | None, fps: float) -> None:
        self.out, self.fps = out, fps
        self.writer: Any = None
        self.pending: deque[tuple[int, Any]] = deque()
        self.last: Any = None
        self.csv_file: IO[str] | None = open(csv_path, "w", newline="") if csv_path else None  # noqa: SIM115
        self.csv: Any = csv.writer(self.csv_file) if self.csv_file else None
        self.header = False

    def frame(self, index: int, img: Any) -> None:
        if self.out is not None:
            self.pending.append((index, img))
            while len(self.pending) > 300:  # never buffer without bound
                self._write(*self.pending.popleft(), self.last)

    def result(self, result: Any) -> None:
        if self.csv is not None:
            self._csv(result)
        while self.pending and isinstance(result.frame_id, int) and self.pending[0][0] <= result.frame_id:
            index, img = self.pending.popleft()
            self._write(index, img, result if index == result.frame_id else self.last)
        self.last = result

    def _csv(self, result: Any) -> None:
        for face in result.faces:
            labels = list(face.emotion.smoothed_scores)
            if not self.header:
                self.csv.writerow(["frame", "ts", "track_id", "x1", "y1", "x2", "y2", "label", "confidence", *labels])
                self.header = True
            b = face.box
            self.csv.writerow(
                [
                    result.frame_id,
                    result.ts,
                    face.track_id,
                    b.x1,
                    b.y1,
                    b.x2,
                    b.y2,
                    face.emotion.label,
                    round(face.emotion.confidence, 4),
                    *(round(face.emotion.smoothed_scores[k], 4) for k in labels),
                ]
            )

    def _write(self, index: int, img: Any, result: Any) -> None:
        import cv2

        if self.writer is None:
            h, w = img.shape[:2]
            self.writer = cv2.VideoWriter(str(self.out), cv2.VideoWriter.fourcc(*"mp4v"), self.fps, (w, h))
        self.writer.write(_draw(img, result))

    def close(self) -> None:
        while self.pending:
            self._write(*self.pending.popleft(), self.last)
        if self.writer is not None:
            self.writer.release()
        if self.csv_file is not None:
            self.csv_file.close()


async def _run(
    source: str,
    url: str,
    api_key: str | None,
    fps: float | None,
    fast: bool,
    outputs_args: dict[str, Any],
    config: dict[str, Any],
    sending: dict[str, Any],
) -> Stats:
    from emoserve_client.streaming import astream
    from rich.live import Live

    frames, rate = open_source(source, fps)
    outputs = Outputs(outputs_args["out"], outputs_args["csv"], rate)
    stats = Stats()
    sent: dict[int, float] = {}

    def tap() -> Iterator[Any]:
        for i, img in enumerate(frames):
            outputs.frame(i, img)
            sent[i] = time.perf_counter()
            yield img

    errors: list[Any] = []
    try:
        with Live(stats.line(), console=err_console, refresh_per_second=4, transient=False) as live:
            async for result in astream(
                url,
                tap(),
                api_key=api_key,
                config=config,
                fps=None if fast else rate,
                on_error=errors.append,
                **sending,
            ):
                rtt = (
                    time.perf_counter() - sent.pop(result.frame_id, time.perf_counter())
                    if isinstance(result.frame_id, int)
                    else time.perf_counter()
                ) * 1000
                stats.add(rtt if isinstance(result.frame_id, int) else result.latency_ms, result.dropped_since_last)
                for key in [k for k in sent if isinstance(result.frame_id, int) and k < result.frame_id]:
                    del sent[key]
                outputs.result(result)
                live.update(stats.line())
    finally:
        outputs.close()
    if errors:
        err_console.print(f"{len(errors)} frame(s) rejected, first: {errors[0].code}: {errors[0].message}")
    return stats


def stream(
    source: Annotated[str, typer.Argument(help="Video file, image folder or camera index (0, 1, ...)")],
    url: Annotated[str, typer.Option(help="The service's base URL")] = "http://127.0.0.1:8000",
    fast: Annotated[
        bool, typer.Option("--max", help="Send as fast as possible instead of at the source's fps")
    ] = False,
    fps: Annotated[float | None, typer.Option(help="Override the source's frame rate (image folders: 10)")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the annotated video here (mp4v)")] = None,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Write per-frame, per-track emotions here")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="EMOSERVE_API_KEY", help="API key")] = None,
    smoothing: Annotated[float, typer.Option(help="EMA factor of the emotion scores (0 = off)")] = 0.6,
    max_faces: Annotated[int | None, typer.Option(help="Most faces per frame")] = None,
    threshold: Annotated[float | None, typer.Option(help="Face score threshold")] = None,
    track: Annotated[bool, typer.Option(help="Track faces (stable track ids)")] = True,
    send_size: Annotated[
        int | None,
        typer.Option(
            help="Downscale frames to this longest side before sending (default: the server's analysis "
            "size from its hello; 0: send full frames)",
            min=0,
        ),
    ] = None,
    quality: Annotated[int, typer.Option(help="JPEG quality of the frames sent", min=1, max=100)] = 80,
) -> None:
    """Stream a video, an image folder or a camera to a running service; show fps, latency and drops."""
    from emoserve_client.errors import StreamClosed

    config = {"smoothing": smoothing, "max_faces": max_faces, "threshold": threshold, "track": track}
    try:
        sending = {"max_side": send_size, "quality": quality}
        stats = asyncio.run(_run(source, url, api_key, fps, fast, {"out": out, "csv": csv_path}, config, sending))
    except StreamClosed as exc:
        fail(f"the server closed the stream: {exc}", 1 if exc.code in (1011, None) else 2)
    except OSError as exc:
        fail(f"cannot reach {url}: {exc}", 1)
    err_console.print(stats.line())
    if out:
        err_console.print(f"annotated video: {out}")
    if csv_path:
        err_console.print(f"emotions: {csv_path}")


def register(app: typer.Typer) -> None:
    app.command("stream")(handle_errors(stream))
