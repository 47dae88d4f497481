"""Class-wise non-maximum suppression in numpy, exact and vectorised.

Greedy NMS keeps a box unless a kept box of its class with a higher score overlaps
it by more than the IoU threshold. Here the candidates, best first, are settled in
blocks of BLOCK boxes:

1. inside a block, greedy is solved on the block's "j outranks i, same class,
   overlapping" matrix, in rounds: each round keeps every box no remaining box
   dominates (greedy keeps those whatever happens later) and drops what they
   overlap (dominator counts are updated, not recomputed);
2. the block's kept boxes then remove, in one array operation, every later
   candidate of their class they overlap.

A block's boxes can only be suppressed by better boxes: earlier blocks' kept boxes
have already removed what they overlap, so step 1 sees everything that matters. The
Python loops run once per block and once per round, never once per box or pair;
work is O(block^2 + kept x candidates) per block, so a cluster of thousands of
near-identical boxes (a YOLO head at a low score threshold) costs one block. The
result equals the textbook one-box-at-a-time loop; the tests compare them.
"""

from __future__ import annotations

import numpy as np

# Like torchvision's pre_nms_top_n and Ultralytics' max_nms.
MAX_CANDIDATES = 3000
MAX_DETECTIONS = 300
BLOCK = 128


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


def _overlapping(
    a: np.ndarray, a_classes: np.ndarray, b: np.ndarray, b_classes: np.ndarray, threshold: float
) -> np.ndarray:
    """[N, M]: a box of a overlaps a box of b of the same class above threshold."""
    overlapping: np.ndarray = (box_iou(a, b) > threshold) & (
        a_classes[:, None] == b_classes[None, :]
    )
    return overlapping


def greedy_in_rounds(dominated: np.ndarray) -> np.ndarray:
    """Positions greedy keeps, given dominated[j, i] = "j outranks and overlaps i"
    (strictly upper triangular: positions are in score order)."""
    alive = np.ones(len(dominated), dtype=bool)
    dominators = dominated.sum(axis=0)
    kept = np.zeros(len(dominated), dtype=bool)
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
    remaining = np.arange(len(order))
    kept: list[np.ndarray] = []
    kept_count = 0
    while remaining.size and kept_count < max_detections:
        block, rest = remaining[:BLOCK], remaining[BLOCK:]
        inside = _overlapping(
            candidates[block], classes[block], candidates[block], classes[block], iou_threshold
        )
        winners = block[greedy_in_rounds(np.triu(inside, k=1))]
        kept.append(winners)
        kept_count += winners.size
        if rest.size:
            over = _overlapping(
                candidates[winners],
                classes[winners],
                candidates[rest],
                classes[rest],
                iou_threshold,
            )
            rest = rest[~over.any(axis=0)]
        remaining = rest
    # Blocks come in score order, so the first max_detections kept are the best.
    chosen = np.concatenate(kept)[:max_detections]
    indices: np.ndarray = order[chosen]
    return indices
