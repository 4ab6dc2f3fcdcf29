"""The IoU tracker (Hungarian matching, expiry) and EMA smoothing, on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from service.pipeline.tracking import EmaSmoother, IouTracker, TrackerConfig, iou_matrix, label_flips


def test_iou_matrix() -> None:
    m = iou_matrix([(0, 0, 10, 10), (100, 100, 110, 110)], [(0, 0, 10, 10), (5, 0, 15, 10)])
    assert m[0, 0] == pytest.approx(1.0)
    assert m[0, 1] == pytest.approx(50 / 150)
    assert m[1].tolist() == [0.0, 0.0]
    assert iou_matrix([], [(0, 0, 1, 1)]).shape == (0, 1)


def test_moving_boxes_keep_their_ids() -> None:
    """Two faces moving in opposite directions, crossing in x but apart in y; detections shuffled each frame."""
    tracker = IouTracker(TrackerConfig(iou_threshold=0.3, max_missed=3))
    rng = np.random.default_rng(0)
    seen: dict[str, set[int]] = {"a": set(), "b": set()}
    for t in range(60):
        a = (10 + 3 * t, 10, 70 + 3 * t, 70)
        b = (250 - 3 * t, 120, 310 - 3 * t, 180)
        order = ["a", "b"] if rng.random() < 0.5 else ["b", "a"]
        boxes = {"a": a, "b": b}
        tracks = tracker.update([boxes[k] for k in order])
        for name, track in zip(order, tracks, strict=True):
            seen[name].add(track.id)
    assert len(seen["a"]) == 1 and len(seen["b"]) == 1 and seen["a"] != seen["b"]


def test_a_missed_frame_keeps_the_id_and_a_gone_track_expires() -> None:
    tracker = IouTracker(TrackerConfig(max_missed=3))
    box = (0.0, 0.0, 50.0, 50.0)
    assert tracker.update([box])[0].id == 1
    for _ in range(2):  # two misses: still alive
        assert tracker.update([]) == []
    assert tracker.update([box])[0].id == 1
    for _ in range(3):  # 3 misses = max_missed: still alive
        tracker.update([])
    assert [t.id for t in tracker.tracks] == [1]
    tracker.update([])  # the 4th miss expires it
    assert tracker.tracks == []
    assert tracker.update([box])[0].id == 2  # a new face gets a new id


def test_far_jump_is_a_new_track() -> None:
    tracker = IouTracker(TrackerConfig(iou_threshold=0.3))
    assert tracker.update([(0, 0, 10, 10)])[0].id == 1
    assert tracker.update([(200, 200, 210, 210)])[0].id == 2


def test_hungarian_prefers_the_best_total_overlap() -> None:
    """A greedy matcher would give track 1 the middle box; the optimal assignment keeps both ids."""
    tracker = IouTracker(TrackerConfig(iou_threshold=0.1))
    t1, t2 = tracker.update([(0, 0, 10, 10), (8, 0, 18, 10)])
    tracks = tracker.update([(3, 0, 13, 10), (11, 0, 21, 10)])
    assert [t.id for t in tracks] == [t1.id, t2.id]


def test_ema_smoother() -> None:
    s = EmaSmoother(0.5)
    assert s.update([1.0, 0.0]).tolist() == [1.0, 0.0]
    assert s.update([0.0, 1.0]).tolist() == [0.5, 0.5]
    assert EmaSmoother(0.0).update([0.2, 0.8]).tolist() == [0.2, 0.8]
    with pytest.raises(ValueError):
        EmaSmoother(1.5)


def test_smoothing_lowers_label_flips_on_noisy_scores() -> None:
    """A true 'happy' face whose per-frame scores are noisy: the raw argmax flips often, the EMA rarely."""
    rng = np.random.default_rng(1)
    labels = ["happy", "neutral", "sad"]
    tracker = IouTracker(TrackerConfig(smoothing=0.8))
    raw, smooth = [], []
    for t in range(300):
        logits = np.array([1.0, 0.8, 0.2]) + rng.normal(0, 0.6, 3)
        p = np.exp(logits) / np.exp(logits).sum()
        (track,) = tracker.update([(100 + t * 0.5, 50, 200 + t * 0.5, 150)])
        raw.append(labels[int(np.argmax(p))])
        smooth.append(labels[int(np.argmax(track.smoother.update(p)))])
    assert label_flips(raw) > 40
    assert label_flips(smooth) < label_flips(raw) / 4
    assert smooth.count("happy") > raw.count("happy")


def test_motion_gating_keeps_ids_through_dropped_frames() -> None:
    """Frames dropped under backpressure make faces jump between processed frames (IoU < 0.3)."""
    t = IouTracker(TrackerConfig(max_missed=3))
    walker = [(x, 100.0, x + 50.0, 150.0) for x in (0.0, 40.0, 80.0)]  # 40 px steps: IoU 0.11
    ids = [t.update([box])[0].id for box in walker]
    assert ids == [1, 1, 1]
    t.update([])  # one frame without the face
    assert t.update([(160.0, 100.0, 210.0, 150.0)])[0].id == 1  # where its velocity says, two steps on


def test_motion_gating_refuses_far_or_resized_faces() -> None:
    t = IouTracker(TrackerConfig())
    t.update([(0.0, 0.0, 50.0, 50.0)])
    assert t.update([(200.0, 0.0, 250.0, 50.0)])[0].id == 2  # four face sizes away: someone else
    t = IouTracker(TrackerConfig())
    t.update([(0.0, 0.0, 100.0, 100.0)])
    assert t.update([(30.0, 30.0, 70.0, 70.0)])[0].id == 2  # same place, 0.4 of the size: someone else


def test_the_assignment_solver_is_loaded_with_the_pipeline_not_on_a_frame() -> None:
    """`scipy.optimize` takes about half a second to import. Imported on a stream's first frame, that was half a
    second during which the event loop (the tracker runs there) served nobody; it now loads with the pipeline."""
    import subprocess
    import sys

    code = "import sys, service.pipeline.analyze; print('scipy.optimize' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "True", out.stderr
