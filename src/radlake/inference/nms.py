"""Class-wise non-maximum suppression in numpy, exact and vectorised.

Greedy NMS keeps a box unless a kept box of its class with a higher score overlaps
it by more than the IoU threshold. It is computed in rounds over the IoU matrix:
each round keeps at once every box that no remaining higher-scored box of its class
overlaps (greedy keeps those whatever happens later) and drops what they overlap.
Each round is whole-array work and keeps at least one box, so the Python loop runs
once per round (a handful for real detections, at most `max_detections`), never
once per box, and the result equals the textbook one-box-at-a-time loop.
"""

from __future__ import annotations

import numpy as np

# Like torchvision's pre_nms_top_n and Ultralytics' max_nms: the IoU matrix of the
# best candidates stays small (3000^2 floats = 36 MB).
MAX_CANDIDATES = 3000
MAX_DETECTIONS = 300


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of a [N, 4] with every box of b [M, 4] (x_min, y_min, x_max, y_max)."""
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(width, 0, None) * np.clip(height, 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


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
    group of touching boxes of a class.
    """
    if len(scores) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")[:max_candidates]
    candidates = boxes[order].astype(np.float64)
    classes = class_ids[order]
    # dominated[j, i]: j outranks i, same class, overlapping above the threshold.
    dominated = box_iou(candidates, candidates) > iou_threshold
    dominated &= classes[:, None] == classes[None, :]
    dominated = np.triu(dominated, k=1)
    remaining = np.arange(len(order))
    kept: list[np.ndarray] = []
    kept_count = 0
    while remaining.size:
        among = dominated[np.ix_(remaining, remaining)]
        free = ~among.any(axis=0)
        winners = remaining[free]
        kept.append(winners)
        kept_count += winners.size
        victims = among[free].any(axis=0)
        remaining = remaining[~free & ~victims]
        # Enough kept boxes outrank every remaining one: later rounds cannot enter
        # the top max_detections (remaining is in score order).
        if remaining.size and kept_count >= max_detections:
            all_kept = np.concatenate(kept)
            if np.count_nonzero(all_kept < remaining[0]) >= max_detections:
                break
    chosen = np.sort(np.concatenate(kept))[:max_detections]
    indices: np.ndarray = order[chosen]
    return indices
