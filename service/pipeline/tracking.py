"""Multi-face tracking for streams: an IoU tracker with motion gating, Hungarian matching and
per-track smoothing.

Each track predicts where its face is now from its velocity (centre motion per processed frame)
and the frames it has missed. Detections are matched to the predictions by Hungarian assignment
(`scipy.optimize.linear_sum_assignment`): a pair whose IoU reaches `iou_threshold` costs `1 - IoU`;
a pair below it can still match, at a higher cost, when the face kept its size (side ratio at least
`min_size_ratio`) and its centre moved at most `gate` face sizes per frame elapsed, which is what
happens when the server drops frames and faces jump between processed ones. Unmatched detections
start new tracks (ids 1, 2, ... per tracker); a track that goes unmatched for more than
`max_missed` consecutive frames expires. Every track carries an `EmaSmoother` of its emotion
probabilities.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment  # at import: loading it takes ~0.5 s, never on a frame

BoxT = tuple[float, float, float, float]
_NO_MATCH = 1e6


def as_box(values: Sequence[float] | np.ndarray) -> BoxT:
    """Four numbers as a float (x1, y1, x2, y2) tuple."""
    x1, y1, x2, y2 = (float(v) for v in values)
    return (x1, y1, x2, y2)


def iou_matrix(a: Sequence[BoxT] | np.ndarray, b: Sequence[BoxT] | np.ndarray) -> np.ndarray:
    """IoU of every box of `a` (rows) with every box of `b` (columns); boxes are (x1, y1, x2, y2)."""
    aa = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    bb = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(aa[:, None, 0], bb[None, :, 0])
    y1 = np.maximum(aa[:, None, 1], bb[None, :, 1])
    x2 = np.minimum(aa[:, None, 2], bb[None, :, 2])
    y2 = np.minimum(aa[:, None, 3], bb[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = np.clip(aa[:, 2] - aa[:, 0], 0, None) * np.clip(aa[:, 3] - aa[:, 1], 0, None)
    area_b = np.clip(bb[:, 2] - bb[:, 0], 0, None) * np.clip(bb[:, 3] - bb[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


class EmaSmoother:
    """Exponential moving average of a probability vector.

    `factor` is the weight of the past: 0 = no smoothing (the output is the latest input), values
    near 1 = heavy smoothing. The first update returns its input unchanged.
    """

    def __init__(self, factor: float) -> None:
        if not 0.0 <= factor <= 1.0:
            raise ValueError(f"smoothing factor must be in [0, 1], got {factor}")
        self.factor = factor
        self.state: np.ndarray | None = None

    def update(self, probs: Sequence[float] | np.ndarray) -> np.ndarray:
        p = np.asarray(probs, dtype=np.float64)
        if self.state is None or self.state.shape != p.shape or self.factor == 0.0:
            self.state = p.copy()
        else:
            self.state = self.factor * self.state + (1.0 - self.factor) * p
        return self.state


@dataclass
class Track:
    """One tracked face: its id, last box, consecutive misses and emotion smoother."""

    id: int
    box: BoxT
    smoother: EmaSmoother
    hits: int = 1
    missed: int = 0
    age: int = 1
    velocity: tuple[float, float] = (0.0, 0.0)  # centre motion per processed frame, px

    def predicted(self) -> BoxT:
        """The box moved by its velocity over the frames since it was last seen."""
        steps = self.missed + 1
        dx, dy = self.velocity[0] * steps, self.velocity[1] * steps
        x1, y1, x2, y2 = self.box
        return (x1 + dx, y1 + dy, x2 + dx, y2 + dy)

    def moved_to(self, box: BoxT) -> None:
        """Take the matched box; update the velocity (smoothed) from the centre motion."""
        steps = self.missed + 1
        (cx0, cy0), (cx1, cy1) = _centre(self.box), _centre(box)
        v = ((cx1 - cx0) / steps, (cy1 - cy0) / steps)
        self.velocity = (0.5 * self.velocity[0] + 0.5 * v[0], 0.5 * self.velocity[1] + 0.5 * v[1])
        self.box, self.missed = box, 0
        self.hits += 1


def _centre(box: BoxT) -> tuple[float, float]:
    return ((box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0)


def _side(box: BoxT) -> float:
    return float(np.sqrt(max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)))


@dataclass
class TrackerConfig:
    iou_threshold: float = 0.3
    max_missed: int = 10
    smoothing: float = 0.0
    gate: float = 1.0  # most centre motion, in face sizes per frame elapsed, for a match below the IoU threshold
    min_size_ratio: float = 0.6


@dataclass
class IouTracker:
    """Assigns stable ids to boxes across frames. `update(boxes)` returns one Track per box, in order."""

    config: TrackerConfig = field(default_factory=TrackerConfig)
    tracks: list[Track] = field(default_factory=list)
    next_id: int = 1

    def update(self, boxes: Sequence[BoxT]) -> list[Track]:
        """Match this frame's boxes to the tracks; age and expire the unmatched tracks."""
        assigned: list[Track | None] = [None] * len(boxes)
        matched_tracks: set[int] = set()
        if self.tracks and boxes:
            cost = self._costs([as_box(b) for b in boxes])
            rows, cols = linear_sum_assignment(cost)
            for r, c in zip(rows, cols, strict=True):
                if np.isfinite(cost[r, c]) and cost[r, c] < _NO_MATCH:
                    track = self.tracks[r]
                    track.moved_to(as_box(boxes[c]))
                    assigned[c] = track
                    matched_tracks.add(id(track))
        for track in self.tracks:
            track.age += 1
            if id(track) not in matched_tracks:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.config.max_missed]
        for i, box in enumerate(boxes):
            if assigned[i] is None:
                track = Track(self.next_id, as_box(box), EmaSmoother(self.config.smoothing))
                self.next_id += 1
                self.tracks.append(track)
                assigned[i] = track
        return [t for t in assigned if t is not None]

    def _costs(self, boxes: list[BoxT]) -> np.ndarray:
        """Track x box matching costs: 1 - IoU above the threshold, 1 + distance/size within the
        motion gate, `_NO_MATCH` otherwise."""
        cfg = self.config
        predicted = [t.predicted() for t in self.tracks]
        ious = iou_matrix(predicted, boxes)
        cost = np.where(ious >= cfg.iou_threshold, 1.0 - ious, _NO_MATCH)
        for r, (track, pred) in enumerate(zip(self.tracks, predicted, strict=True)):
            size = max(_side(track.box), 1e-6)
            for c, box in enumerate(boxes):
                if cost[r, c] < _NO_MATCH:
                    continue
                ratio = min(_side(box), size) / max(_side(box), size, 1e-6)
                (px, py), (bx, by) = _centre(pred), _centre(box)
                jump = float(np.hypot(bx - px, by - py)) / size
                if ratio >= cfg.min_size_ratio and jump <= cfg.gate * (track.missed + 1):
                    cost[r, c] = 1.0 + jump
        return cost

    def set_smoothing(self, factor: float) -> None:
        """Change the EMA factor for new and existing tracks (their state is kept)."""
        self.config.smoothing = factor
        for track in self.tracks:
            track.smoother.factor = factor

    def reset(self) -> None:
        self.tracks.clear()


def label_flips(labels: Sequence[str | None]) -> int:
    """How many times consecutive (non-None) labels differ."""
    seen = [label for label in labels if label is not None]
    return sum(1 for a, b in itertools.pairwise(seen) if a != b)
