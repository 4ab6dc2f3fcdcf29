"""Stream reuse against full per-frame analysis on the shared clips: agreement and work saved.

    .venv/bin/python bench/bench_reuse.py [--clips woman2,walkway] [--frames 200]

Every frame of each clip goes through `Pipeline.analyze` (full: detect and classify every face) and,
separately, through `Pipeline.analyze_stream` with the default reuse policy. A face of the full
analysis agrees when the reuse path has a face with box IoU >= 0.7 and the same label. Prints a
table: agreement, detections and classifications run, and time per frame of each path (same run,
same process, default models).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.pipeline.analyze import Pipeline  # noqa: E402
from service.pipeline.schema import AnalysisResult  # noqa: E402
from service.pipeline.stream_reuse import ReusePolicy, StreamState  # noqa: E402
from service.pipeline.stream_schema import StreamSettings  # noqa: E402
from service.pipeline.tracking import iou_matrix  # noqa: E402
from service.settings import get_settings  # noqa: E402

CLIPS = {
    "woman2": REPO.parent / "shared" / "media" / "videos" / "woman2.mp4",
    "walkway": REPO.parent / "shared" / "media" / "videos" / "multiface" / "walkway_1080p.mp4",
}


@dataclass
class Row:
    clip: str
    frames: int = 0
    face_frames: int = 0
    agree: int = 0
    box_misses: int = 0  # faces of the full analysis with no box of IoU >= 0.7 in the reuse path
    classified: int = 0
    detections: int = 0
    full_s: float = 0.0
    reuse_s: float = 0.0


def frames_of(path: Path, limit: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out: list[np.ndarray] = []
    while len(out) < limit:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(frame)
    cap.release()
    return out


def agreement(full: AnalysisResult, reused: AnalysisResult) -> tuple[int, int]:
    """(faces of `full` matched in `reused` with IoU >= 0.7 and the same label, faces with no such box)."""
    if not full.faces or not reused.faces:
        return 0, len(full.faces)
    boxes = [[(f.box.x1, f.box.y1, f.box.x2, f.box.y2) for f in r.faces] for r in (full, reused)]
    iou = iou_matrix(boxes[0], boxes[1])
    agree = misses = 0
    for i, face in enumerate(full.faces):
        j = int(np.argmax(iou[i]))
        misses += iou[i, j] < 0.7
        agree += iou[i, j] >= 0.7 and reused.faces[j].emotion.label == face.emotion.label
    return agree, misses


async def run_clip(pipe: Pipeline, name: str, frames: list[np.ndarray], policy: ReusePolicy) -> Row:
    row = Row(name, len(frames))
    full = []
    start = time.perf_counter()
    for frame in frames:
        full.append(await pipe.analyze(frame))
    row.full_s = time.perf_counter() - start
    state = StreamState()
    start = time.perf_counter()
    reused = []
    for frame in frames:
        result, how = await pipe.analyze_stream(frame, None, state, policy)
        row.detections += state.since_detect == 0
        row.classified += sum(h.classified for h in how)
        reused.append(result)
    row.reuse_s = time.perf_counter() - start
    for a, b in zip(full, reused, strict=True):
        row.face_frames += len(a.faces)
        agree, misses = agreement(a, b)
        row.agree += agree
        row.box_misses += misses
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", default="woman2,walkway")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--detect-every", type=int, default=None)
    ap.add_argument("--reclassify-every", type=int, default=None)
    ap.add_argument("--change", type=float, default=None)
    ap.add_argument("--classify-detected", action=argparse.BooleanOptionalAction, default=None,
                    help="detect every frame in which a face is classified again (default: the setting)")  # fmt: skip
    ap.add_argument("--confirm-changes", action=argparse.BooleanOptionalAction, default=None,
                    help="detect when a followed face's label changes (default: the setting)")  # fmt: skip
    args = ap.parse_args()
    s = get_settings()
    policy = StreamSettings(  # what a stream's `config` message would set, over the server's settings
        detect_every=args.detect_every,
        reclassify_every=args.reclassify_every,
        reuse_change=args.change,
        classify_detected=args.classify_detected,
        confirm_changes=args.confirm_changes,
    ).policy(s)
    pipe = Pipeline.load(s)

    async def run_all() -> list[Row]:
        try:
            return [await run_clip(pipe, n, frames_of(CLIPS[n], args.frames), policy) for n in args.clips.split(",")]
        finally:
            await pipe.aclose()

    rows = asyncio.run(run_all())
    table = Table(title=f"stream reuse vs full analysis ({policy})")
    for col in ("clip", "frames", "face-frames", "agreement", "box misses", "label misses", "detections",
                "classifications", "full ms/frame", "reuse ms/frame", "speed-up"):  # fmt: skip
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.clip,
            str(r.frames),
            str(r.face_frames),
            f"{r.agree / max(1, r.face_frames):.1%}",
            str(r.box_misses),
            str(r.face_frames - r.agree - r.box_misses),
            f"{r.detections} ({r.detections / max(1, r.frames):.0%})",
            f"{r.classified} ({r.classified / max(1, r.face_frames):.0%})",
            f"{r.full_s / r.frames * 1000:.1f}",
            f"{r.reuse_s / r.frames * 1000:.1f}",
            f"{r.full_s / r.reuse_s:.2f}x",
        )
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
