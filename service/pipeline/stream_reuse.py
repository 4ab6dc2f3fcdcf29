"""Work reused across the frames of one stream: faces are followed cheaply between detections, and
an emotion is classified again only when its face has changed enough or has grown too old.

Per processed frame:
- **Detection** runs when the stream has no faces, every `detect_every` processed frames, whenever
  following fails, (with `classify_detected`) whenever a face is to be classified again: a classified
  crop is then the one full analysis makes from the same frame, not one aligned on followed landmarks,
  and (with `confirm_changes`) whenever a face's last label was unclear.
  In between, each face's five landmarks and box corners are followed with pyramidal Lucas-Kanade
  optical flow (OpenCV) on grey copies of the frames whose longer side is at most `FLOW_SIDE` px (a
  stream keeps one, only when the next frame may follow its faces); a point lost, or one whose backward
  flow misses its start by more than `FLOW_MAX_ERROR_PX`, hands the frame to the detector. A face whose
  short side is under `follow_min_size` px in that grey copy is not followed: its frame is detected (a 20
  px face of a 1080p frame is 7 px there, too few for flow to hold its box to the detector's).
- **Confirmation** (`confirm_changes`): when a followed face, classified again, gets another label than
  it had, or an unclear one (top two probabilities closer than `margin`), the frame is detected and its
  detected crops classified instead, so a label change or a near tie never rests on followed landmarks
  (a landmark moved by a pixel flips a near tie). A face whose label was unclear has its next frame
  detected at once. The detector runs only where labels change or hesitate.
- **Classification** of a face is skipped when it continues a face of the previous frame (followed,
  or matched by IoU after a detection), its emotion is younger than `reclassify_every` frames and
  `max_age_ms`, it was clear (top probability ahead of the second by at least `margin`: a face near
  a decision boundary flips on the slightest change, so it is classified every frame), and its
  aligned crop differs from the one that was classified by less than `change` in every cell of a
  4x4 grid (mean absolute difference of 32x32 grey thumbnails, 0-255: a mouth opening is a local
  change that a whole-crop mean would dilute). The previous probabilities are used.

The REST path never comes here: `Pipeline.analyze` is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment  # at import: loading it takes ~0.5 s, never on a frame

from service.pipeline.detectors import DetectedFace
from service.pipeline.tracking import iou_matrix

FLOW_SIDE = 640
FLOW_MAX_ERROR_PX = 2.0
THUMB = 32
GRID = 4


@dataclass(frozen=True)
class ReusePolicy:
    """When to detect and classify again (see the module docstring); `enabled=False` analyses every
    frame in full (`Pipeline.analyze`)."""

    enabled: bool = True
    detect_every: int = 5
    reclassify_every: int = 15
    max_age_ms: float = 1000.0
    change: float = 10.0
    margin: float = 0.3
    classify_detected: bool = False
    confirm_changes: bool = False
    follow_min_size: float = 20.0


@dataclass
class TrackedFace:
    """A face of the last processed frame and the classification it rests on."""

    face: DetectedFace
    thumb: np.ndarray | None = None  # of the crop that was classified
    probs: np.ndarray | None = None
    classified_at: float = 0.0
    age: int = 0  # processed frames since it was classified
    cam: np.ndarray | None = None  # its class activation maps (labels, h, w), when the model gives them


@dataclass
class FaceReuse:
    """What one face's emotion rests on: classified in this frame or not, and its age in frames."""

    classified: bool
    age: int


@dataclass
class StreamState:
    """What one stream carries from frame to frame."""

    faces: list[TrackedFace] = field(default_factory=list)
    grey: np.ndarray | None = None  # the last frame, grey at flow scale, kept when the next frame may follow
    since_detect: int = 0
    owner: object | None = None  # the pipeline whose classifier made `probs`

    def reset(self) -> None:
        self.faces, self.grey, self.since_detect = [], None, 0


def grey_for_flow(bgr: np.ndarray) -> tuple[np.ndarray, float]:
    """The frame in grey at most FLOW_SIDE px wide, and its scale against the frame."""
    import cv2

    h, w = bgr.shape[:2]
    scale = flow_scale(h, w)
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)  # first: one channel to resize, not three
    return (
        grey if scale == 1.0 else cv2.resize(grey, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    ), scale


def _points(face: DetectedFace) -> np.ndarray:
    x1, y1, x2, y2 = face.box
    corners = np.array([[x1, y1], [x2, y2]], np.float32)
    if face.landmarks is None:
        return np.vstack([corners, [[(x1 + x2) / 2, (y1 + y2) / 2]]]).astype(np.float32)
    return np.vstack([np.asarray(face.landmarks, np.float32).reshape(5, 2), corners])


def flow_scale(height: int, width: int) -> float:
    """The scale of the grey copy optical flow runs on (`grey_for_flow`) against an image of this size."""
    return min(1.0, FLOW_SIDE / max(height, width))


def followable(policy: ReusePolicy, face: DetectedFace, scale: float) -> bool:
    """Whether optical flow may follow `face` (in pixels that `scale` maps to the flow copy's): its short
    side there is at least `follow_min_size` px."""
    x1, y1, x2, y2 = face.box
    return min(x2 - x1, y2 - y1) * scale >= policy.follow_min_size


def follow(prev: np.ndarray, grey: np.ndarray, scale: float, faces: list[DetectedFace]) -> list[DetectedFace] | None:
    """The faces moved by optical flow from `prev` to `grey`, or None when any point is lost."""
    import cv2

    if not faces:
        return []
    pts = [_points(f) for f in faces]
    p0 = (np.vstack(pts) * scale).reshape(-1, 1, 2).astype(np.float32)
    p1, ok1, _ = cv2.calcOpticalFlowPyrLK(prev, grey, p0, p0.copy(), winSize=(21, 21), maxLevel=3)
    back, ok2, _ = cv2.calcOpticalFlowPyrLK(grey, prev, p1, p1.copy(), winSize=(21, 21), maxLevel=3)
    if p1 is None or back is None or not (ok1.all() and ok2.all()):
        return None
    if float(np.abs(back - p0).reshape(-1, 2).max()) > FLOW_MAX_ERROR_PX:
        return None
    moved = (p1.reshape(-1, 2) / scale).astype(np.float32)
    out, i = [], 0
    for face, p in zip(faces, pts, strict=True):
        q = moved[i : i + len(p)]
        i += len(p)
        # the box follows the points' centre and spread (a face walking towards the camera grows)
        c0, c1 = p.mean(axis=0), q.mean(axis=0)
        grow = float(np.sqrt(((q - c1) ** 2).sum() / max(((p - c0) ** 2).sum(), 1e-6)))
        box = np.asarray(face.box, np.float32).reshape(2, 2)
        x1, y1, x2, y2 = (float(v) for v in ((box - c0) * grow + c1).ravel())
        marks = q[:5] if face.landmarks is not None else None
        out.append(DetectedFace((x1, y1, x2, y2), face.score, marks))
    return out


def thumbnail(crop_bgr: np.ndarray) -> np.ndarray:
    """A 32x32 grey float32 thumbnail of an aligned crop, for change detection."""
    import cv2

    grey = cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2GRAY)
    return cv2.resize(grey, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32)


def match_previous(state: StreamState, faces: list[DetectedFace]) -> list[TrackedFace | None]:
    """For each new face, the face of the last frame it continues (IoU >= 0.3, best first), or None."""
    if not state.faces or not faces:
        return [None] * len(faces)
    iou = iou_matrix([f.box for f in faces], [t.face.box for t in state.faces])
    rows, cols = linear_sum_assignment(-iou)
    out: list[TrackedFace | None] = [None] * len(faces)
    for r, c in zip(rows, cols, strict=True):
        if iou[r, c] >= 0.3:
            out[r] = state.faces[c]
    return out


def change(a: np.ndarray, b: np.ndarray) -> float:
    """The largest mean absolute difference of two thumbnails over the cells of a GRID x GRID grid."""
    cell = THUMB // GRID
    return float(np.abs(a - b).reshape(GRID, cell, GRID, cell).mean(axis=(1, 3)).max())


def lead(probs: np.ndarray) -> float:
    """How far the top probability is ahead of the second."""
    top2 = np.sort(probs)[-2:]
    return float(top2[1] - top2[0])


def clear(policy: ReusePolicy, face: TrackedFace) -> bool:
    """Whether the face's emotion was clear: top probability ahead of the second by at least `margin`."""
    return face.probs is not None and lead(face.probs) >= policy.margin


def stale(policy: ReusePolicy, before: TrackedFace | None, now: float) -> bool:
    """Whether a face's emotion must be classified again whatever its crop: it continues no face, or its
    emotion is too old, or it was unclear (`clear`)."""
    if before is None or before.probs is None or before.thumb is None:
        return True
    if before.age + 1 >= policy.reclassify_every or (now - before.classified_at) * 1000.0 >= policy.max_age_ms:
        return True
    return not clear(policy, before)


def unconfirmed(
    policy: ReusePolicy, fresh: list[np.ndarray | None], before: list[TrackedFace | None], probs: np.ndarray
) -> bool:
    """Whether a face classified now (`fresh`, in the order of `probs`' rows) is unclear (`margin`) or continues
    a face whose label was another one: what `confirm_changes` confirms on the detected crop."""
    k = 0
    for thumb, prev in zip(fresh, before, strict=True):
        if thumb is None:
            continue
        if lead(probs[k]) < policy.margin:
            return True
        if prev is not None and prev.probs is not None and int(np.argmax(probs[k])) != int(np.argmax(prev.probs)):
            return True
        k += 1
    return False


def needs_classifying(policy: ReusePolicy, before: TrackedFace | None, thumb: np.ndarray, now: float) -> bool:
    if stale(policy, before, now):
        return True
    assert before is not None and before.thumb is not None
    return change(thumb, before.thumb) >= policy.change
