"""Draw an analysis onto its image: boxes, landmarks, the top label and a small score bar per emotion,
and each face's heat map when the analysis has explanations.

`layout` (pure) decides where captions and score panels go so that none covers another face.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.pipeline.decode import decode_image
from service.pipeline.explain import paint
from service.pipeline.schema import AnalysisResult

# BGR colours per common emotion label; other labels get grey
COLOURS: dict[str, tuple[int, int, int]] = {
    "angry": (40, 40, 220),
    "anger": (40, 40, 220),
    "disgust": (40, 140, 60),
    "fear": (160, 60, 160),
    "happy": (40, 200, 250),
    "happiness": (40, 200, 250),
    "neutral": (200, 200, 200),
    "sad": (200, 120, 40),
    "sadness": (200, 120, 40),
    "surprise": (40, 160, 250),
    "contempt": (120, 120, 40),
}


def _colour(label: str) -> tuple[int, int, int]:
    return COLOURS.get(label.lower(), (180, 180, 180))


@dataclass(frozen=True)
class Rect:
    """A pixel rectangle, x2 and y2 exclusive."""

    x1: int
    y1: int
    x2: int
    y2: int

    @property
    def width(self) -> int:
        return self.x2 - self.x1

    @property
    def height(self) -> int:
        return self.y2 - self.y1

    def intersects(self, other: Rect) -> bool:
        return self.x1 < other.x2 and other.x1 < self.x2 and self.y1 < other.y2 and other.y1 < self.y2

    def inside(self, width: int, height: int) -> bool:
        return self.x1 >= 0 and self.y1 >= 0 and self.x2 <= width and self.y2 <= height


@dataclass(frozen=True)
class FaceLayout:
    """Where one face's caption and score panel go (None: no room without covering another face)."""

    box: Rect
    caption: str | None
    caption_rect: Rect | None
    font_scale: float
    thickness: int
    panel: Rect | None
    row_height: int  # one score bar and its gap
    bar_width: int
    tags: bool  # 3-letter label tags beside the bars (a compact panel has none)


@dataclass(frozen=True)
class FaceInfo:
    """What the layout needs of a face: its box, top label, confidence and how many scores it has."""

    box: Rect
    label: str
    confidence: float
    n_scores: int


_FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX
_TAG_FONT = 1  # cv2.FONT_HERSHEY_PLAIN
_PAD = 2


def _text_size(text: str, font: int, scale: float, thickness: int) -> tuple[int, int]:
    import cv2

    (tw, th), baseline = cv2.getTextSize(text, font, scale, thickness)
    return int(tw), int(th + baseline)


def _font_for(face: Rect) -> tuple[float, int]:
    """A caption font that scales with the face: its text about a sixth of the face's width tall, 9-26 px."""
    target_px = min(26.0, max(9.0, face.width / 6))
    scale = target_px / 22.0  # HERSHEY_SIMPLEX at scale 1 is about 22 px tall
    return scale, max(1, round(scale * 1.6))


def _spots(box: Rect, w: int, h: int, gap: int, reserved_above: int = 0) -> list[tuple[int, int]]:
    """Top-left corners for a w x h rectangle around `box`: below, above, right, left, then inside its top."""
    below, above = box.y2 + gap, box.y1 - gap - h - reserved_above
    right, left = box.x2 + gap, box.x1 - gap - w
    return [
        (box.x1, below),
        (box.x2 - w, below),
        (box.x1, above),
        (box.x2 - w, above),
        (right, box.y1),
        (right, box.y2 - h),
        (left, box.y1),
        (left, box.y2 - h),
    ]


def _fits(rect: Rect, image: tuple[int, int], blocked: list[Rect]) -> bool:
    return rect.inside(*image) and not any(rect.intersects(b) for b in blocked)


def _clamp_x(x: int, w: int, image_w: int) -> int:
    return min(max(0, x), max(0, image_w - w))


def layout(image_size: tuple[int, int], faces: list[FaceInfo]) -> list[FaceLayout]:
    """Place each face's caption and score panel so that none covers another face's box.

    Pure: (width, height) and the faces in, rectangles out (in the order of `faces`). Sizes follow the
    face; larger faces are placed first. A caption tries "label 95%", then "lab 95%", above the box,
    below it or inside its top edge; a panel (one bar per score, with tags) tries below, above, right
    and left, then a compact panel (narrower, no tags), then none. Captions and panels also avoid each
    other and stay inside the image.
    """
    width, height = image_size
    order = sorted(range(len(faces)), key=lambda i: -faces[i].box.width * faces[i].box.height)
    boxes = [f.box for f in faces]
    placed: dict[int, list[Rect]] = {i: [] for i in range(len(faces))}

    def blocked_for(i: int) -> list[Rect]:
        others = [b for j, b in enumerate(boxes) if j != i]
        return others + [r for j, rects in placed.items() if j != i for r in rects] + placed[i]

    captions: dict[int, tuple[str | None, Rect | None, float, int]] = {}
    for i in order:  # captions first: they matter more than panels
        face = faces[i]
        scale, thick = _font_for(face.box)
        captions[i] = (None, None, scale, thick)
        for text in (f"{face.label} {face.confidence:.0%}", f"{face.label[:3]} {face.confidence:.0%}"):
            tw, th = _text_size(text, _FONT, scale, thick)
            w, h = tw + 2 * _PAD, th + 2 * _PAD
            b = face.box
            outside = [(b.x1, b.y1 - h), (b.x2 - w, b.y1 - h), (b.x1, b.y2), (b.x2 - w, b.y2)]
            candidates = [(x, y, [*blocked_for(i), b]) for x, y in outside]  # off its own face...
            candidates.append((b.x1, b.y1, blocked_for(i)))  # ...or, last, inside the box's top edge
            rect = next(
                (
                    r
                    for x, y, blocked in candidates
                    for r in [Rect(_clamp_x(x, w, width), y, _clamp_x(x, w, width) + w, y + h)]
                    if _fits(r, (width, height), blocked)
                ),
                None,
            )
            if rect is not None:
                captions[i] = (text, rect, scale, thick)
                placed[i].append(rect)
                break

    out: dict[int, FaceLayout] = {}
    for i in order:
        face = faces[i]
        caption, caption_rect, scale, thick = captions[i]
        row = min(14, max(4, round(face.box.height * 0.07)))
        panel: Rect | None = None
        bar_w, tags = 0, False
        for bar_w, tags in ((max(30, face.box.width), True), (max(20, face.box.width // 2), False)):
            tag_w = _text_size("sur", _TAG_FONT, row / 13, 1)[0] + _PAD if tags else 0
            w, h = bar_w + tag_w, face.n_scores * row
            for x, y in _spots(face.box, w, h, gap=_PAD):
                r = Rect(_clamp_x(x, w, width), y, _clamp_x(x, w, width) + w, y + h)
                if _fits(r, (width, height), [*blocked_for(i), face.box]):
                    panel = r
                    break
            if panel is not None:
                placed[i].append(panel)
                break
        out[i] = FaceLayout(face.box, caption, caption_rect, scale, thick, panel, row, bar_w, tags)
    return [out[i] for i in range(len(faces))]


def draw(image_bgr: np.ndarray, result: AnalysisResult | Mapping[str, Any]) -> np.ndarray:
    """A copy of the image with every face of `result` (the model or its JSON dict) drawn on it."""
    import cv2

    body = result.model_dump(mode="json") if isinstance(result, AnalysisResult) else dict(result)
    out = image_bgr.copy()
    h, w = out.shape[:2]
    faces = body.get("faces", [])
    infos = [
        FaceInfo(
            Rect(*(round(f["box"][k]) for k in ("x1", "y1", "x2", "y2"))),
            f["emotion"]["label"],
            float(f["emotion"]["confidence"]),
            len(f["emotion"]["scores"]),
        )
        for f in faces
    ]
    for face in faces:  # the heat maps first, under the boxes and labels
        if face.get("explanation"):
            paint(out, np.asarray(face["explanation"]["grid"]), np.asarray(face["explanation"]["affine"]))
    for face, place in zip(faces, layout((w, h), infos), strict=True):
        emotion = face["emotion"]
        colour = _colour(emotion["label"])
        b = place.box
        line = max(1, round(b.width / 60))
        cv2.rectangle(out, (b.x1, b.y1), (b.x2, b.y2), colour, line)
        for x, y in face.get("landmarks") or []:
            cv2.circle(out, (round(x), round(y)), line + 1, (0, 255, 0), -1)
        if place.caption and place.caption_rect:
            r = place.caption_rect
            cv2.rectangle(out, (r.x1, r.y1), (r.x2 - 1, r.y2 - 1), colour, -1)
            _, baseline = cv2.getTextSize(place.caption, _FONT, place.font_scale, place.thickness)
            origin = (r.x1 + _PAD, r.y2 - _PAD - baseline)
            cv2.putText(out, place.caption, origin, _FONT, place.font_scale, (0, 0, 0), place.thickness, cv2.LINE_AA)
        if place.panel is not None:
            _score_bars(out, emotion["scores"], place)
    return out


def _score_bars(out: np.ndarray, scores: Mapping[str, float], place: FaceLayout) -> None:
    """One bar per label in the panel, its length the probability, with a 3-letter tag unless compact."""
    import cv2

    assert place.panel is not None
    x, row = place.panel.x1, place.row_height
    bar_h = max(2, row - max(1, row // 4))
    for i, (label, p) in enumerate(scores.items()):
        top = place.panel.y1 + i * row
        cv2.rectangle(out, (x, top), (x + place.bar_width - 1, top + bar_h - 1), (60, 60, 60), -1)
        filled = round(place.bar_width * float(p))
        if filled > 0:
            cv2.rectangle(out, (x, top), (x + filled - 1, top + bar_h - 1), _colour(label), -1)
        if place.tags:
            cv2.putText(
                out,
                label[:3],
                (x + place.bar_width + _PAD, top + bar_h),
                _TAG_FONT,
                row / 13,
                (255, 255, 255),
                1,
                cv2.LINE_AA,
            )


def annotate_jpeg(
    image: bytes | np.ndarray,
    result: AnalysisResult | Mapping[str, Any],
    quality: int = 90,
    max_pixels: int = 40_000_000,
) -> bytes:
    """Encoded image bytes (or a BGR array) + its analysis -> the annotated JPEG bytes."""
    import cv2

    bgr = image if isinstance(image, np.ndarray) else decode_image(image, max_pixels)
    ok, buf = cv2.imencode(".jpg", draw(bgr, result), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return bytes(buf.tobytes())
