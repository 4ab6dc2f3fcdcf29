"""Draw an analysis onto its image: boxes, landmarks, the top label and a small score bar per emotion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from service.pipeline.decode import decode_image
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


def draw(image_bgr: np.ndarray, result: AnalysisResult | Mapping[str, Any]) -> np.ndarray:
    """A copy of the image with every face of `result` (the model or its JSON dict) drawn on it."""
    import cv2

    body = result.model_dump(mode="json") if isinstance(result, AnalysisResult) else dict(result)
    out = image_bgr.copy()
    h, w = out.shape[:2]
    unit = max(1, round(max(h, w) / 640))
    font = cv2.FONT_HERSHEY_SIMPLEX
    for face in body.get("faces", []):
        b = face["box"]
        x1, y1, x2, y2 = (round(b[k]) for k in ("x1", "y1", "x2", "y2"))
        emotion = face["emotion"]
        colour = _colour(emotion["label"])
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, 2 * unit)
        for x, y in face.get("landmarks") or []:
            cv2.circle(out, (round(x), round(y)), unit + 1, (0, 255, 0), -1)
        caption = f"{emotion['label']} {emotion['confidence']:.0%}"
        scale = 0.5 * unit
        (tw, th), _ = cv2.getTextSize(caption, font, scale, unit)
        top = max(th + 4, y1)
        cv2.rectangle(out, (x1, top - th - 4), (x1 + tw + 4, top), colour, -1)
        cv2.putText(out, caption, (x1 + 2, top - 3), font, scale, (0, 0, 0), unit, cv2.LINE_AA)
        _score_bars(out, emotion["scores"], x1, y2 + 2 * unit, max(40, x2 - x1), unit)
    return out


def _score_bars(out: np.ndarray, scores: Mapping[str, float], x: int, y: int, width: int, unit: int) -> None:
    """One thin bar per label under the box, its length the probability, with a 3-letter tag."""
    import cv2

    bar_h = 4 * unit
    for i, (label, p) in enumerate(scores.items()):
        top = y + i * (bar_h + unit)
        if top + bar_h >= out.shape[0]:
            break
        cv2.rectangle(out, (x, top), (x + width, top + bar_h), (60, 60, 60), -1)
        cv2.rectangle(out, (x, top), (x + round(width * float(p)), top + bar_h), _colour(label), -1)
        cv2.putText(
            out,
            label[:3],
            (x + width + 2, top + bar_h),
            cv2.FONT_HERSHEY_PLAIN,
            0.6 * unit,
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
