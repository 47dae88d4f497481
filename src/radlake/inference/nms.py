"""Class-wise non-maximum suppression in numpy, exact and vectorised.

Greedy NMS keeps a box unless a kept box of its class with a higher score overlaps
it by more than the IoU threshold. Here it is computed in rounds, per class, over the
boolean matrix "j outranks i and overlaps it": each round keeps at once every
remaining box that no remaining box dominates (greedy keeps those whatever happens
later) and removes what they overlap. Each box's count of remaining dominators is
kept up to date as boxes are removed, so a round costs one pass over the rows of the
boxes it settles: the whole suppression is O(K^2) array work, and the Python loop
runs once per round (a few for real detections; never once per candidate pair).
The result equals the textbook one-box-at-a-time loop; the tests compare them.
"""

from __future__ import annotations

import numpy as np

# Like torchvision's pre_nms_top_n and Ultralytics' max_nms: the matrix of the best
# candidates stays small (3000^2 booleans = 9 MB).
MAX_CANDIDATES = 3000
MAX_DETECTIONS = 300
_ROWS = 256  # IoU rows computed at a time: bounded temporary memory


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of a [N, 4] with every box of b [M, 4] (x_min, y_min, x_max, y_max)."""
    area_a = np.maximum(a[:, 2] - a[:, 0], 0) * np.maximum(a[:, 3] - a[:, 1], 0)
    area_b = np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.maximum(width, 0) * np.maximum(height, 0)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _dominance(boxes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """[K, K] booleans: row j outranks (comes before) column i and overlaps it."""
    count = len(boxes)
    dominated = np.zeros((count, count), dtype=bool)
    for start in range(0, count, _ROWS):
        # Only columns after the rows' own positions can be outranked by them.
        rows = boxes[start : start + _ROWS]
        dominated[start : start + _ROWS, start:] = box_iou(rows, boxes[start:]) > iou_threshold
    return np.triu(dominated, k=1)


def greedy_in_rounds(boxes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Positions kept by greedy NMS of boxes already sorted best first (one class)."""
    dominated = _dominance(boxes, iou_threshold)
    alive = np.ones(len(boxes), dtype=bool)
    dominators = dominated.sum(axis=0)
    kept = np.zeros(len(boxes), dtype=bool)
    while alive.any():
        free = alive & (dominators == 0)  # the best remaining box is always free
        kept |= free
        alive &= ~free
        victims = alive & dominated[free].any(axis=0)
        alive &= ~victims
        # Removed boxes no longer dominate anything still in play.
        dominators -= dominated[victims].sum(axis=0)
    return np.flatnonzero(kept)


def batched_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    iou_threshold: float,
    *,
    max_candidates: int = MAX_CANDIDATES,
    max_detections: int = MAX_DETECTIONS,
) -> np.ndarray:
    """Indices of the boxes kept, best score first (ties: lower index first).

    A box is suppressed by a kept box of the same class whose IoU with it is above
    iou_threshold: 1.0 keeps every box (IoU is never above 1), 0.0 keeps one box per
    group of touching boxes of a class. Only the best max_candidates boxes enter.
    """
    if len(scores) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")[:max_candidates]
    candidates = boxes[order].astype(np.float64)
    classes = class_ids[order]
    kept: list[np.ndarray] = []
    for class_id in np.unique(classes):
        members = np.flatnonzero(classes == class_id)  # still in score order
        kept.append(members[greedy_in_rounds(candidates[members], iou_threshold)])
    chosen = np.sort(np.concatenate(kept))[:max_detections]
    indices: np.ndarray = order[chosen]
    return indices
