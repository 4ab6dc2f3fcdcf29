"""Shared numpy helpers of the detectors: IoU, greedy and weighted NMS, resizing and letterboxing."""

from __future__ import annotations

import cv2
import numpy as np


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (4,) box against (N, 4) boxes, all (x1, y1, x2, y2)."""
    xx1 = np.maximum(box[0], boxes[:, 0])
    yy1 = np.maximum(box[1], boxes[:, 1])
    xx2 = np.minimum(box[2], boxes[:, 2])
    yy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.asarray(inter / np.maximum(area + areas - inter, 1e-9), np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS; returns the kept indices, best score first (one IoU row per kept box)."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[iou_one_to_many(boxes[i], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, np.int64)


def weighted_nms(
    boxes: np.ndarray, scores: np.ndarray, points: np.ndarray, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe-style weighted NMS: each cluster of overlapping boxes is blended, weighted by score.

    `points` (N, K, 2) are blended the same way. Returns (boxes, scores, points) of the clusters; the
    score of a cluster is that of its best member.
    """
    order = np.argsort(-scores, kind="stable")
    out_b, out_s, out_p = [], [], []
    while order.size:
        overlap = iou_one_to_many(boxes[order[0]], boxes[order]) > iou_threshold
        members = order[overlap]
        w = scores[members][:, None]
        out_b.append((boxes[members] * w).sum(0) / w.sum())
        out_p.append((points[members] * w[:, :, None]).sum(0) / w.sum())
        out_s.append(scores[order[0]])
        order = order[~overlap]
    if not out_b:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, *points.shape[1:]), np.float32)
    return np.stack(out_b), np.asarray(out_s, np.float32), np.stack(out_p)


def resize_max_side(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Shrink so that the longest side is at most `max_side`; returns (image, scale applied)."""
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale >= 1.0:
        return image, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def letterbox(
    image: np.ndarray, size: tuple[int, int], *, center: bool = False
) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Fit `image` into `size` (w, h) keeping its aspect, padding with zeros.

    Returns (canvas, scale, (pad_x, pad_y)); an input point p maps to p * scale + pad.
    """
    h, w = image.shape[:2]
    tw, th = size
    scale = min(tw / w, th / h)
    nw, nh = max(1, min(tw, round(w * scale))), max(1, min(th, round(h * scale)))
    px, py = ((tw - nw) // 2, (th - nh) // 2) if center else (0, 0)
    canvas = np.zeros((th, tw, 3), np.uint8)
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    canvas[py : py + nh, px : px + nw] = cv2.resize(image, (nw, nh), interpolation=interp)
    return canvas, scale, (px, py)
